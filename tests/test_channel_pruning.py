"""Dependency-aware channel pruning on any fx-traceable model: pruning equals masking (float64),
ONNX parity, FLOPs that fall by what the removed channels account for, refusals with reasons."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import graphmorph
import transforms
from graphmorph.graph import ops
from graphmorph.graph.channel_ops import PassThrough, output_weight
from graphmorph.graph.registry import Registry
from graphmorph.graph.channels import channel_dependencies
from graphmorph.testing import assert_prune_equals_mask, cnns
from graphmorph.graph.verify import verification_inputs
from pruning_zoo import PRUNING_ZOO, REFUSED, Plain
from zoo import ZOO

ATOL = 1e-10
ALL_NETS = {**{name: (entry[0], entry[1]) for name, entry in ZOO.items()}, **PRUNING_ZOO}


def _captured(factory, size, seed=0):
    torch.manual_seed(seed)
    model = factory()
    return graphmorph.capture(model, torch.randn(2, 3, size, size))


def _pick(deps, group, choose):
    """(producer, its channels): `choose(run)` class positions from each run of the group's
    partition (a grouped convolution's groups must lose as many channels each), named through the
    producer that carries most of them (a split piece's producers each carry some classes only)."""
    classes = deps.group_classes(group)
    picked = {classes[p] for run in deps.partition(group) for p in choose(run)}
    return max(((producer, deps.output_channels(producer, picked)) for producer in group.producers),
               key=lambda pair: len(pair[1]))


def _assert_prune_equals_mask(gm, pruned, deps, target, channels, modes=("eval",)):
    removal = deps.removal(deps.classes(target, channels))
    masked = transforms.mask_channels(gm, removal, deps.layout)
    assert_prune_equals_mask(gm, pruned, masked, verification_inputs(gm), modes, ATOL)
    return removal


def _expected_macs(gm, removal) -> int:
    """MACs of the pruned net from the original's shapes and the removal alone (not from its weights)."""
    total = 0
    for node in gm.graph.nodes:
        if not (ops.is_conv(gm, node) or ops.is_linear(gm, node)):
            continue
        weight = output_weight(gm, node)
        module = ops.module_of(gm, node)
        groups = getattr(module, "groups", None) or (node.kwargs.get("groups") or 1)
        c_in = node.args[0].meta["tensor_meta"].shape[1]
        c_out = weight.shape[0]
        r_in, r_out = len(removal.get(node.args[0].name, [])), len(removal.get(node.name, []))
        new_groups = groups - r_in if groups == c_in and groups > 1 else groups
        per_group_in = (c_in - r_in) // new_groups
        out_numel = math.prod(node.meta["tensor_meta"].shape) // c_out * (c_out - r_out)
        total += out_numel * per_group_in * math.prod(weight.shape[2:])
    return total


# --------------------------------------------------------------------------- every group of every style


@pytest.mark.parametrize("name", list(ALL_NETS))
def test_every_prunable_group_of_each_style_prunes_as_masking(name):
    factory, size = ALL_NETS[name]
    gm = _captured(factory, size)
    deps = channel_dependencies(gm)
    refused = {g.producers[0]: g.refused for g in deps.groups if g.refused}
    expected_refused = {**REFUSED.get(name, {})}
    classifier = [g.producers[0] for g in deps.groups if g.refused and "output" in g.refused]
    assert len(classifier) == 1, refused                      # the output layer, and only it, for that reason
    assert set(refused) - set(classifier) == set(expected_refused), refused
    for layer, words in expected_refused.items():
        assert words in refused[layer]
        with pytest.raises(graphmorph.RewriteError, match=words):
            transforms.prune_channels(gm, layer, [0])
    for group in deps.groups:
        if group.refused:
            continue
        target, channels = _pick(deps, group, lambda run: run[:1] if len(run) > 1 else [])
        if not channels:
            continue
        pruned = transforms.prune_channels(gm, target, channels)
        removal = _assert_prune_equals_mask(gm, pruned, deps, target, channels)
        assert graphmorph.count_flops(pruned).macs == _expected_macs(gm, removal)
        for producer in group.producers:
            node = deps.node(producer)
            assert pruned.graph.nodes and len(removal[node.name]) >= 1


def test_the_pruned_groups_lose_exactly_their_channels_and_bn_statistics_follow():
    gm = _captured(ZOO["ProjectionResNet"][0], 16)
    with torch.no_grad():
        gm.get_submodule("layer1.0.bn2").running_mean.copy_(torch.arange(8.0))
    pruned = transforms.prune_channels(gm, "layer1.0.conv2", [1, 6])
    for name in ("conv1", "layer1.0.conv2", "layer1.1.conv2"):   # the stem and both blocks share the stream
        assert pruned.get_submodule(name).out_channels == 6
    assert pruned.get_submodule("layer2.0.conv1").in_channels == 6
    assert pruned.get_submodule("layer2.0.downsample.0").in_channels == 6
    assert pruned.get_submodule("layer1.0.bn2").running_mean.tolist() == [0, 2, 3, 4, 5, 7]


# --------------------------------------------------------------------------- property tests on generated nets


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=cnns(), data=st.data())
def test_prune_equals_mask_on_generated_cnns(spec, data):
    gm = graphmorph.capture(spec.build(), spec.example_input())
    deps = channel_dependencies(gm)
    groups = [g for g in deps.groups if g.prunable and min(len(r) for r in deps.partition(g)) > 1]
    if not groups:
        return
    group = data.draw(st.sampled_from(groups), label="group")
    size = min(len(r) for r in deps.partition(group))
    count = data.draw(st.integers(1, size - 1), label="per run")
    target, channels = _pick(deps, group, lambda run: data.draw(st.permutations(run))[:count])
    try:
        pruned = transforms.prune_channels(gm, target, channels)
    except graphmorph.RewriteError as err:   # a split piece or a layer that would be left empty
        assert "without channels" in str(err) or "every channel" in str(err)
        return
    removal = _assert_prune_equals_mask(gm, pruned, deps, target, channels, ("eval", "train"))
    assert graphmorph.count_flops(pruned).macs == _expected_macs(gm, removal)
    assert verification_inputs(gm)[0].shape[1:] == spec.example_input().shape[1:]


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=cnns(max_pieces=3))
def test_pruned_generated_cnns_export_to_onnx_with_parity(spec, tmp_path_factory):
    gm = graphmorph.capture(spec.build(), spec.example_input())
    pruned = transforms.prune_filters(gm, 0.5, per_layer=True)
    report = graphmorph.export_onnx(pruned, tmp_path_factory.mktemp("onnx") / "net.onnx", spec.example_input())
    assert report.max_abs_diff <= 1e-4


