"""Branch statistics: instrumentation passes values through, measures mean(F**2), and comes off cleanly."""
import copy
import math

import torch
import torch.nn.functional as F

import graphmorph
from graphmorph.models import build
from graphmorph.graph.rng import seeded
from transforms.statistics import (
    branch_statistics, instrument_branches, remove_instrumentation, reset_statistics,
)


def envelope(x):
    return graphmorph.capture(build("EnvelopeNet-4/2-1/3"), x)


def test_instrumentation_round_trip_gives_back_the_graph_exactly():
    x = torch.randn(4, 3, 8, 8)
    gm = envelope(x)
    instrumented = instrument_branches(gm)
    assert instrumented.code != gm.code
    restored = remove_instrumentation(instrumented)
    assert restored.code == gm.code
    assert restored.state_dict().keys() == gm.state_dict().keys()
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in gm.state_dict().items())
    # after training the instrumented graph, removal keeps the trained weights and nothing else
    optimizer = torch.optim.SGD(instrumented.parameters(), lr=0.1)
    instrumented.train()
    F.cross_entropy(instrumented(x), torch.arange(4)).backward()
    optimizer.step()
    trained = remove_instrumentation(instrumented)
    assert trained.code == gm.code
    kept = {k: v for k, v in instrumented.state_dict().items() if not k.startswith("graphmorph_statistics")}
    assert kept.keys() == trained.state_dict().keys()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in kept.items())


def test_statistics_are_the_mean_squared_featuremap_per_sample_averaged():
    x = torch.randn(6, 3, 8, 8)
    gm = envelope(x)
    instrumented = instrument_branches(gm).train()
    reference = copy.deepcopy(gm).train()
    seen = {}
    for cell, branch in [("stage0.cell1", "sep3x3"), ("stage1.cell0", "conv1x1")]:
        norm = reference.get_submodule(f"{cell}.{branch}.2")
        norm.register_forward_hook(lambda m, i, out, key=(cell, branch): seen.setdefault(key, []).append(out))
    with torch.no_grad():
        with seeded(0):
            out_a = instrumented(x)
        with seeded(0):  # the same dropout masks
            out_b = reference(x)
        instrumented(x[:2])
        reference(x[:2])
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)  # a pass-through
    stats = branch_statistics(instrumented)
    assert set(stats) == {"stage0.cell0", "stage0.cell1", "stage1.cell0"}
    assert set(stats["stage0.cell1"]) == {"conv1x1", "conv3x3", "sep3x3"}
    for (cell, branch), outputs in seen.items():
        per_sample = torch.cat([o.pow(2).flatten(1).mean(1) for o in outputs])
        assert math.isclose(stats[cell][branch], float(per_sample.mean()), rel_tol=1e-5)


def test_eval_mode_does_not_accumulate_and_reset_clears():
    x = torch.randn(2, 3, 8, 8)
    instrumented = instrument_branches(envelope(x))
    instrumented.eval()
    with torch.no_grad():
        instrumented(x)
    assert all(math.isnan(v) for cell in branch_statistics(instrumented).values() for v in cell.values())
    instrumented.train()
    with torch.no_grad():
        instrumented(x)
    assert all(v > 0 for cell in branch_statistics(instrumented).values() for v in cell.values())
    reset_statistics(instrumented)
    assert all(math.isnan(v) for cell in branch_statistics(instrumented).values() for v in cell.values())
