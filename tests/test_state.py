"""Every rewrite's result carries its source's state: each parameter and buffer it did not edit is
bit for bit the source's (sliced where channels were cut), BatchNorm statistics and counters
included, whether the source was in train or eval mode; and pruning equals masking for the
*returned* model, with its own buffers. The oracle is `assert_state_carried`, which matches values
instead of trusting the rewrite's bookkeeping."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import graphmorph
import transforms
from graphmorph.graph.channel_ops import output_weight
from graphmorph.graph.channels import channel_dependencies
from graphmorph.graph.history import history
from graphmorph.models import envelope_arch
from graphmorph.testing import (CNNSpec, assert_prune_equals_mask, assert_state_carried, cnns, envelope_nets,
                                merge_edges, randomize_state)
from tests.zoo import ProjectionResNet

PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def captured(spec, seed: int, train: bool, dtype=torch.float32):
    """The spec's net with distinct random state everywhere, captured, in the drawn mode."""
    model = randomize_state(spec.build().to(dtype), seed)
    gm = graphmorph.capture(model, spec.example_input().to(dtype))
    return gm.train(train)


def snapshot(gm):
    return {name: t.clone() for name, t in gm.state_dict().items()}


def assert_source_untouched(gm, state):
    for name, tensor in gm.state_dict().items():
        assert torch.equal(tensor, state[name]), f"the rewrite changed its source's {name}"


def assert_replays_to_the_same_state(source, result):
    replayed = transforms.replay(source, history(result))
    expected, got = result.state_dict(), replayed.state_dict()
    assert list(got) == list(expected)
    for name, tensor in got.items():
        assert torch.equal(tensor, expected[name]), f"replay gave another {name}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("train", [False, True])
def test_pruning_a_float64_resnet_keeps_every_batchnorm_statistic(dtype, train):
    """The reported case: every BN's running statistics drifted after a float64 prune_channels."""
    model = randomize_state(ProjectionResNet().to(dtype), 1)
    x = torch.randn(2, 3, 16, 16, dtype=dtype)
    gm = graphmorph.capture(model, x).train(train)
    state = snapshot(gm)
    pruned = transforms.prune_channels(gm, "layer1.0.conv1", [0, 4])
    assert_source_untouched(gm, state)
    kept = assert_state_carried(gm, pruned, resized=True)
    assert kept["layer1.0.bn1.running_mean"] == [[1, 2, 3, 5, 6, 7]]
    assert torch.equal(pruned.get_submodule("layer2.1.bn2").num_batches_tracked, state["layer2.1.bn2.num_batches_tracked"])

    def zero_channels(masked):  # conv1's channels 0 and 4 leave BN1 as its shift alone: zero both
        masked.get_submodule("layer1.0.bn1").weight[[0, 4]] = 0
        masked.get_submodule("layer1.0.bn1").bias[[0, 4]] = 0

    assert_prune_equals_mask(gm, pruned, zero_channels, x, modes=("eval",), atol=1e-10)
    assert pruned.training == train


@PROPERTY
@given(spec=cnns(), data=st.data())
def test_growth_carries_every_old_tensor(spec, data):
    gm = captured(spec, data.draw(st.integers(0, 99), label="seed"), data.draw(st.booleans(), label="train"))
    state = snapshot(gm)
    stage = data.draw(st.integers(0, len(graphmorph.find_stages(gm)) - 1), label="stage")
    init = data.draw(st.sampled_from(("zero", "gau", "uni", "identity")), label="init")
    try:
        grown = transforms.grow(gm, stage=stage, init=init)
    except graphmorph.RewriteError:
        return  # which blocks can grow is tested in test_grow
    assert_source_untouched(gm, state)
    record = history(grown)[-1]
    if record["rewrite"] == "grow_dense":      # a dense block grows a layer; its readers take more inputs
        assert_state_carried(gm, grown, added=(record["new_layer"],), resized=True)
    else:
        assert_state_carried(gm, grown, added=(record["new_block"],))
    assert grown.training == gm.training
    assert_replays_to_the_same_state(gm, grown)


