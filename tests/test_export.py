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
    with pytest.raises(graphmorph.ExportError, match=r"parity check failed: .* differ by up to .* atol \+ rtol"):
        graphmorph.export_onnx(Noisy(), tmp_path / "noisy.onnx", torch.randn(2, 8))


class LargeOutputs(nn.Module):
    """Outputs near 1e6, like a deep net with random weights: float32 round-off alone is above 1e-4."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.GELU()) for _ in range(6)])

    def forward(self, x):
        return self.net(x) * 1e7


def test_parity_is_relative_to_the_output_scale(tmp_path):
    x = torch.randn(2, 64)
    report = graphmorph.export_onnx(LargeOutputs(), tmp_path / "large.onnx", x)   # failed before: atol alone
    assert report.max_abs_diff > report.atol                  # float32 round-off at this scale
    assert report.max_abs_diff <= report.atol + report.rtol * report.output_scale
    assert report.max_abs_diff / report.output_scale < 1e-6
    with pytest.raises(graphmorph.ExportError, match=r"over the tolerance .* \(relative difference"):
        graphmorph.export_onnx(LargeOutputs(), tmp_path / "strict.onnx", x, rtol=0.0)
    with pytest.raises(graphmorph.ExportError, match="atol must be > 0"):
        graphmorph.export_onnx(LargeOutputs(), tmp_path / "zero.onnx", x, atol=0.0)


def test_a_failed_export_leaves_the_existing_file_as_it_was(tmp_path):
    good = graphmorph.export_onnx(build("Plain3Net-1-1-1", widths=(2, 4, 4)), tmp_path / "y.onnx",
                                  torch.randn(2, 3, 8, 8)).path
    written = good.read_bytes()
    with pytest.raises(graphmorph.ExportError, match="the file was not written"):
        graphmorph.export_onnx(Noisy(), good, torch.randn(2, 8))
    assert good.read_bytes() == written
    assert [p.name for p in tmp_path.iterdir()] == ["y.onnx"]   # no partial file left behind


def test_the_command_line_refuses_a_zero_tolerance(tmp_path, capsys):
    from graphmorph.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["export", "Plain3Net-1-1-1", "-o", str(tmp_path / "n.onnx"), "--atol", "0"])
    assert exit.value.code == 2
    assert "argument --atol: expected a positive number, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()


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
