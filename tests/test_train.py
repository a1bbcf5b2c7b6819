"""The trainer's pieces: staircase schedule, on-device augmentation, the GPU fast path."""
import pytest
import torch

from graphmorph.search.autogrow import AutoGrowConfig, run
from graphmorph.train import _crop_and_flip, staircase_lr


def test_staircase_drops_tenfold_at_half_and_three_quarters():
    assert [staircase_lr(0.1, e, 200) for e in (0, 99, 100, 149, 150, 199)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_crop_and_flip_takes_a_window_of_the_padded_batch_per_sample():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    out = _crop_and_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    outs = {tuple(_crop_and_flip(x, torch.Generator().manual_seed(s), pad=2).flatten().tolist()) for s in range(8)}
    assert len(outs) > 1  # it does move things


@pytest.mark.gpu
def test_autogrow_on_cuda_with_compile_records_the_cost_per_growth(tmp_path):
    config = AutoGrowConfig(widths=(4, 4, 4), K=1, J=2, tau=0.5, finetune_epochs=1, max_growth_epochs=3,
                            device="cuda", compile=True)
    result = run(config, tmp_path / "run", progress=lambda _: None)
    assert result["device"].startswith("cuda")
    growths = sum(int(depth) for depth in result["found"].split("-")[1:]) - 3
    assert len(result["compile_seconds"]) == growths + 1  # one compile for the seed net, one per growth
    assert result["onnx_max_abs_diff"] <= 1e-4
