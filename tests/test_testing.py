"""graphmorph.testing: its strategies generate only valid models, each assertion helper fails on a
broken rewrite, and a failing morphism shrinks to a minimal, readable architecture."""
import copy
import operator

import pytest
import torch
from hypothesis import HealthCheck, find, given, settings, strategies as st
from torch import nn

import graphmorph
import transforms
from graphmorph.graph.channels import channel_dependencies
from graphmorph.testing.grammar import PIECES
from graphmorph.testing import (
    CNNSpec, assert_preserves_function, assert_prune_equals_mask, assert_valid_rewrite, cnns, inputs_for,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(spec=cnns(), data=st.data())
def test_generated_cnns_capture_propagate_shapes_and_run(spec, data):
    gm = graphmorph.capture(spec.build(), spec.example_input())
    assert all("type" in n.meta for n in gm.graph.nodes)                   # every node ran
    assert all("tensor_meta" in n.meta for n in gm.graph.nodes if n.meta["type"] is torch.Tensor)
    x = data.draw(inputs_for(spec), label="input")
    assert gm.eval()(x).shape == (x.shape[0], spec.num_classes)
    assert sum(len(s.blocks) for s in graphmorph.find_stages(gm)) >= 1


def test_a_net_of_every_piece_exports_to_onnx_with_parity(tmp_path):
    spec = CNNSpec(pieces=tuple((kind, 3, 1 + i % 2) for i, kind in enumerate(PIECES)), input_size=16,
                   in_channels=3)
    gm = graphmorph.capture(spec.build(), spec.example_input())
    report = graphmorph.export_onnx(gm, tmp_path / "every.onnx", spec.example_input())
    assert report.max_abs_diff <= 1e-4


def _residual_net():
    spec = CNNSpec(pieces=(("residual", 3, 1), ("residual", 4, 1)), input_size=6)
    return graphmorph.capture(spec.build(), spec.example_input()), spec.example_input(batch=3)


def test_assert_preserves_function_fails_when_a_growth_changes_the_function():
    gm, x = _residual_net()
    assert max(assert_preserves_function(gm, transforms.grow(gm, stage=0, init="zero"), x).values()) <= 1e-10
    with pytest.raises(AssertionError, match=r"outputs differ by .* in eval mode \(float64, atol 1e-10\)"):
        assert_preserves_function(gm, transforms.grow(gm, stage=0, init="gau"), x)


def test_assert_prune_equals_mask_fails_when_the_wrong_channels_are_masked_or_none_are():
    gm, x = _residual_net()
    deps = channel_dependencies(gm)
    target = "pieces.0.conv1.0"
    pruned = transforms.prune_channels(gm, target, [0])

    def masking(channel):
        return transforms.mask_channels(gm, deps.removal(deps.classes(target, [channel])))

    assert max(assert_prune_equals_mask(gm, pruned, masking(0), x).values()) <= 1e-10
    with pytest.raises(AssertionError, match="differs from the masked one"):
        assert_prune_equals_mask(gm, pruned, masking(1), x)
    with pytest.raises(AssertionError, match="the mask changed no parameter"):
        assert_prune_equals_mask(gm, gm, lambda model: None, x)


def test_assert_valid_rewrite_fails_on_a_wrong_count_shared_parameters_a_dangling_module_or_a_broken_graph():
    gm, x = _residual_net()
    grown = transforms.grow(gm, stage=0, init="zero")
    added = sum(p.numel() for p in grown.parameters()) - sum(p.numel() for p in gm.parameters())
    assert_valid_rewrite(gm, grown, x, param_delta=added)
    with pytest.raises(AssertionError, match=f"changed the parameter count by {added}, expected {added + 1}"):
        assert_valid_rewrite(gm, grown, x, param_delta=added + 1)
    sharing = copy.deepcopy(gm)
    sharing.classifier.weight = gm.classifier.weight
    with pytest.raises(AssertionError, match="1 parameters are shared between the old and the new graph"):
        assert_valid_rewrite(gm, sharing, x, param_delta=0)
    dangling = copy.deepcopy(gm)
    dangling.add_submodule("spare", nn.Conv2d(4, 4, 1))
    with pytest.raises(AssertionError, match="left submodules no node uses: spare"):
        assert_valid_rewrite(gm, dangling, x, param_delta=20)
    broken = copy.deepcopy(gm)
    add = next(n for n in broken.graph.nodes if n.target is operator.add)
    add.args = (add, add.args[1])            # a node that reads itself
    with pytest.raises(AssertionError, match="invalid graph"):
        assert_valid_rewrite(gm, broken, x, param_delta=0)


def _scale_concatenations(gm):
    """A broken 'morphism': right everywhere except after a concatenation, whose output it scales."""
    gm = copy.deepcopy(gm)
    for node in [n for n in gm.graph.nodes if n.target is torch.cat]:
        with gm.graph.inserting_after(node):
            scaled = gm.graph.call_function(operator.mul, (node, 1.5))
        node.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)
    gm.recompile()
    return gm


def test_a_failing_morphism_shrinks_to_the_smallest_net_that_shows_it():
    def fails(spec):
        gm = graphmorph.capture(spec.build(), spec.example_input())
        try:
            assert_preserves_function(gm, _scale_concatenations(gm), spec.example_input(), modes=("eval",))
        except AssertionError:
            return True
        return False

    minimal = find(cnns(max_pieces=3), fails, settings=settings(max_examples=300, database=None))
    assert minimal == CNNSpec(pieces=(("dense", 2, 1),), head="pool", in_channels=1, input_size=4, num_classes=2)
    assert repr(minimal) == ("CNNSpec(pieces=(('dense', 2, 1),), head='pool', in_channels=1, input_size=4, "
                             "num_classes=2)")
    assert eval(repr(minimal), {"CNNSpec": CNNSpec}) == minimal   # the printed recipe rebuilds the net


def test_strategies_refuse_unknown_piece_kinds():
    @given(cnns(kinds=("plain", "transformer")))
    def draw(spec):
        pass

    with pytest.raises(ValueError, match="unknown piece kind"):
        draw()