# --------------------------------------------------------------------------- prune_filters


def _plain_with_weak_filters(weak=(1, 4, 6)):
    gm = _captured(Plain, 8)
    with torch.no_grad():
        gm.get_submodule("conv1").weight[list(weak)] *= 1e-3
    return gm


def test_prune_filters_l2_removes_the_weakest_filters_per_layer():
    gm = _plain_with_weak_filters()
    pruned = transforms.prune_filters(gm, 0.4, per_layer=True)
    assert pruned.get_submodule("conv1").out_channels == 5
    assert pruned.get_submodule("conv2").out_channels == 5
    assert pruned.get_submodule("fc").out_features == 4              # the output layer is never touched
    record = graphmorph.history(pruned)[-1]
    assert dict(map(tuple, [(t, tuple(c)) for t, c in record["pruned"]]))["conv1"] == (1, 4, 6)


def test_prune_filters_featuremap_l2_uses_the_calibration_data():
    gm = _captured(Plain, 8)
    with torch.no_grad():   # channels 2 and 5 of conv1 output almost nothing, whatever their weights
        gm.get_submodule("conv1").weight[[2, 5]] *= 1e-4
        gm.get_submodule("conv1").bias[[2, 5]] = 0.0
        gm.get_submodule("conv1").weight[[3]] *= 50.0
    batches = [(torch.randn(4, 3, 8, 8), torch.zeros(4)) for _ in range(2)]
    pruned = transforms.prune_filters(gm, 0.25, criterion="featuremap_l2", data=batches, per_layer=True)
    chosen = dict((t, c) for t, c in graphmorph.history(pruned)[-1]["pruned"])
    assert chosen["conv1"] == [2, 5]


