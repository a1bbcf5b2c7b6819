"""Width growth (`transforms.widen`), the dual of channel pruning: on generated CNNs, DenseNets,
EnvelopeNets and transformer layers the returned graph computes the old function (float64), its
target has n more channels, old state is carried, a copy is a copy, new channels train, and the
history replays to the same weights; refusals name their cause."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import graphmorph
import transforms
from graphmorph.graph.channels import channel_dependencies
from graphmorph.run.optim import rebuild_optimizer
from graphmorph.testing import (assert_preserves_function, assert_widened, cnns, envelope_nets, output_shapes,
                                randomize_state, transformer_nets)
from graphmorph.testing.grammar import TransformerSpec
from zoo import ZOO

ATOL = 1e-10
SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _captured(spec):
    """The spec's net in float64 (so "split"'s shares of 1/3 are exact to the tolerance), random state."""
    return graphmorph.capture(randomize_state(spec.build()).double(), spec.example_input().double())


def _inputs(spec, batch, seed):
    return spec.example_input(batch, seed).double()


def _widenable(gm) -> list:
    deps = channel_dependencies(gm)
    return [(g.producers[0], len(deps.partition(g))) for g in deps.groups if g.prunable]


def _check_widening(gm, inputs, target, runs, init, n_per_run, seed, slots_per_channel=1):
    """Widen `target` by n_per_run per run of its group; the target's output grows by n times the
    slots each new channel has there (one per head where heads split the features)."""
    n = n_per_run * runs
    try:
        widened = transforms.widen(gm, target, n, init, seed=seed)
    except graphmorph.RewriteError as err:   # only the refusals the module names may happen
        assert any(words in str(err) for words in ("normalises over the channels", "attention scores",
                                                   "averages over the channels")), err
        return None
    stochastic = any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in gm.modules())
    modes = ("eval",) if stochastic else ("eval", "train")    # dropout draws other masks over more channels
    assert_widened(gm, widened, target, n * slots_per_channel, inputs, modes, ATOL, copies_only=init == "zero")
    replayed = transforms.replay(gm, graphmorph.history(widened)[-1:])
    for (name, a), (_, b) in zip(widened.state_dict().items(), replayed.state_dict().items()):
        assert torch.equal(a, b), f"replay differs at {name}"
    return widened


@SETTINGS
@given(spec=cnns(max_pieces=3), data=st.data(), init=st.sampled_from(transforms.WIDEN_INITS))
def test_widen_preserves_generated_cnns(spec, data, init):
    gm = _captured(spec)
    target, runs = data.draw(st.sampled_from(_widenable(gm)))
    _check_widening(gm, data.draw(st.builds(_inputs, st.just(spec), st.integers(1, 3), st.integers(0, 99))),
                    target, runs, init, data.draw(st.integers(1, 3)), data.draw(st.integers(0, 99)))


@SETTINGS
@given(spec=cnns(kinds=("dense", "plain", "residual")), data=st.data())
def test_widen_preserves_dense_concatenations(spec, data):
    gm = _captured(spec)
    for target, runs in _widenable(gm):
        _check_widening(gm, _inputs(spec, 2, 1), target, runs, data.draw(st.sampled_from(("zero", "split"))),
                        data.draw(st.integers(1, 2)), 0)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=envelope_nets(max_stages=1, max_cells=1), data=st.data())
def test_widen_preserves_envelope_nets(spec, data):
    gm = _captured(spec)
    target, runs = data.draw(st.sampled_from(_widenable(gm)))
    _check_widening(gm, _inputs(spec, 2, 3), target, runs, data.draw(st.sampled_from(("zero", "split"))),
                    data.draw(st.integers(1, 2)), data.draw(st.integers(0, 99)))


@SETTINGS
@given(spec=transformer_nets(), data=st.data())
def test_widen_preserves_transformer_mlps_and_value_heads(spec, data):
    gm = _captured(spec)
    init, n = data.draw(st.sampled_from(("zero", "split"))), data.draw(st.integers(1, 3))
    for layer in range(spec.layers):
        for target in (f"layers.{layer}.mlp.up_proj", f"layers.{layer}.self_attn.v_proj"):
            value = target.endswith("v_proj")
            per_head = spec.heads if value else 1                            # one feature more in every head
            widened = _check_widening(gm, _inputs(spec, 2, 5), target, 1, init, n, layer, per_head)
            assert widened is not None, f"{target} must widen"
            attention = widened.get_submodule(f"layers.{layer}.self_attn.o_proj")
            assert attention.in_features == spec.heads * spec.head_dim + (n * spec.heads if value else 0)


def test_split_copies_a_channel_and_zero_makes_new_ones_that_train():
    torch.manual_seed(0)
    gm = graphmorph.capture(randomize_state(ZOO["ProjectionResNet"][0]()), torch.randn(2, 3, 16, 16))
    x = torch.randn(3, 3, 16, 16)
    split = transforms.widen(gm, "layer1.0.conv2", 2, "split", seed=4)
    features = _featuremap(split, "layer1.0.conv2", x)
    old = gm.get_submodule("layer1.0.conv2").out_channels
    copied = [c for c in range(old + 2) if any(torch.equal(features[:, c], features[:, d]) for d in range(c))]
    assert len(copied) == 2                  # two featuremaps repeat an earlier one bit for bit
    zero = transforms.widen(gm, "layer1.0.conv2", 2, "zero", seed=4)
    assert_preserves_function(gm, zero, x, ("eval", "train"), ATOL)
    zero.train()
    zero(x).square().sum().backward()
    reader = zero.get_submodule("layer2.0.conv1").weight
    new = [c for c in range(old + 2) if torch.all(reader.detach()[:, c] == 0)]
    assert len(new) == 2
    assert all(reader.grad[:, c].abs().sum() > 0 for c in new)   # the zero columns get gradient: new channels learn


def _featuremap(gm, target, x):
    out = {}
    hook = gm.get_submodule(target).register_forward_hook(lambda m, i, o: out.setdefault("y", o.detach()))
    gm.eval()(x)
    hook.remove()
    return out["y"]


def test_optimizer_state_follows_a_widening_with_fresh_state_for_the_new_channels():
    torch.manual_seed(0)
    gm = graphmorph.capture(ZOO["ProjectionResNet"][0](), torch.randn(2, 3, 16, 16))
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.1, momentum=0.9)
    gm(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    widened = transforms.widen(gm, "layer1.0.conv2", 3)
    rebuilt = rebuild_optimizer(optimizer, gm, widened)
    old_momentum = optimizer.state[gm.get_submodule("layer2.0.conv1").weight]["momentum_buffer"]
    new_momentum = rebuilt.state[widened.get_submodule("layer2.0.conv1").weight]["momentum_buffer"]
    fresh = [c for c in range(new_momentum.shape[1]) if torch.all(new_momentum[:, c] == 0)]
    kept = [c for c in range(new_momentum.shape[1]) if c not in fresh]
    assert len(fresh) == 3 and torch.equal(new_momentum[:, kept], old_momentum)


def test_a_widened_net_exports_and_counts_the_new_channels(tmp_path):
    torch.manual_seed(0)
    gm = graphmorph.capture(ZOO["ProjectionResNet"][0](), torch.randn(2, 3, 16, 16))
    widened = transforms.widen(gm, "layer1.0.conv1", 4)
    conv1, conv2 = widened.get_submodule("layer1.0.conv1"), widened.get_submodule("layer1.0.conv2")
    batch, _, height, width = output_shapes(gm, torch.randn(2, 3, 16, 16))["layer1.0.conv1"]
    per_pixel = 4 * conv1.in_channels * 9 + conv2.out_channels * 4 * 9   # conv1's new rows, conv2's new columns
    assert graphmorph.count_flops(widened).macs - graphmorph.count_flops(gm).macs == batch * height * width * per_pixel
    report = graphmorph.export_onnx(widened, tmp_path / "wide.onnx", torch.randn(2, 3, 16, 16))
    assert report.path.exists() and report.max_abs_diff <= report.atol + report.rtol * report.output_scale


@pytest.mark.parametrize("spec, target, n, words", [
    (TransformerSpec(), "embed", 1, "normalises over the channels"),                # the residual stream
    (TransformerSpec(), "layers.0.self_attn.q_proj", 1, "attention scores"),
    (TransformerSpec(), "head", 1, "reach the model's output"),
    (TransformerSpec(), "layers.0.mlp.up_proj", 0, "n >= 1"),
])
def test_widen_refuses_with_the_cause(spec, target, n, words):
    gm = graphmorph.capture(spec.build(), spec.example_input())
    with pytest.raises(graphmorph.RewriteError, match=words):
        transforms.widen(gm, target, n)


def test_widen_refuses_an_unknown_init_and_uneven_groups():
    gm = graphmorph.capture(ZOO["PlusEqualsResNeXt"][0](), torch.randn(2, 3, 16, 16))
    with pytest.raises(graphmorph.RewriteError, match="one of zero, split"):
        transforms.widen(gm, "stages.0.0.conv1", 4, "copy")
    with pytest.raises(graphmorph.RewriteError, match="widen by a multiple of 4"):
        transforms.widen(gm, "stages.0.0.conv1", 2)
    before = copy.deepcopy(gm.state_dict())
    widened = transforms.widen(gm, "stages.0.0.conv1", 8)
    assert widened.get_submodule("stages.0.0.conv2").groups == 4
    assert all(torch.equal(before[k], v) for k, v in gm.state_dict().items())    # the source is untouched
