"""Capture through torch.export: the lifted graph is one the whole engine reads as it reads a traced
one. Every generated net is captured both ways and the two compared, each through the engine's
own answers (stages, channel groups, FLOPs, a pruning and a growth) and through its output."""
import pytest
import torch
from hypothesis import given, settings
from torch import fx, nn

import graphmorph
import transforms
from graphmorph.graph.capture import example_inputs
from graphmorph.testing import cnns, randomize_state, seed_nets, transformer_nets


def _engine_view(gm: fx.GraphModule) -> dict:
    """What the engine answers about a captured graph, in module names (node names may differ).
    Modules without state are left out: an nn.Identity computes nothing, so export records no call.
    A functional layer (F.conv2d) is named by its node, which each front-end names in its own way."""
    names = {name for name, _ in gm.named_modules()}

    def modules_only(producer: str) -> str:
        return producer if producer in names else "<node>"

    return {
        "modules": sorted(str(n.target) for n in gm.graph.nodes
                          if n.op == "call_module" and next(iter(gm.get_submodule(n.target).state_dict()), None)),
        "stages": [(s.blocks, s.out_shape) for s in graphmorph.find_stages(gm)],
        "groups": [(tuple(map(modules_only, g.producers)), g.size, g.prunable) for g in graphmorph.channel_groups(gm)],
        "flops": graphmorph.count_flops(gm).total,
    }


def _assert_same_engine(model: nn.Module, x: torch.Tensor) -> tuple[fx.GraphModule, fx.GraphModule]:
    model = randomize_state(model).eval()
    traced = graphmorph.capture(model, x, method="fx")
    exported = graphmorph.capture(model, x, method="export")
    assert torch.equal(exported(x), model(x))
    assert _engine_view(exported) == _engine_view(traced)
    return traced, exported


@settings(max_examples=6)
@given(spec=cnns(max_pieces=3))
def test_an_exported_cnn_is_what_a_traced_one_is(spec):
    x = spec.example_input(2)
    traced, exported = _assert_same_engine(spec.build(), x)
    if any(g.prunable for g in graphmorph.channel_groups(traced)):
        pruned = [transforms.prune_filters(gm, 0.5) for gm in (traced, exported)]
        assert graphmorph.count_flops(pruned[1]).total == graphmorph.count_flops(pruned[0]).total
        assert torch.equal(pruned[1].eval()(x), pruned[0].eval()(x))


@settings(max_examples=4)
@given(spec=seed_nets(max_depth=2, max_size=16))
def test_an_exported_seed_net_grows_as_a_traced_one(spec):
    x = spec.example_input(2)
    traced, exported = _assert_same_engine(spec.build(), x)
    grown = [transforms.grow(gm, 0) for gm in (traced, exported)]
    assert [s.blocks for s in graphmorph.find_stages(grown[1])] == [s.blocks for s in graphmorph.find_stages(grown[0])]
    assert graphmorph.count_flops(grown[1]).total == graphmorph.count_flops(grown[0]).total


@settings(max_examples=4)
@given(spec=transformer_nets())
def test_an_exported_transformer_is_what_a_traced_one_is(spec):
    _assert_same_engine(spec.build(), spec.example_input(2))


class _LoopOverShape(nn.Module):
    """Python control flow on a shape: fx cannot trace it, torch.export can."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in range(3))
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        for conv in self.convs[: x.shape[-1] // 4]:
            x = torch.relu(conv(x))
        return self.head(x.mean((2, 3)))


def test_auto_exports_what_fx_cannot_trace_and_frees_the_batch():
    model = _LoopOverShape().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(graphmorph.CaptureError):
        graphmorph.capture(model, x, method="fx")
    gm = graphmorph.capture(model, x)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["convs.0", "convs.1", "head"]
    assert [tuple(t.shape) for t in example_inputs(gm)] == [(1, 3, 8, 8)]
    batch = torch.randn(5, 3, 8, 8)   # captured from a batch of one, run on five
    assert torch.equal(gm(batch), model(batch))
    assert not any(isinstance(a, torch.device) for n in gm.graph.nodes for a in (*n.args, *n.kwargs.values()))


class _NeitherCaptures(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_a_model_neither_front_end_captures_names_both_causes():
    with pytest.raises(graphmorph.CaptureError) as info:
        graphmorph.capture(_NeitherCaptures(), torch.randn(2, 3))
    message = str(info.value)
    assert "fx:" in message and "torch.export" in message
    assert "test_export_capture.py" in message   # the user's line


def test_bad_method_and_keyword_inputs_are_refused():
    with pytest.raises(graphmorph.CaptureError, match="method must be"):
        graphmorph.capture(nn.Identity(), torch.zeros(2), method="trace")
    with pytest.raises(graphmorph.CaptureError, match="example_kwargs must map argument names to tensors"):
        graphmorph.capture(nn.Identity(), torch.zeros(2), example_kwargs={"flag": True})
