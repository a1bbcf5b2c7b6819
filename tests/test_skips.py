"""remove_block (the inverse of grow) and skip-edge pruning on any model: the result equals the old
graph with the removed input zeroed where it enters its add or concatenation (float64)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import graphmorph
import transforms
from graphmorph.graph import ops
from graphmorph.testing import assert_preserves_function, assert_prune_equals_mask, cnns, merge_edges, randomize_state
from graphmorph.graph.verify import verification_inputs
from transforms.skips import zero_inputs
from zoo import ZOO

ATOL = 1e-10


def _captured(name, seed=0):
    factory, size, _ = ZOO[name]
    torch.manual_seed(seed)
    return graphmorph.capture(factory(), torch.randn(2, 3, size, size))


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name, block", [
    ("ProjectionResNet", "layer1.1"), ("PreActResNet", "layer1.1"), ("MobileNetV2ish", "features.3"),
    ("SEResNet", "stage1.1"), ("PlusEqualsResNeXt", "stages.0.1"), ("ParentAddNet", "blocks.1"),
    ("FunctionalNet", "blocks.1"),
])
def test_remove_block_drops_exactly_the_residual_branch(name, block):
    gm = _captured(name)
    removed = transforms.remove_block(gm, block)
    assert _params(gm) - _params(removed) == _params(gm.get_submodule(block))
    merge = next(n for n in gm.graph.nodes if ops.is_add(n) and ops.module_path(n).startswith(block)
                 or ops.is_add(n) and any(ops.module_path(i).startswith(block + ".") for i in n.all_input_nodes))
    branch = next(i for i in merge.all_input_nodes if ops.module_path(i).startswith(block + "."))
    reference = zero_inputs(gm, [(merge.name, branch.name)])
    assert_prune_equals_mask(gm, removed, reference, verification_inputs(gm), atol=ATOL)
    assert graphmorph.history(removed)[-1] == {"rewrite": "remove_block", "block": block}


def test_remove_block_undoes_a_zero_init_grow():
    model = graphmorph.models.build("Basic3ResNet-1-1-1", num_classes=4, in_channels=1)
    gm = graphmorph.capture(model, torch.randn(2, 1, 8, 8))
    grown = transforms.grow(gm, stage=1, init="zero")
    new_block = graphmorph.find_stages(grown)[1].blocks[-1]
    back = transforms.remove_block(grown, new_block)
    assert _params(back) == _params(gm)
    assert_preserves_function(gm, back, verification_inputs(gm), atol=ATOL)
    assert graphmorph.models.arch_of(grown) == "Basic3ResNet-1-2-1"
    assert graphmorph.models.arch_of(back) == "Basic3ResNet-1-1-1"   # the activation left behind is no block


def test_a_stages_only_block_is_not_removed():
    """It was removed and the net still reported Basic3ResNet-1-1-1."""
    gm = graphmorph.capture(graphmorph.models.build("Basic3ResNet-1-1-1", num_classes=4, in_channels=1),
                            torch.randn(2, 1, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match="'layer1.0' is the only block of stage 0; a stage keeps one"):
        transforms.remove_block(gm, "layer1.0")


@pytest.mark.parametrize("name, block, message", [
    ("ProjectionResNet", "layer2.0", "projection shortcut"),
    ("VGGish", "features.0", "plain block"),
    ("ProjectionResNet", "layer9", "no block named 'layer9'"),
])
def test_remove_block_refuses_what_it_cannot_remove(name, block, message):
    with pytest.raises(graphmorph.RewriteError, match=message):
        transforms.remove_block(_captured(name), block)


def test_dropping_a_dense_concatenation_input_narrows_every_reader():
    gm = _captured("TinyDenseNet")
    pruned = transforms.prune_skips(gm, [("cat", "conv0")])     # block1.0's input leaves its concatenation
    assert pruned.get_submodule("block1.1.bn").num_features == 4
    assert pruned.get_submodule("block1.1.conv").in_channels == 4
    assert pruned.get_submodule("trans1.conv").in_channels == 8
    assert_prune_equals_mask(gm, pruned, zero_inputs(gm, [("cat", "conv0")]), verification_inputs(gm), atol=ATOL)
    again = transforms.replay(_captured("TinyDenseNet"), graphmorph.history(pruned))
    assert again.get_submodule("trans1.conv").in_channels == 8


def test_dropping_a_dense_input_with_trained_batch_norms_masks_its_channels_after_them():
    """A BatchNorm's shift turns zeroed channels into values: the pruned net is the source with the
    input zeroed and, in each BatchNorm reading it, those channels' scale and shift zeroed too."""
    gm = graphmorph.capture(randomize_state(ZOO["TinyDenseNet"][0]()), torch.randn(2, 3, 16, 16))
    pruned = transforms.prune_skips(gm, [("cat", "conv0")])

    def mask(masked):
        for bn in ("block1.1.bn", "trans1.bn"):           # they read conv0's 8 channels first
            masked.get_submodule(bn).weight[:8] = 0
            masked.get_submodule(bn).bias[:8] = 0
    reference = zero_inputs(gm, [("cat", "conv0")])
    with torch.no_grad():
        mask(reference)
    assert_prune_equals_mask(gm, pruned, reference, verification_inputs(gm), ("eval",), atol=ATOL)


def test_dropping_an_add_input_leaves_the_other_operand():
    gm = _captured("ParentAddNet")
    add = next(n for n in gm.graph.nodes if ops.is_add(n))
    shortcut = add.all_input_nodes[0]
    pruned = transforms.prune_skips(gm, [(add.name, shortcut.name)])
    assert _params(pruned) == _params(gm)
    assert sum(ops.is_add(n) for n in pruned.graph.nodes) == sum(ops.is_add(n) for n in gm.graph.nodes) - 1


@pytest.mark.parametrize("edge, message", [
    (("conv0", "x"), "no add or concatenation node named 'conv0'"),
    (("cat", "block1_1_conv"), "not an input of 'cat'"),
])
def test_skip_edges_that_do_not_exist_are_refused(edge, message):
    with pytest.raises(graphmorph.RewriteError, match=message):
        transforms.prune_skip_edges(_captured("TinyDenseNet"), [edge])


def test_concatenated_channels_that_are_added_elsewhere_are_refused():
    spec = graphmorph.testing.CNNSpec(pieces=(("dense", 2, 1), ("residual", 2, 1)))
    gm = graphmorph.capture(spec.build(), spec.example_input())
    cat = next(n for n in gm.graph.nodes if ops.is_cat(n))
    with pytest.raises(graphmorph.RewriteError, match="cannot change alone"):
        transforms.prune_skip_edges(gm, [(cat.name, cat.args[0][0].name)])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=cnns(kinds=("dense", "residual", "se", "inverted", "split", "plain", "projection")), data=st.data())
def test_dropping_any_merge_input_equals_zeroing_it(spec, data):
    gm = graphmorph.capture(spec.build(), spec.example_input())
    edges = merge_edges(gm)
    if not edges:
        return
    merge, source = data.draw(st.sampled_from(edges), label="edge")
    try:
        pruned = transforms.prune_skip_edges(gm, [(merge, source)])
    except graphmorph.RewriteError as err:
        assert any(words in str(err) for words in ("cannot change alone", "single input", "broadcasts", "without channels")), err
        return
    assert_prune_equals_mask(gm, pruned, zero_inputs(gm, [(merge, source)]), verification_inputs(gm), atol=ATOL)
