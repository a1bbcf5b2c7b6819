"""Forms met in third-party models (torchvision, timm, pytorchcv) that once made a rewrite refuse
falsely or crash: leaf modules whose children hold the parameters, and a 1-D layer-scale
parameter viewed as (C, 1, 1)."""
from __future__ import annotations

import torch
from torch import nn

import graphmorph
import transforms
from graphmorph.graph.channels import channel_dependencies
from graphmorph.testing import assert_state_carried, randomize_state
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


def test_a_view_of_a_layer_scale_parameter_is_refused_with_a_reason_not_an_index_error():
    gm = graphmorph.capture(PoolFormerish(), torch.randn(2, 3, 6, 6))
    deps = channel_dependencies(gm)                          # raised IndexError in Reshape.relate before
    refused = {g.producers[0]: g.refused for g in deps.groups}
    assert "view of shape (8, 1, 1)" in refused["stem"]          # layer scale: a refusal with its reason
    assert refused["narrow.0"] is None                       # the rest of the net still prunes
    pruned = transforms.prune_filters(gm, 0.5, per_layer=True)
    assert pruned.get_submodule("narrow.0").out_channels == 8 and pruned.get_submodule("mixer.0").out_channels == 4
    assert pruned.get_submodule("stem").out_channels == 8
