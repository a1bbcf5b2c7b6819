"""The trainer's pieces: staircase schedule, on-device augmentation, the GPU fast path, compile modes."""
import json

import pytest
import torch

from graphmorph.graph.capture import capture
from graphmorph.models import arch_of, build
from graphmorph.search.autogrow import AutoGrowConfig, run
from graphmorph.run.train import Trainer, _crop_and_flip, _crop_and_flip_draws, staircase_lr


def _trained(trainer: Trainer, steps: int = 6) -> torch.nn.Module:
    """A tiny Basic3ResNet after `steps` seeded SGD steps on seeded random data."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(40) % 10
    gm = trainer.place_model(capture(build("Basic3ResNet-1-1-1", widths=(4, 4, 4)), x[:1]))
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9)
    x, y = trainer.place_data(x, y)
    trainer.train_steps(gm, optimizer, x, y, torch.Generator().manual_seed(2), steps)
    return gm


def test_staircase_drops_tenfold_at_half_and_three_quarters():
    assert [staircase_lr(0.1, e, 200) for e in (0, 99, 100, 149, 150, 199)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_crop_and_flip_takes_the_drawn_window_of_the_padded_batch_per_sample():
    x = torch.arange(3 * 1 * 6 * 6, dtype=torch.float32).reshape(3, 1, 6, 6)
    draws = _crop_and_flip_draws(3, torch.Generator().manual_seed(0), pad=2)
    assert draws.shape == (3, 3) and draws[:, :2].max() <= 4 and set(draws[:, 2].tolist()) <= {0, 1}
    out = _crop_and_flip(x, draws, pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i, (row, col, flip) in enumerate(draws.tolist()):
        window = padded[i, :, row:row + 6, col:col + 6]
        assert torch.equal(out[i], window.flip(-1) if flip else window)
    outs = {tuple(_crop_and_flip(x, _crop_and_flip_draws(3, torch.Generator().manual_seed(s), pad=2), pad=2)
                  .flatten().tolist()) for s in range(8)}
    assert len(outs) > 1  # it does move things


def test_cpu_training_is_bitwise_repeatable_for_a_seed():
    first, second = (_trained(Trainer(torch.device("cpu"), batch_size=8)) for _ in range(2))
    before = _trained(Trainer(torch.device("cpu"), batch_size=8), steps=0)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), before.state_dict().values()))


@pytest.mark.gpu
def test_each_part_of_the_gpu_fast_path_can_be_switched_off():
    cuda = torch.device("cuda")
    fast = Trainer(cuda, batch_size=8)
    plain = Trainer(cuda, batch_size=8, bf16=False, channels_last=False, data_on_device=False)
    x = torch.zeros(4, 3, 8, 8)
    assert fast.place_data(x)[0].is_cuda and not plain.place_data(x)[0].is_cuda
    fast_conv, plain_conv = (next(m for m in _trained(t).modules() if isinstance(m, torch.nn.Conv2d))
                             for t in (fast, plain))
    assert fast_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain_conv.weight.is_contiguous() and not plain_conv.weight.is_contiguous(memory_format=torch.channels_last)
    with fast._autocast():
        assert fast_conv(torch.zeros(1, 3, 8, 8, device=cuda)).dtype == torch.bfloat16
    with plain._autocast():
        assert plain_conv(torch.zeros(1, 3, 8, 8, device=cuda)).dtype == torch.float32


@pytest.mark.gpu
def test_autogrow_on_cuda_with_compile_records_the_cost_per_growth(tmp_path):
    config = AutoGrowConfig(widths=(4, 4, 4), K=1, J=2, tau=0.5, finetune_epochs=1, max_growth_epochs=3,
                            device="cuda", compile="always")
    result = run(config, tmp_path / "run", progress=lambda _: None)
    assert result["device"].startswith("cuda")
    growths = sum(int(depth) for depth in result["found"].split("-")[1:]) - 3
    assert len(result["compile_seconds"]) == growths + 1  # one compile for the seed net, one per growth
    assert result["onnx_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("mode", ["off", "finetune", "always"])
def test_compile_modes_compile_the_graphs_they_promise_with_one_batch_shape(tmp_path, monkeypatch, mode):
    compiled, batch_sizes = [], []

    def recording_compile(module):  # stands in for torch.compile: records, then runs eagerly
        compiled.append(arch_of(module))
        return lambda x: (batch_sizes.append(len(x)), module(x))[1]

    monkeypatch.setattr(torch, "compile", recording_compile)
    config = AutoGrowConfig(widths=(4, 4, 4), fraction=0.3, K=1, tau=0, init="zero", max_growth_epochs=2,
                            finetune_epochs=1, batch_size=64, compile=mode)
    result = run(config, tmp_path / "run", progress=lambda _: None)
    trained = list(dict.fromkeys(row["arch"] for row in json.loads((tmp_path / "run" / "log.json").read_text())))
    expected = {"off": [], "finetune": [result["found"]], "always": trained}[mode]
    assert compiled == expected and len(result["compile_seconds"]) == len(expected)
    assert set(batch_sizes) <= {64}  # the last partial batch is left out when compiling


def test_a_checkpoint_from_before_the_compile_modes_still_loads():
    assert AutoGrowConfig.from_dict({"compile": True}).compile == "always"
    assert AutoGrowConfig.from_dict({"compile": False}).compile == "off"


@pytest.mark.parametrize("scale, diverged", [(1e9, True), (1.0, False)])
def test_an_exploded_finite_loss_counts_as_divergence(scale, diverged):
    """Epochs at a loss of 1.8e19 were checkpointed and decided on before the run reached NaN."""
    import math

    from graphmorph.run.train import EXPLODED, TrainingDiverged

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))
    with torch.no_grad():
        model[1].weight.mul_(scale)
    x = torch.randn(32, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % 10
    trainer = Trainer(torch.device("cpu"), batch_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)   # the loss stays as the weights make it
    if diverged:
        with pytest.raises(TrainingDiverged, match="the training loss exploded to"):
            trainer.train_epoch(model, optimizer, x, y, torch.Generator().manual_seed(1))
    else:
        loss, _ = trainer.train_epoch(model, optimizer, x, y, torch.Generator().manual_seed(1))
        assert math.isfinite(loss) and loss < EXPLODED * math.log(10)
