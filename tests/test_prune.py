"""Pruning to a budget: `fit_channels` lands within tolerance of random targets (MACs counted by
FlopCounterMode on the returned net), `graphmorph.Prune` takes the steps, blocks and points its
settings say, and `graphmorph prune` saves every point (weights, replayable history, ONNX in
parity), resumes an interrupted run to the same points, and refuses bad settings with exit 2."""
from __future__ import annotations

import json

import onnxruntime
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

import graphmorph
from graphmorph.cli import main
from graphmorph.graph.verify import parameter_count
from graphmorph.run.history_file import read_history
from graphmorph.run.train import Trainer
from graphmorph.search.artifacts import load_checkpoint
from graphmorph.search.budget_fit import fit_channels, removable_blocks
from graphmorph.search.pruner import Prune

EXAMPLE = torch.zeros(1, 1, 8, 8)
TINY = ["--seed-net", "Basic3ResNet-2-2-2", "--fraction", "0.3", "--train-epochs", "2", "--finetune-epochs", "1",
        "--macs", "0.4", "--threads", "1"]


def _net(arch="Basic3ResNet-2-2-2", seed=0):
    torch.manual_seed(seed)
    return graphmorph.capture(graphmorph.models.build(arch, num_classes=10, in_channels=1), EXAMPLE)


