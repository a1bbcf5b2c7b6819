"""Forms met in third-party models (torchvision, timm, pytorchcv) that once made a rewrite refuse
falsely or crash: leaf modules whose children hold the parameters, a 1-D layer-scale parameter
viewed as (C, 1, 1), and stochastic depth (torchvision's function, timm's DropPath)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphmorph
import transforms
from graphmorph.graph.channel_ops import PassThrough
from graphmorph.graph.channels import channel_dependencies
from graphmorph.graph.registry import Registry
from graphmorph.testing import assert_state_carried, randomize_state
from tests.third_party_forms import DropPath, MBConv, StochasticDepthNet, TimmBlock
from tests.zoo import TvBlock


class ConvThenAttention(nn.Module):
    """A ResNet stage feeding tokens to nn.MultiheadAttention, which fx keeps as one call (its
    `out_proj` child is used inside that call, never by a node of its own)."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.layer1 = nn.Sequential(TvBlock(c, c), TvBlock(c, c))
        self.attention = nn.MultiheadAttention(c, 2, batch_first=True)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        tokens = self.layer1(self.stem(x)).flatten(2).transpose(1, 2)
        return self.head(self.attention(tokens, tokens, tokens, need_weights=False)[0].mean(1))


class Gate(nn.Module):
    """A user block passed as leaf_modules, whose child convolution it calls itself."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(x))


class GatedNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.layer1 = nn.Sequential(TvBlock(c, c))
        self.gate = Gate(c)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3))

    def forward(self, x):
        return self.head(self.gate(self.layer1(self.stem(x))))


def test_children_of_a_leaf_module_are_in_use():
    """Before: grow and prune_filters refused with 'left submodules no node uses: attention.out_proj'."""
    x = torch.randn(2, 3, 6, 6)
    for model, leaves in ((ConvThenAttention(), ()), (GatedNet(), (Gate,))):
        gm = graphmorph.capture(randomize_state(model), x, leaf_modules=leaves).eval()
        grown = transforms.grow(gm, stage=0, init="zero")
        assert_state_carried(gm, grown, added=(graphmorph.history(grown)[-1]["new_block"],))
        pruned = transforms.prune_filters(gm, 0.3)
        assert graphmorph.count_flops(pruned).macs < graphmorph.count_flops(gm).macs
        assert_state_carried(gm, pruned, resized=True)


class LayerScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((c,), 1e-5))

    def forward(self, x):
        return x * self.gamma.view(-1, 1, 1)      # timm PoolFormer / ConvNeXt style


class PoolFormerish(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.mixer = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU(), nn.Conv2d(c, c, 1))
        self.scale = LayerScale(c)
        self.narrow = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.scale(self.mixer(x))
        return self.head(x + self.narrow(x))


def test_a_view_of_a_layer_scale_parameter_is_sliced_with_the_channels():
    """Refused before ('view of shape (8, 1, 1)'); now the parameter behind the view is sliced and
    the pruned net computes the masked one (verified inside prune_filters, float64)."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    gm = graphmorph.capture(randomize_state(PoolFormerish().double(), 0), x)
    refused = {g.producers[0]: g.refused for g in channel_dependencies(gm).groups}
    assert refused["stem"] is None and refused["narrow.0"] is None
    pruned = transforms.prune_filters(gm, 0.5, per_layer=True)
    assert pruned.get_submodule("narrow.0").out_channels == 8 and pruned.get_submodule("mixer.0").out_channels == 4
    assert pruned.get_submodule("stem").out_channels == 4 and pruned.get_submodule("scale").gamma.shape == (4,)
    kept = pruned.meta["graphmorph.kept_indices"]["scale.gamma"]["steps"][0]["index"]
    assert torch.equal(pruned.get_submodule("scale").gamma, gm.get_submodule("scale").gamma[kept])
    assert_state_carried(gm, pruned, resized=True)


@pytest.mark.parametrize("block", [MBConv, TimmBlock], ids=["torchvision stochastic_depth", "timm DropPath"])
def test_stochastic_depth_is_known_by_name_to_pruning_and_growth(block):
    """Known by qualified name without importing torchvision or timm: channels pass through it,
    and a residual branch ending in it still ends in its last BatchNorm, so ZeroInit applies."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = graphmorph.capture(randomize_state(StochasticDepthNet(block=block).double(), 0), x,
                            leaf_modules=[DropPath]).eval()
    named = [n for n in gm.graph.nodes if Registry.default().has(gm, n, "stochastic")]   # by qualified name
    assert len(named) == 2 and all(Registry.default().channel_op(gm, n) is not None for n in named)
    assert not [g.refused for g in channel_dependencies(gm).groups if g.refused and "no channel handler" in g.refused]
    pruned = transforms.prune_filters(gm, 0.4)
    record = graphmorph.history(pruned)[-1]
    assert record["pruned"] and not [r for _, r in record["skipped"] if "handler" in r]
    assert graphmorph.count_flops(pruned).macs < graphmorph.count_flops(gm).macs
    assert_state_carried(gm, pruned, resized=True)
    grown = transforms.grow(gm, stage=0, init="zero")   # verified: same function in eval and train mode
    assert [s.blocks for s in graphmorph.find_stages(grown)][0][-1] == "layer1.2"


class WeightReadingBlock(nn.Module):
    """EdgeNeXt's positional encoding reads its projection's weight (for its dtype) besides calling it."""

    def __init__(self, c=8):
        super().__init__()
        self.proj = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn(self.proj(x.to(self.proj.weight.dtype)))


def test_a_weight_read_from_a_copied_module_is_copied_once_with_it():
    """Before: the weight was copied twice, as a parameter and inside its module, so the verified
    parameter count was off by the weight (EdgeNeXt: 34804 expected, 31732 added)."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), WeightReadingBlock(), WeightReadingBlock(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    gm = graphmorph.capture(randomize_state(net.double(), 0), x).eval()
    grown = transforms.grow(gm, stage=0, init="zero")
    new_block = graphmorph.history(grown)[-1]["new_block"]
    assert_state_carried(gm, grown, added=(new_block,))
    template_size = sum(p.numel() for p in gm.get_submodule("2").parameters())
    assert sum(p.numel() for p in grown.parameters()) == sum(p.numel() for p in gm.parameters()) + template_size
    read = [n.target for n in grown.graph.nodes if n.op == "get_attr" and n.target.startswith(new_block)]
    assert read and all(grown.get_parameter(t) is grown.get_submodule(t.rpartition(".")[0]).weight for t in read)


class Mixer(nn.Module):
    """A leaf module of a package the project does not import."""

    def forward(self, x):
        return x * 2


Mixer.__module__, Mixer.__qualname__ = "my_package.ops", "Mixer"


def test_a_package_op_is_registered_by_its_qualified_name():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), Mixer(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    gm = graphmorph.capture(net, torch.randn(2, 3, 6, 6), leaf_modules=[Mixer])
    mixer = next(n for n in gm.graph.nodes if n.target == "1")
    assert Registry.default().channel_op(gm, mixer) is None
    registry = Registry.default().copy().register("my_package.ops.Mixer", PassThrough())
    assert isinstance(registry.channel_op(gm, mixer), PassThrough)
    assert registry.channel_op(gm, next(n for n in gm.graph.nodes if n.target == "0")) is not None
    assert transforms.prune_channels(gm, "0", [0], registry=registry).get_submodule("4").in_features == 3
