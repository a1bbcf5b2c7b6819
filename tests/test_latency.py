"""Latency budgets: onnxruntime's measured latency orders nets by their work, kept channel counts
land on the multiple asked for (pruning still equals masking), and `graphmorph prune --latency`
reaches its point by the measure's paired ratio, saves the latency, and reports it: a stand-in
latency (a fixed overhead plus a cost per MAC, counted independently) makes the run deterministic."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import graphmorph
from graphmorph.cli import main
from graphmorph.graph.latency import latency_ratio
from graphmorph.search import budget_fit
from graphmorph.search.artifacts import load_checkpoint
from transforms.channel_pruning import prune_filters

EXAMPLE = torch.zeros(1, 1, 8, 8)


def _convs(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_measured_latency_orders_nets_by_their_work():
    x = torch.randn(1, 3, 32, 32)
    narrow, wide = _convs(8), _convs(64)          # 56x fewer MACs
    assert latency_ratio(narrow, wide, x) < 0.5
    assert 0.8 < latency_ratio(wide, _convs(64), x) < 1.25       # the same net, measured side by side


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratio=st.floats(0.1, 0.9), multiple=st.sampled_from((2, 4, 8)), seed=st.integers(0, 3))
def test_kept_channels_are_multiples_of_the_multiple_asked_for(ratio, multiple, seed):
    torch.manual_seed(seed)
    gm = graphmorph.capture(graphmorph.models.build("Basic3ResNet-2-2-2", num_classes=10, in_channels=1), EXAMPLE)
    before = {name: m.out_channels for name, m in gm.named_modules() if isinstance(m, nn.Conv2d)}
    pruned = prune_filters(gm, ratio, multiple=multiple, example_input=EXAMPLE)   # verified: equals masking
    after = {name: m.out_channels for name, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    for name, width in after.items():
        assert width % multiple == 0 or width == before[name], (name, before[name], width)
    assert graphmorph.history(pruned)[-1]["multiple"] == multiple


def _macs(model) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(EXAMPLE)
    return counter.get_total_flops() // 2


def _stand_in_seconds(gm, example=EXAMPLE) -> float:
    """A latency that is a fixed overhead and a cost per MAC: what fit and verdict are checked against."""
    return 2e-5 + 1e-11 * _macs(gm)


@pytest.fixture
def stand_in_latency(monkeypatch):
    ratios = []

    def ratio(gm, base, example):
        ratios.append(1)
        return _stand_in_seconds(gm) / _stand_in_seconds(base)
    monkeypatch.setitem(budget_fit.MEASURES, "latency", budget_fit.Measure(
        "latency", "stand-in latency", _stand_in_seconds, ratio, channel_multiple=4))
    return ratios


def test_prune_to_latency_saves_the_measured_points_and_reports_them(stand_in_latency, tmp_path, capsys):
    where = tmp_path / "run"
    code = main(["prune", "--seed-net", "Basic3ResNet-2-2-2", "--fraction", "0.3", "--train-epochs", "1",
                 "--finetune-epochs", "0", "--schedule", "oneshot", "--latency", "0.6", "--run-dir", str(where)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((where / "result.json").read_text())
    unpruned, _ = load_checkpoint(where / "points" / "unpruned" / "weights.pt")
    assert result["measure"] == "latency" and result["latency_ms"] == round(1000 * _stand_in_seconds(unpruned), 4)
    point = result["points"][0]
    gm, _ = load_checkpoint(where / point["path"] / "weights.pt")
    fraction = _stand_in_seconds(gm) / _stand_in_seconds(unpruned)
    assert stand_in_latency and point["fraction"] == pytest.approx(fraction, rel=1e-9)   # the paired ratio
    assert point["latency_ms"] == round(1000 * fraction * _stand_in_seconds(unpruned), 4)
    assert point["within"] == (abs(fraction - 0.6) <= 0.02 * 0.6)
    assert all(m.out_channels % 4 == 0 for m in gm.modules() if isinstance(m, nn.Conv2d))
    capsys.readouterr()
    assert main(["report", str(where), "-o", str(tmp_path / "r.png")]) == 0
    table = capsys.readouterr().out
    assert "latency ms" in table and f"{point['latency_ms']:.4f}" in table