def test_prune_filters_globally_prunes_the_requested_share_and_respects_ignore():
    gm = _captured(ZOO["VGGish"][0], 16)
    total = sum(g.size for g in channel_dependencies(gm).groups if g.prunable)
    pruned = transforms.prune_filters(gm, 0.5, ignore=["features.0"])
    removed = sum(len(c) for _, c in graphmorph.history(pruned)[-1]["pruned"])
    assert pruned.get_submodule("features.0").out_channels == 8
    assert 0 < removed <= total // 2
    assert graphmorph.count_flops(pruned).macs < graphmorph.count_flops(gm).macs


def test_prune_filters_keeps_grouped_convolutions_even_and_replays():
    gm = _captured(ZOO["PlusEqualsResNeXt"][0], 16)
    pruned = transforms.prune_filters(gm, 0.5, per_layer=True)
    grouped = pruned.get_submodule("stages.0.0.conv2")
    assert grouped.groups == 4 and grouped.in_channels == 4 and grouped.out_channels == 4
    again = transforms.replay(_captured(ZOO["PlusEqualsResNeXt"][0], 16), graphmorph.history(pruned))
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(again.eval()(x), pruned.eval()(x), atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(groups=st.integers(1, 4), width=st.integers(2, 9), twentieths=st.integers(0, 19),
       rounding=st.sampled_from(["nearest", "up"]))
def test_per_layer_pruning_takes_the_rounded_count_from_every_group_of_a_grouped_convolution(groups, width, twentieths,
                                                                                             rounding):
    channels, share = groups * width, Fraction(twentieths, 20) * width     # exact: ratio * width
    model = nn.Sequential(nn.Conv2d(3, channels, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, groups=groups),
                          nn.ReLU(), nn.Conv2d(channels, 5, 1))
    gm = graphmorph.capture(model, torch.randn(2, 3, 6, 6))
    lost = math.floor(share + Fraction(1, 2)) if rounding == "nearest" else math.ceil(share)
    lost = min(width - 1, lost)                                            # per group, one kept
    pruned = transforms.prune_filters(gm, twentieths / 20, per_layer=True, rounding=rounding)
    for name in ("0", "2"):
        assert pruned.get_submodule(name).out_channels == groups * (width - lost)
    assert pruned.get_submodule("2").groups == groups
    assert graphmorph.history(pruned)[-1]["rounding"] == rounding


def test_an_unknown_rounding_is_refused_with_the_choices():
    gm = graphmorph.capture(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)), torch.randn(1, 3, 4, 4))
    with pytest.raises(graphmorph.RewriteError, match="rounding must be one of nearest, up"):
        transforms.prune_filters(gm, 0.3, per_layer=True, rounding="down")


def test_depthwise_pruning_removes_whole_groups():
    gm = _captured(ZOO["MobileNetV2ish"][0], 16)
    pruned = transforms.prune_channels(gm, "features.2.conv.0.0", [0, 5, 9])   # the expansion feeding a depthwise conv
    depthwise = pruned.get_submodule("features.2.conv.1")
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 29


# --------------------------------------------------------------------------- optimizer state