@PROPERTY
@given(spec=cnns(), data=st.data())
def test_channel_pruning_carries_every_kept_channel(spec, data):
    gm = captured(spec, data.draw(st.integers(0, 99), label="seed"), data.draw(st.booleans(), label="train"),
                  data.draw(st.sampled_from((torch.float32, torch.float64)), label="dtype"))
    state = snapshot(gm)
    if data.draw(st.booleans(), label="by ratio"):
        pruned = transforms.prune_filters(gm, 0.5)
    else:
        deps = channel_dependencies(gm)
        producers = [g.producers[0] for g in deps.groups if g.prunable and g.size > 1]
        if not producers:
            return
        target = data.draw(st.sampled_from(producers), label="layer")
        weight = output_weight(gm, deps.node(target))   # output channels first, conv or linear
        size = weight.shape[0] if weight is not None else deps.group_of(target).size
        channels = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=max(1, size // 2), unique=True))
        try:
            pruned = transforms.prune_channels(gm, target, channels)
        except graphmorph.RewriteError:
            return  # refusals are tested in test_channel_pruning
    assert_source_untouched(gm, state)
    assert_state_carried(gm, pruned, resized=True)
    assert_replays_to_the_same_state(gm, pruned)


@PROPERTY
@given(spec=cnns(kinds=("residual", "preact", "bottleneck", "dense", "se", "inverted", "plain")), data=st.data())
def test_block_and_skip_removal_carry_every_other_tensor(spec, data):
    gm = captured(spec, data.draw(st.integers(0, 99), label="seed"), data.draw(st.booleans(), label="train"))
    state = snapshot(gm)
    residual = [b.name for b in graphmorph.find_blocks(gm) if b.kind == "residual"]
    if residual and data.draw(st.booleans(), label="remove a block"):
        block = data.draw(st.sampled_from(residual), label="block")
        try:
            result = transforms.remove_block(gm, block)
        except graphmorph.RewriteError:
            return
        assert_state_carried(gm, result, removed=(block,))
    else:
        edges = merge_edges(gm)
        if not edges:
            return
        merge, source = data.draw(st.sampled_from(edges), label="edge")
        try:
            result = transforms.prune_skip_edges(gm, [(merge, source)])
        except graphmorph.RewriteError:
            return
        # only modules the dropped input was computed with may go
        feeding = {str(n.target) for n in _ancestors(gm, source) if n.op == "call_module"}
        assert_state_carried(gm, result, removed=tuple(feeding), resized=True)
    assert_source_untouched(gm, state)
    assert_replays_to_the_same_state(gm, result)


def _ancestors(gm, name):
    node = next(n for n in gm.graph.nodes if n.name == name)
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=envelope_nets(min_branches=2, max_size=8), data=st.data())
def test_envelope_rewrites_carry_every_other_tensor(spec, data):
    gm = captured(spec, data.draw(st.integers(0, 99), label="seed"), data.draw(st.booleans(), label="train"))
    state = snapshot(gm)
    cells = [c for s in envelope_arch(gm)["stages"] for c in s["cells"]]
    cell = data.draw(st.sampled_from(cells), label="cell")
    branch = data.draw(st.sampled_from(cell["branches"]), label="branch")
    pruned = transforms.prune_branches(gm, cell["name"], [branch])
    assert_state_carried(gm, pruned, removed=(f"{cell['name']}.{branch}",), resized=True)

    skips = [tuple(n.target.split(".w_")) for n in pruned.graph.nodes if n.op == "get_attr" and ".w_" in str(n.target)]
    if skips:
        skip = data.draw(st.sampled_from(skips), label="skip")
        unskipped = transforms.prune_skips(pruned, [skip])
        assert_state_carried(pruned, unskipped, removed=(f"{skip[0]}.w_{skip[1]}",), resized=True)
        pruned = unskipped

    stage = data.draw(st.integers(0, len(envelope_arch(pruned)["stages"]) - 1), label="stage")
    n = len(envelope_arch(pruned)["stages"][stage]["cells"])
    grown = transforms.add_cell(pruned, stage)  # a new cell and a new output reduction; the rest as it was
    assert_state_carried(pruned, grown, added=(f"stage{stage}.cell{n}", f"stage{stage}.reduce{n + 1}"))
    assert_source_untouched(gm, state)
    assert_replays_to_the_same_state(gm, grown)


def test_the_oracle_catches_changed_statistics_and_wrong_slices():
    spec = CNNSpec(pieces=(("residual", 4, 1),))
    gm = captured(spec, 0, train=False)
    drifted = transforms.prune_filters(gm, 0.0)
    name = next(n for n in drifted.state_dict() if n.endswith("running_mean"))
    drifted.state_dict()[name][0] += 1e-7
    with pytest.raises(AssertionError, match="running_mean changed"):
        assert_state_carried(gm, drifted)
    with pytest.raises(AssertionError, match="added state it did not declare"):
        assert_state_carried(gm, transforms.grow(gm, stage=0, init="zero"))
    conv = next(n for n, m in gm.named_modules() if isinstance(m, torch.nn.Conv2d))
    pruned = transforms.prune_channels(gm, conv, [1])
    reordered = pruned.get_submodule(conv).weight
    with torch.no_grad():
        reordered.copy_(reordered.flip(0))
    with pytest.raises(AssertionError, match="not an ordered selection"):
        assert_state_carried(gm, pruned, resized=True)