def _macs(model) -> int:
    """The oracle: FlopCounterMode's MACs of one forward of the returned net."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(EXAMPLE)
    return counter.get_total_flops() // 2


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.floats(0.25, 0.9), measure=st.sampled_from(("macs", "params")), seed=st.integers(0, 3))
def test_fit_channels_lands_within_two_percent_of_the_target(target, measure, seed):
    gm = _net(seed=seed)
    base = _macs(gm) if measure == "macs" else parameter_count(gm)
    fit = fit_channels(gm, target * base, measure, EXAMPLE)
    measured = _macs(fit.model) if measure == "macs" else sum(p.numel() for p in fit.model.parameters())
    assert measured == fit.cost
    assert abs(measured / base - target) <= 0.02 * target
    assert graphmorph.history(fit.model)[-1]["rewrite"] == "prune_filters"      # one rewrite, verified
    assert _macs(gm) == (_macs(_net(seed=seed)))                                  # the input is untouched


def test_iterative_prune_takes_geometric_steps_and_shares_the_finetuning_epochs():
    pruner = Prune(_net(), EXAMPLE, targets=(0.3, 0.6), steps=2, finetune_epochs=3)
    base = _macs(pruner.base)
    steps = []
    while not pruner.done:
        steps.append(pruner.step())
    assert [round(s.budget, 6) for s in steps] == [round(b, 6) for b in (0.6 ** 0.5, 0.6, 0.6 * 0.5 ** 0.5, 0.3)]
    assert [s.finetune_epochs for s in steps] == [1, 2, 1, 2]
    assert [s.point is not None for s in steps] == [False, True, False, True]
    for step in steps:
        assert abs(_macs(step.model) / base - step.budget) <= 0.02 * step.budget
    assert [p.target for p in pruner.points] == [0.6, 0.3] and all(p.within for p in pruner.points)
    assert steps[2].previous is steps[1].model                     # each step starts from the last
    resumed = Prune(_net(), EXAMPLE, targets=(0.3, 0.6), steps=2, finetune_epochs=3)
    resumed.load_state_dict(pruner.state_dict())
    assert resumed.done and ({k: v.shape for k, v in resumed.model.state_dict().items()}
                             == {k: v.shape for k, v in pruner.model.state_dict().items()})


def test_oneshot_prunes_each_target_from_the_unpruned_net():
    pruner = Prune(_net(), EXAMPLE, targets=(0.7, 0.4), schedule="oneshot", steps=5)
    first, second = pruner.step(), pruner.step()
    assert first.previous is pruner.base and len(graphmorph.history(second.model)) == 1
    assert [first.point.target, second.point.target] == [0.7, 0.4]


def test_blocks_method_removes_the_block_validation_prefers_then_meets_the_budget():
    gm = _net("Basic3ResNet-3-1-1")
    assert removable_blocks(gm) == ["layer1.0", "layer1.1", "layer1.2"]   # stage 0 keeps its width

    def evaluate(model):   # an oracle that prefers nets without layer1.2
        return 90.0 if not any(n.startswith("layer1.2") for n, _ in model.named_parameters()) else 50.0
    pruner = Prune(gm, EXAMPLE, targets=(0.75,), method="blocks", evaluate=evaluate)
    step = pruner.step()
    removed = [e.block for e in step.events if e.kind == "removed_block"]
    assert removed[0] == "layer1.2"
    assert abs(step.fraction - 0.75) <= 0.02 * 0.75 and step.point.within
    auto = Prune(gm, EXAMPLE, targets=(0.75,), method="auto", evaluate=lambda model: 50.0)  # no block pays
    assert not [e for e in auto.step().events if e.kind == "removed_block"]


def test_prune_settings_are_checked_once_with_the_fix():
    with pytest.raises(graphmorph.ConfigError, match="targets must be fractions"):
        Prune(_net(), EXAMPLE, targets=(1.2,))
    with pytest.raises(graphmorph.ConfigError, match="pass evaluate="):
        Prune(_net(), EXAMPLE, method="blocks")
    with pytest.raises(graphmorph.ConfigError, match="criterion 'taylor' reads data"):
        Prune(_net(), EXAMPLE, criterion="taylor")


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    where = tmp_path_factory.mktemp("prune") / "run"
    assert main(["prune", *TINY, "--run-dir", str(where)]) == 0
    return where


def test_every_point_is_saved_replayable_and_exported_in_parity(pruned_run):
    result = json.loads((pruned_run / "result.json").read_text())
    assert [p["target"] for p in result["points"]] == [0.4] and result["all_within"]
    for point in result["points"]:
        folder = pruned_run / point["path"]
        gm, source = load_checkpoint(folder / "weights.pt")
        assert abs(_macs(gm) / result["macs"] - point["target"]) <= 0.02 * point["target"]
        assert _macs(gm) == point["macs"] and parameter_count(gm) == point["params"]
        replayed_source, rewrites = read_history(folder / "rewrites.json")
        assert replayed_source == source and rewrites[-1]["rewrite"] == "prune_filters"
        x = torch.randn(5, 1, 8, 8)
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(onnx_out), gm.eval()(x).detach(), atol=1e-4, rtol=1e-4)
    assert (pruned_run / "tradeoff.png").stat().st_size > 0 and "front" in (pruned_run / "points.txt").read_text()


def test_an_interrupted_prune_resumes_to_the_same_points(pruned_run, tmp_path, capsys, monkeypatch):
    import graphmorph.run.report as report

    real, calls = Trainer.train_epoch, []
    monkeypatch.setattr(report, "export_onnx", lambda *args, **kwargs: _NoExport())   # the fixture checks ONNX

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:      # after training 2 epochs and two pruning steps: the fine-tuning epoch
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    where = tmp_path / "again"
    code, _, err = _run(capsys, "prune", *TINY, "--run-dir", str(where))
    assert code == 130 and f"graphmorph prune --resume {where}" in err
    monkeypatch.setattr(Trainer, "train_epoch", real)
    code, out, err = _run(capsys, "prune", "--resume", str(where))
    assert code == 0, err
    first, resumed = (json.loads((run / "result.json").read_text())["points"] for run in (pruned_run, where))
    assert [(p["macs"], p["test_acc"], p["fraction"]) for p in resumed] == \
        [(p["macs"], p["test_acc"], p["fraction"]) for p in first]


def test_report_shows_each_point_and_the_pareto_front(pruned_run, tmp_path, capsys):
    code, out, _ = _run(capsys, "report", str(pruned_run), "-o", str(tmp_path / "r.png"))
    assert code == 0
    rows = [line for line in out.splitlines() if str(pruned_run) in line]
    assert [row.split()[1] for row in rows] == ["unpruned", "macs-0.40"]


@pytest.mark.parametrize("argv, message", [
    (["--macs", "1.5"], "expected fractions in (0, 1)"),
    (["--macs", "0.5", "--params", "0.5"], "not allowed with argument"),
    (["--criterion", "l7"], "invalid choice: 'l7'"),
    (["--from", "nowhere"], "nowhere is not a graphmorph run directory"),
    (["--model", "pkg.mod:make"], "--model needs --weights FILE"),
    (["--seed-net", "Basic3ResNet-0-1"], "Basic3ResNet-0-1"),
])
def test_bad_prune_settings_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
    try:
        code = main(["prune", *argv, "--run-dir", str(tmp_path / "r")])
    except SystemExit as stop:     # argparse refuses the option itself
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


class _NoExport:
    max_abs_diff = None
