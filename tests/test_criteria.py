"""Pruning criteria as registered callables: each built-in one picks the channels an independent
computation on the eager model says it should, a user's criterion plugs in by name, and every
criterion's choice is a verified rewrite (pruning equals masking) on generated nets."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import graphmorph
import transforms
from graphmorph.graph.verify import parameter_count
from graphmorph.testing import cnns
from pruning_zoo import Plain
from transforms.criteria import CRITERIA

BUILT_IN = ("l1", "l2", "featuremap_l2", "taylor", "bn_scale", "random")


def _model(seed=0) -> Plain:
    torch.manual_seed(seed)
    model = Plain()
    with torch.no_grad():   # BatchNorms with statistics and scales of their own
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _pruned_conv1(gm, criterion, count=2, data=None) -> list[int]:
    pruned = transforms.prune_filters(gm, count / 8, criterion, data=data, per_layer=True)
    return sorted(dict(graphmorph.history(pruned)[-1]["pruned"])["conv1"])


def _lowest(values: torch.Tensor, count=2) -> list[int]:
    return sorted(values.argsort()[:count].tolist())


def _batches(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, 8, 8, generator=generator), torch.randint(0, 4, (6,), generator=generator))
            for _ in range(3)]


def _removed(model, values) -> torch.Tensor:
    """Per conv1 channel, `values` (a function of a weight) summed over what its removal deletes:
    conv1's row and conv2's column."""
    return values(model.conv1.weight).reshape(8, -1).sum(1) + values(model.conv2.weight).transpose(0, 1).reshape(
        8, -1).sum(1)


def test_l1_and_l2_rank_by_the_norm_of_every_weight_a_channels_removal_deletes():
    model = _model()
    with torch.no_grad():   # channel 0: one large weight (large L2, small L1); channel 1: many small ones
        model.conv1.weight[0] = 0.0
        model.conv1.weight[0, 0, 1, 1] = 0.9
        model.conv1.weight[1] = 0.08
        model.conv2.weight.mul_(0.05)
    gm = graphmorph.capture(model, torch.randn(1, 3, 8, 8))
    assert _pruned_conv1(gm, "l1") == _lowest(_removed(model, lambda w: w.detach().abs()))
    assert _pruned_conv1(gm, "l2") == _lowest(_removed(model, lambda w: w.detach().pow(2)).sqrt())
    assert _pruned_conv1(gm, "l1") != _pruned_conv1(gm, "l2")
    with torch.no_grad():   # equal rows: the reader's columns decide
        model.conv1.weight.fill_(0.1)
        model.conv2.weight[:, [3, 6]] *= 0.01
    gm = graphmorph.capture(model, torch.randn(1, 3, 8, 8))
    assert _pruned_conv1(gm, "l1") == _pruned_conv1(gm, "l2") == [3, 6]


def test_bn_scale_prunes_the_channels_with_the_smallest_batchnorm_gamma():
    model = _model()
    with torch.no_grad():
        model.bn1.weight[[2, 5]] = torch.tensor([0.01, -0.02])   # |gamma| counts, not gamma
        model.bn1.weight[3] = -3.0
    gm = graphmorph.capture(model, torch.randn(1, 3, 8, 8))
    assert _pruned_conv1(gm, "bn_scale") == _lowest(model.bn1.weight.detach().abs()) == [2, 5]


def test_taylor_matches_weight_times_gradient_of_the_loss_on_the_eager_model():
    model, batches = _model(), _batches()
    gm = graphmorph.capture(model, torch.randn(1, 3, 8, 8))
    oracle = _model()                    # the same weights, an independent eager computation
    oracle.zero_grad()
    for x, y in batches:
        F.cross_entropy(oracle(x), y).backward()
    importance = _removed(oracle, lambda w: (w * w.grad).detach()).abs()
    assert _pruned_conv1(gm, "taylor", 3, batches) == _lowest(importance, 3)
    assert all(p.grad is None for p in gm.parameters())          # the captured net's .grad is untouched


def test_featuremap_l2_prunes_the_quietest_featuremaps():
    model, batches = _model(), _batches()
    gm = graphmorph.capture(model, torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        maps = torch.cat([model.conv1(x) for x, _ in batches])
    assert _pruned_conv1(gm, "featuremap_l2", 2, batches) == _lowest(maps.pow(2).mean((0, 2, 3)))


def test_random_follows_torchs_seed():
    gm = graphmorph.capture(_model(), torch.randn(1, 3, 8, 8))
    torch.manual_seed(3)
    first = _pruned_conv1(gm, "random", 3)
    torch.manual_seed(3)
    assert _pruned_conv1(gm, "random", 3) == first
    draws = []
    for seed in range(4):
        torch.manual_seed(seed)
        draws.append(tuple(_pruned_conv1(gm, "random", 3)))
    assert len(set(draws)) > 1


def test_a_users_criterion_is_chosen_by_name():
    @transforms.register_criterion("last_first")
    def last_first(gm, deps, groups, data):
        return [[float(-position) for position in range(group.size)] for group in groups]

    try:
        gm = graphmorph.capture(_model(), torch.randn(1, 3, 8, 8))
        assert _pruned_conv1(gm, "last_first", 3) == [5, 6, 7]
        assert graphmorph.history(transforms.prune_filters(gm, 0.25, "last_first"))[-1]["criterion"] == "last_first"
    finally:
        CRITERIA.pop("last_first", None)


@pytest.mark.parametrize("criterion, data, message", [
    ("l3", None, "criterion must be one of l2, l1, featuremap_l2, taylor, bn_scale, random"),
    ("taylor", None, r"criterion 'taylor' needs \(inputs, labels\) batches"),
    ("taylor", [torch.randn(2, 3, 8, 8)], "needs \\(inputs, labels\\) batches to compute the loss"),
    ("featuremap_l2", None, "needs calibration batches"),
])
def test_criteria_refuse_missing_data_with_the_fix(criterion, data, message):
    gm = graphmorph.capture(_model(), torch.randn(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match=message):
        transforms.prune_filters(gm, 0.25, criterion, data=data)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=cnns(max_pieces=3), criterion=st.sampled_from(BUILT_IN), ratio=st.sampled_from((0.2, 0.4)))
def test_every_criterion_gives_a_verified_pruning_on_generated_cnns(spec, criterion, ratio):
    gm = graphmorph.capture(spec.build(), spec.example_input())
    x = spec.example_input()
    out = gm(x)
    data = [(x, torch.randint(0, out.shape[-1], (len(x),)))] if out.dim() == 2 else [x]
    if criterion == "taylor" and out.dim() != 2:
        return
    pruned = transforms.prune_filters(gm, ratio, criterion, data=data)   # verified: pruning equals masking
    record = graphmorph.history(pruned)[-1]
    assert record["criterion"] == criterion
    assert (parameter_count(pruned) < parameter_count(gm)) == bool(record["pruned"])
