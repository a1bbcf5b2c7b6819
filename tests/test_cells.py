"""Cell addition: function preservation, dense wiring, the JSON form rebuilds, replay, refusals."""
import copy

import pytest
import torch
from hypothesis import given, strategies as st

import graphmorph
import transforms
from graphmorph.graph.history import history
from graphmorph.models import BRANCH_TYPES, build, envelope_arch
from graphmorph.testing import assert_preserves_function, envelope_nets
from graphmorph.graph.verify import output_differences, parameter_count


def some_pruning(gm, data):
    """Prune a random branch and a random skip, when there are any, so cells differ."""
    cells = [c for s in envelope_arch(gm)["stages"] for c in s["cells"] if len(c["branches"]) > 1]
    if cells and data.draw(st.booleans()):
        cell = data.draw(st.sampled_from(cells))
        gm = transforms.prune_branches(gm, cell["name"], [data.draw(st.sampled_from(cell["branches"]))])
    skips = [tuple(n.target.split(".w_")) for n in gm.graph.nodes if n.op == "get_attr" and ".w_" in str(n.target)]
    if skips and data.draw(st.booleans()):
        gm = transforms.prune_skips(gm, [data.draw(st.sampled_from(skips))])
    return gm


@given(spec=envelope_nets(), data=st.data())
def test_an_added_cell_preserves_the_function_and_is_densely_wired(spec, data):
    x = spec.example_input(batch=3)
    gm = some_pruning(graphmorph.capture(spec.build(), x), data)
    before = envelope_arch(gm)
    stage = data.draw(st.integers(0, len(before["stages"]) - 1))
    branches = data.draw(st.lists(st.sampled_from(BRANCH_TYPES), min_size=1, max_size=3, unique=True))
    grown = transforms.add_cell(gm, stage, branches=branches)

    assert_preserves_function(gm, grown, x, modes=("eval", "train"))
    after = envelope_arch(grown)
    old, new = before["stages"][stage], after["stages"][stage]
    n = len(old["cells"])
    assert new["cells"][:n - 1] == old["cells"][:n - 1]
    assert new["cells"][n - 1]["branches"] == old["cells"][n - 1]["branches"]
    assert new["cells"][n] == {"name": f"stage{stage}.cell{n}", "branches": branches, "skips": old["output_skips"]}
    assert new["output_skips"] == ["input", *(f"cell{j}" for j in range(n))]
    assert [s for i, s in enumerate(after["stages"]) if i != stage] == \
        [s for i, s in enumerate(before["stages"]) if i != stage]
    assert parameter_count(grown) > parameter_count(gm)


@given(spec=envelope_nets(max_stages=1, max_cells=2), data=st.data())
def test_the_json_form_rebuilds_a_net_that_takes_the_constructed_weights(spec, data):
    x = spec.example_input(batch=2)
    gm = some_pruning(graphmorph.capture(spec.build(), x), data)
    grown = transforms.add_cell(gm, 0, init=data.draw(st.sampled_from(transforms.CELL_INITS)))
    rebuilt = build(envelope_arch(grown), num_classes=spec.num_classes, in_channels=spec.in_channels)
    rebuilt.load_state_dict(grown.state_dict())
    assert_preserves_function(grown, rebuilt, x, modes=("eval",))


def test_random_init_changes_the_function_and_replay_repeats_it():
    x = torch.randn(2, 3, 8, 8)
    gm = graphmorph.capture(build("EnvelopeNet-4/2-1/3"), x)
    fresh = copy.deepcopy(gm)
    grown = transforms.add_cell(gm, 1, init="random", generator=torch.Generator().manual_seed(3))
    assert output_differences(gm, grown, x, ("eval",))["eval"] > 1e-3
    grown = transforms.add_cell(transforms.prune_branches(grown, "stage1.cell1", ["conv3x3"]), 1)
    assert [r["rewrite"] for r in history(grown)] == ["add_cell", "prune_branches", "add_cell"]
    replayed = transforms.replay(fresh, history(grown))
    assert envelope_arch(replayed) == envelope_arch(grown)
    assert all(torch.equal(v, grown.state_dict()[k]) for k, v in replayed.state_dict().items())


def test_the_new_cell_learns_from_its_first_step():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    grown = transforms.add_cell(graphmorph.capture(build("EnvelopeNet-4/1/2"), x), 0)
    optimizer = torch.optim.SGD(grown.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(grown(x), y).backward()
        optimizer.step()
    assert grown.get_submodule("stage0.cell1.conv1x1.0").weight.grad.abs().sum() > 0


@pytest.mark.parametrize("call, message", [
    (lambda gm: transforms.add_cell(gm, 4), "no EnvelopeNet stage 4; the stages with cells are: 0, 1"),
    (lambda gm: transforms.add_cell(gm, 0, branches=["conv9x9"]), "a new cell needs distinct branches"),
    (lambda gm: transforms.add_cell(gm, 0, branches=[]), "a new cell needs distinct branches"),
    (lambda gm: transforms.add_cell(gm, 0, init="zero"), "unknown cell init 'zero'; choose one of preserve, random"),
    (lambda gm: transforms.add_cell(transforms.instrument_branches(gm), 0), "remove statistics instrumentation"),
])
def test_bad_cell_additions_are_refused(call, message):
    gm = graphmorph.capture(build("EnvelopeNet-2/1-1/2"), torch.zeros(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match=message):
        call(gm)


def test_a_net_without_cells_is_refused():
    gm = graphmorph.capture(build("Plain3Net-1-1-1", widths=(2, 4, 8)), torch.zeros(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match="it is not an EnvelopeNet"):
        transforms.add_cell(gm, 0)


@pytest.mark.parametrize("structure, message", [
    ({"width": 4}, "missing 'stages'"),
    ({"width": 0, "stages": [{"cells": [{"branches": ["conv1x1"], "skips": []}], "output_skips": []}]}, "width"),
    ({"width": 4, "stages": [{"cells": [{"branches": ["conv2x2"], "skips": []}], "output_skips": []}]}, "conv2x2"),
    ({"width": 4, "stages": [{"cells": [{"branches": ["conv1x1"], "skips": []}], "output_skips": ["cell0"]}]},
     "stage0.reduce1 cannot read skip"),
])
def test_bad_structures_are_refused(structure, message):
    with pytest.raises(graphmorph.ArchError, match=message):
        build(structure)
