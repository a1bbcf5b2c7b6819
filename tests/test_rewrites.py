"""Every registered rewrite, through the one driver: a positive case whose returned model carries
its source's state (`assert_state_carried`) and matches its contract, a refusal that `check` gives
alone and `apply` raises, the record that rebuilds the same rewrite, and replay onto a fresh model
giving the same state bit for bit. A rewrite registered without a case here fails the first test."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import graphmorph
import transforms
from graphmorph.graph.history import history
from graphmorph.models import build
from graphmorph.testing import assert_preserves_function, assert_state_carried, randomize_state
from graphmorph.graph.verify import output_differences
from third_party_forms import DenseNetish
from transforms import REWRITES, apply, rewrite_of

RESNET = ("Basic3ResNet-1-2-1", dict(num_classes=3, in_channels=1, widths=(4, 6, 8)), (2, 1, 8, 8))
PLAIN = ("Plain3Net-1-1-1", dict(num_classes=3, in_channels=1, widths=(4, 6, 8)), (2, 1, 8, 8))
ENVELOPE = ("EnvelopeNet-4/2-1/3", dict(num_classes=3, in_channels=1), (2, 1, 8, 8))
DENSE = (DenseNetish, {}, (2, 3, 8, 8))


@dataclass
class Case:
    net: tuple
    make: Callable            # source graph -> the rewrite to apply
    refused: Callable         # source graph -> a rewrite `check` refuses
    reason: str               # a regex of the refusal
    added: tuple = ()         # state-name prefixes the rewrite adds / removes
    removed: tuple = ()
    resized: bool = False
    preserves: tuple = ()     # modes in which the result computes the source's function


def _skip_edge(gm):
    merge = next(n for n in gm.graph.nodes if n.name.startswith("add"))
    return merge.name, merge.args[1].name


CASES = {
    "grow": Case(RESNET, lambda gm: transforms.Grow(after="layer2.1", stage=1, init="zero", std=1.0, seed=5),
                 lambda gm: transforms.Grow(after="layer2.1", stage=1, init="identity", std=1.0, seed=5),
                 "init='identity' is for plain", added=("layer2.2",), preserves=("eval", "train")),
    "prune_channels": Case(RESNET, lambda gm: transforms.PruneChannels("layer1.0.conv1", (0, 2)),
                           lambda gm: transforms.PruneChannels("fc", (0,)), "cannot prune channels of fc",
                           resized=True),
    "prune_filters": Case(RESNET, lambda gm: transforms.PruneFilters(0.5, "l2", False, (("layer2.0.conv1", (1, 4)),), ()),
                          lambda gm: transforms.PruneFilters(0.5, "l2", False, (("layer2.0.conv1", (0, 1, 2, 3, 4, 5)),), ()),
                          "prune_filters refused", resized=True),
    "prune_skip_edges": Case(RESNET, lambda gm: transforms.PruneSkipEdges((_skip_edge(gm),)),
                             lambda gm: transforms.PruneSkipEdges((("conv1", "x"),)), "no add or concatenation"),
    "remove_block": Case(RESNET, lambda gm: transforms.RemoveBlock("layer2.1"),
                         lambda gm: transforms.RemoveBlock("layer2.0"), "only residual blocks with an identity",
                         removed=("layer2.1",)),
    "prune_branches": Case(ENVELOPE, lambda gm: transforms.PruneBranches("stage0.cell1", ("conv3x3",)),
                           lambda gm: transforms.PruneBranches("stage0.cell1", ("conv1x1", "conv3x3", "sep3x3")),
                           "cannot prune every branch", removed=("stage0.cell1.conv3x3",), resized=True),
    "prune_skips": Case(ENVELOPE, lambda gm: transforms.PruneSkips((("stage0.reduce2", "input"),)),
                        lambda gm: transforms.PruneSkips((("stage0.reduce2", "cell7"),)), "no skip",
                        removed=("stage0.reduce2.w_input",), resized=True),
    "grow_dense": Case(DENSE, lambda gm: transforms.GrowDense(block="block1", seed=4),
                       lambda gm: transforms.GrowDense(block="stem", seed=4), "not a dense block",
                       added=("block1.denselayer3",), resized=True, preserves=("eval", "train")),
    "widen": Case(RESNET, lambda gm: transforms.Widen("layer1.0.conv1", 3, "zero", 7),
                  lambda gm: transforms.Widen("fc", 1), "cannot widen fc", resized=True, preserves=("eval", "train")),
    "add_cell": Case(ENVELOPE, lambda gm: transforms.AddCell(1, ("conv1x1", "sep3x3"), "preserve", 9),
                     lambda gm: transforms.AddCell(5, ("conv1x1",), "preserve", 9), "no EnvelopeNet stage 5",
                     added=("stage1.cell1", "stage1.reduce2"), preserves=("eval", "train")),
}


def source(net, seed: int = 0):
    arch, options, shape = net
    model = randomize_state((arch(**options) if callable(arch) else build(arch, **options)).double(), seed)
    return graphmorph.capture(model, torch.randn(*shape, dtype=torch.float64))


def test_every_built_in_rewrite_is_registered_and_has_a_case_here():
    built_in = {name for name, cls in REWRITES.items() if cls.__module__.startswith("transforms.")}
    assert built_in == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_rewrite_applies_carries_the_state_and_records_itself(name):
    case = CASES[name]
    gm = source(case.net)
    rewrite = case.make(gm)
    assert rewrite.refusal(gm) is None
    result = apply(gm, rewrite)
    assert_state_carried(gm, result, case.added, case.removed, case.resized)
    record = history(result)[-1]
    assert record["rewrite"] == name and rewrite_of(record) == rewrite
    assert {k: v for k, v in record.items() if k in rewrite.record()} == rewrite.record()
    x = torch.randn(3, *case.net[2][1:], dtype=torch.float64)
    if case.preserves:
        assert_preserves_function(gm, result, x, modes=case.preserves, atol=1e-10)
    else:  # a pruning: the function changes (the masked reference is the contract verify checked)
        assert output_differences(gm, result, x, ("eval",))["eval"] > 1e-6


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_refused_rewrite_says_why_before_editing(name):
    case = CASES[name]
    gm = source(case.net)
    rewrite = case.refused(gm)
    assert re.search(case.reason, rewrite.refusal(gm) or "")
    with pytest.raises(graphmorph.RewriteError, match=case.reason):
        apply(gm, rewrite)


@pytest.mark.parametrize("name", sorted(CASES))
def test_replaying_a_rewrite_gives_the_same_state(name):
    case = CASES[name]
    result = apply(source(case.net), case.make(source(case.net)))
    replayed = transforms.replay(source(case.net), history(result))
    expected, got = result.state_dict(), replayed.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_record_missing_a_field_or_naming_no_rewrite_is_refused():
    with pytest.raises(graphmorph.RewriteError, match="prune_channels record lacks 'channels'"):
        rewrite_of({"rewrite": "prune_channels", "target": "conv1"})
    with pytest.raises(graphmorph.RewriteError, match="the record has unknown rewrite .shrink.; known: add_cell"):
        rewrite_of({"rewrite": "shrink"})


def test_registering_needs_a_rewrite_dataclass_with_a_free_name():
    with pytest.raises(TypeError, match="dataclass subclassing"):
        transforms.register(type("Loose", (), {"name": "loose"}))

    @dataclass(frozen=True)
    class Clash(transforms.Rewrite):
        name = "grow"

    with pytest.raises(ValueError, match="'grow' is already registered"):
        transforms.register(Clash)


def test_analyses_of_a_held_graph_run_once_and_of_any_other_graph_afresh():
    from graphmorph.graph.analysis import find_blocks
    from graphmorph.graph.channels import channel_dependencies
    from graphmorph.graph.memo import unchanged

    gm, other = source(RESNET), source(RESNET)
    with unchanged(gm):
        assert channel_dependencies(gm) is channel_dependencies(gm)
        assert channel_dependencies(other) is not channel_dependencies(other)
        blocks = find_blocks(gm)
        blocks.clear()  # a caller's copy: what is remembered stays whole
        assert find_blocks(gm) and find_blocks(gm) == find_blocks(other)
        with unchanged(gm):  # nested for the same graph: shared
            assert channel_dependencies(gm) is channel_dependencies(gm)
    assert channel_dependencies(gm) is not channel_dependencies(gm)