def test_momentum_of_surviving_channels_is_carried_through_pruning():
    gm = _captured(Plain, 8)
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9)
    gm(torch.randn(4, 3, 8, 8)).sum().backward()
    optimizer.step()
    pruned = transforms.prune_channels(gm, "conv1", [0, 3])
    rebuilt = graphmorph.rebuild_optimizer(optimizer, gm, pruned)
    keep = [1, 2, 4, 5, 6, 7]
    old = {n: optimizer.state[p]["momentum_buffer"] for n, p in gm.named_parameters()}
    new = {n: rebuilt.state[p]["momentum_buffer"] for n, p in pruned.named_parameters()}
    assert torch.equal(new["conv1.weight"], old["conv1.weight"][keep])
    assert torch.equal(new["bn1.bias"], old["bn1.bias"][keep])
    assert torch.equal(new["conv2.weight"], old["conv2.weight"][:, keep])
    assert torch.equal(new["fc.weight"], old["fc.weight"])


# --------------------------------------------------------------------------- refusals and bad input


@pytest.mark.parametrize("target, channels, message", [
    ("conv1", list(range(8)), "every channel"),
    ("conv1", [8], "no channel 8"),
    ("conv1", [], "no channels"),
    ("fc", [0], "reach the model's output"),
    ("nonexistent", [0], "no layer or node named 'nonexistent'"),
])
def test_prune_channels_refuses_with_the_cause(target, channels, message):
    with pytest.raises(graphmorph.RewriteError, match=message):
        transforms.prune_channels(_captured(Plain, 8), target, channels)


def test_uneven_grouped_convolution_pruning_is_refused_with_the_fix():
    gm = _captured(ZOO["PlusEqualsResNeXt"][0], 16)
    with pytest.raises(graphmorph.RewriteError, match="uneven.*remove as many channels from each group"):
        transforms.prune_channels(gm, "stages.0.0.conv1", [0])


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 1.0}, "ratio must be in"),
    ({"ratio": 0.5, "criterion": "l3"}, "criterion must be one of"),
    ({"ratio": 0.5, "criterion": "featuremap_l2"}, "needs calibration batches"),
])
def test_prune_filters_rejects_bad_options(kwargs, message):
    with pytest.raises(graphmorph.RewriteError, match=message):
        transforms.prune_filters(_captured(Plain, 8), **kwargs)


class _Mixer(nn.Module):
    """A user layer the registry does not know: it keeps channel c at c."""

    def forward(self, x):
        return x * 2.0


class _WithMixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.mix, self.fc = nn.Conv2d(3, 6, 3), _Mixer(), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.mix(self.conv(x)).mean((2, 3)))


def test_user_layers_are_refused_until_registered_in_the_registry_passed():
    make = lambda: graphmorph.capture(_WithMixer(), torch.randn(2, 3, 6, 6))   # noqa: E731
    tracer_leaf = graphmorph.capture(_WithMixer(), torch.randn(2, 3, 6, 6), leaf_modules=[_Mixer])
    with pytest.raises(graphmorph.RewriteError, match="_Mixer.*no channel handler.*register"):
        transforms.prune_channels(tracer_leaf, "conv", [0])
    registry = Registry.default().copy().register(_Mixer, PassThrough())
    pruned = transforms.prune_channels(tracer_leaf, "conv", [0, 1], registry=registry)
    assert pruned.get_submodule("fc").in_features == 4
    assert Registry.default().channel_op(tracer_leaf, next(n for n in tracer_leaf.graph.nodes if n.target == "mix")) \
        is None, "registering on a copy left the default registry as it was"
    filtered = transforms.prune_filters(tracer_leaf, 0.5, registry=registry)
    assert filtered.get_submodule("conv").out_channels == 3
    replayed = transforms.replay(graphmorph.capture(_WithMixer(), torch.randn(2, 3, 6, 6), leaf_modules=[_Mixer]),
                                 graphmorph.history(pruned), registry=registry)
    assert replayed.get_submodule("fc").in_features == 4
    assert transforms.prune_channels(make(), "conv", [0]).get_submodule("conv").out_channels == 5
