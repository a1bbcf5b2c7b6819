"""graphmorph.NAC, the EnvelopeNets construction as a controller: its decisions against statistics
and skip weights set by hand, its resume, and what it refuses."""
import pytest
import torch

import graphmorph
from graphmorph.errors import ArchError, ConfigError
from graphmorph.models import envelope_arch, envelope_structure
from transforms.statistics import BranchStatistic

EXAMPLE = torch.zeros(1, 1, 8, 8)
# stage 0: 6 branches, so at most 6 // 3 = 2 are pruned, the two lowest; stage 1: 3 branches, 1 pruned
STATISTICS = {"stage0.cell0": {"conv1x1": 5.0, "conv3x3": 1.0, "sep3x3": 3.0},
              "stage0.cell1": {"conv1x1": 2.0, "conv3x3": 6.0, "sep3x3": 4.0},
              "stage1.cell0": {"conv1x1": 0.5, "conv3x3": 9.0, "sep3x3": 7.0}}
KEPT = {"stage0.cell0": ["conv1x1", "sep3x3"], "stage0.cell1": ["conv3x3", "sep3x3"],
        "stage1.cell0": ["conv3x3", "sep3x3"]}


def base():
    torch.manual_seed(0)
    return graphmorph.models.build("EnvelopeNet-4/2-1/3", num_classes=10, in_channels=1)


def set_statistics(instrumented, values):
    for name, module in instrumented.named_modules():
        if isinstance(module, BranchStatistic):
            cell, _, branch = name.split(".", 1)[1].replace("_", ".", 1).rpartition("_")
            module.total.fill_(values[cell][branch])
            module.samples.fill_(1.0)


def set_skip_weights(gm, stage, weights):
    skips = envelope_structure(gm).stages[stage].skips
    with torch.no_grad():
        for skip, weight in zip(skips, weights):
            gm.get_parameter(skip.weight).fill_(weight)
    return [(s.reduction, s.source) for s in skips]


def test_an_iteration_prunes_the_lowest_branches_half_the_skips_and_adds_a_cell_per_stage():
    nac = graphmorph.NAC(base(), EXAMPLE, iterations=2, seed=1)
    instrumented = nac.instrumented
    assert nac.instrumented is instrumented                       # one net per iteration
    set_statistics(instrumented, STATISTICS)
    skips = set_skip_weights(instrumented, 0, [0.9, -0.1, 0.5])    # the one at |w| = 0.1 goes
    set_skip_weights(instrumented, 1, [0.01])                      # one skip: half of it, rounded down, is none
    change = nac.iteration_end()

    assert change.statistics == STATISTICS
    after = envelope_arch(change.model)
    cells = {cell["name"]: cell["branches"] for stage in after["stages"] for cell in stage["cells"]}
    assert {name: cells[name] for name in KEPT} == KEPT
    assert cells["stage0.cell2"] == cells["stage1.cell1"] == ["conv1x1", "conv3x3", "sep3x3"]   # the base's set
    assert [len(stage["cells"]) for stage in after["stages"]] == [3, 2]
    left = [(s.reduction, s.source) for s in envelope_structure(change.model).stages[0].skips]
    assert skips[1] not in left and {skips[0], skips[2]} <= set(left)
    assert len(envelope_structure(change.model).stages[1].skips) >= 1
    assert [r["rewrite"] for r in nac.rewrites].count("add_cell") == 2 and nac.model is change.model
    assert change.trained.state_dict().keys() == base().state_dict().keys()   # instruments removed
    assert nac.iteration == 1 and not nac.done


def test_the_worst_case_prunes_the_highest_branches_and_no_skips():
    nac = graphmorph.NAC(base(), EXAMPLE, iterations=1, prune_best=True, max_cells=(2, 1))
    set_statistics(nac.instrumented, STATISTICS)
    change = nac.iteration_end()
    cells = {cell["name"]: cell["branches"] for stage in envelope_arch(change.model)["stages"]
             for cell in stage["cells"]}
    assert cells == {"stage0.cell0": ["conv3x3", "sep3x3"], "stage0.cell1": ["conv1x1", "sep3x3"],
                     "stage1.cell0": ["conv1x1", "sep3x3"]}                 # no cell added: max_cells reached
    assert "prune_skips" not in {r["rewrite"] for r in nac.rewrites} and nac.done


def test_a_resumed_controller_continues_as_the_uninterrupted_one():
    def one_iteration(nac):
        set_statistics(nac.instrumented, STATISTICS if nac.iteration == 0 else {
            name: {b: float(i) for i, b in enumerate(bs)} for name, bs in
            ((c["name"], c["branches"]) for s in envelope_arch(nac.model)["stages"] for c in s["cells"])})
        return nac.iteration_end()

    straight = graphmorph.NAC(base(), EXAMPLE, iterations=2, cell_init="random", seed=3)
    one_iteration(straight)
    saved, weights = straight.state_dict(), straight.model.state_dict()
    resumed = graphmorph.NAC(base(), EXAMPLE, iterations=2, cell_init="random", seed=99)
    resumed.load_state_dict(saved)
    resumed.model.load_state_dict(weights)
    assert resumed.iteration == 1 and resumed.rewrites == straight.rewrites
    ours, theirs = one_iteration(straight), one_iteration(resumed)
    assert envelope_arch(ours.model) == envelope_arch(theirs.model) and resumed.rewrites == straight.rewrites
    mine = ours.model.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in theirs.model.state_dict().items())   # new cells drawn alike


def test_without_keep_weights_each_iteration_after_the_first_starts_from_fresh_weights():
    nac = graphmorph.NAC(base(), EXAMPLE, iterations=2, keep_weights=False)
    set_statistics(nac.instrumented, STATISTICS)
    first = nac.iteration_end()
    fresh = nac.instrumented
    kept = {k: v for k, v in first.model.state_dict().items() if k in fresh.state_dict()}
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in kept.items() if v.is_floating_point())
    assert envelope_arch(fresh) == envelope_arch(first.model)


@pytest.mark.parametrize("build_it, settings, error, message", [
    (lambda: graphmorph.models.build("Basic3ResNet-1-1-1", in_channels=1), {}, ArchError, "not an EnvelopeNet"),
    (base, {"max_cells": (3,)}, ConfigError, "max_cells needs 2 positive counts"),
    (base, {"branches": ("conv9x9",)}, ConfigError, "branches must be among"),
    (base, {"iterations": 0}, ConfigError, "iterations must be at least 1"),
])
def test_bad_settings_are_refused_with_the_reason(build_it, settings, error, message):
    with pytest.raises(error, match=message):
        graphmorph.NAC(build_it(), EXAMPLE, **settings)


def test_asking_for_a_net_to_train_after_the_last_iteration_says_what_to_do():
    nac = graphmorph.NAC(base(), EXAMPLE, iterations=1)
    set_statistics(nac.instrumented, STATISTICS)
    nac.iteration_end()
    with pytest.raises(ConfigError, match="the construction is done: train `nac.model` from scratch"):
        nac.instrumented
