"""ONNX export: checked in onnxruntime at another batch size; ExportError on failure."""
import pytest
import torch
from torch import nn

import graphmorph
from graphmorph.models import FAMILIES, build


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_seed_family_exports_with_parity(tmp_path, family):
    stages = len(FAMILIES[family].default_widths)
    model = build(f"{family}-" + "-".join(["1"] * stages), widths=(4, 8, 8, 8)[:stages])
    x = torch.randn(2, 3, 16, 16)
    gm = graphmorph.capture(model, x)
    report = graphmorph.export_onnx(gm, tmp_path / "net.onnx", x)
    assert report.path.stat().st_size > 0
    assert report.check_batch != x.shape[0]
    assert report.max_abs_diff <= 1e-4
    assert gm.training  # mode restored


def test_batch_one_example_still_exports_a_dynamic_batch(tmp_path):
    import onnxruntime as ort

    x = torch.randn(1, 3, 8, 8)
    report = graphmorph.export_onnx(build("Plain3Net-1-1-1", widths=(2, 4, 4)), tmp_path / "n.onnx", x)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: torch.randn(5, 3, 8, 8).numpy()})
    assert out.shape == (5, 10)


def test_static_batch_export_checks_the_example_batch(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    report = graphmorph.export_onnx(build("Plain3Net-1-1-1", widths=(2, 4, 4)), tmp_path / "n.onnx", x,
                                    dynamic_batch=False)
    assert report.check_batch == 2 and report.max_abs_diff <= 1e-4


class Noisy(nn.Module):
    def forward(self, x):
        return x + torch.rand_like(x)  # ONNX's RNG differs from torch's


def test_parity_failure_raises_export_error(tmp_path):
    with pytest.raises(graphmorph.ExportError, match=r"parity check failed .* differ by up to"):
        graphmorph.export_onnx(Noisy(), tmp_path / "noisy.onnx", torch.randn(2, 8))


lib = torch.library.Library("graphmorph_test", "DEF")
lib.define("opaque(Tensor x) -> Tensor")
lib.impl("opaque", lambda x: x * 2, "CompositeExplicitAutograd")
torch.library.register_fake("graphmorph_test::opaque")(lambda x: torch.empty_like(x))


class Opaque(nn.Module):
    def forward(self, x):
        return torch.ops.graphmorph_test.opaque(x)


def test_untranslatable_op_raises_export_error_with_the_cause(tmp_path):
    with pytest.raises(graphmorph.ExportError, match=r"ONNX export failed: .*No ONNX function found.*opaque"):
        graphmorph.export_onnx(Opaque(), tmp_path / "opaque.onnx", torch.randn(2, 3))


def test_unwritable_path_raises_export_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(graphmorph.ExportError, match="cannot create the folder"):
        graphmorph.export_onnx(Noisy(), blocker / "sub" / "n.onnx", torch.randn(2, 3))
