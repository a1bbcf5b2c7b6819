"""A new op is taught in one place: one `register` call per op (a module class and a function no
graphmorph table lists) and every rewrite and `count_flops` honour it, where the default registry
refuses, or counts it as an unknown op it must measure."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphmorph
import transforms
from graphmorph import Registry
from graphmorph.graph.channel_ops import PassThrough
from graphmorph.graph.channels import channel_dependencies
from graphmorph.models import build
from graphmorph.testing import assert_preserves_function, output_shapes, randomize_state


class Shrink(nn.Module):
    """A user's activation graphmorph has never heard of (tanhshrink; captured as a leaf)."""

    def forward(self, x):
        return x - torch.tanh(x)


def soft_sign(x):
    """A user's function graphmorph has never heard of (kept whole by fx.wrap)."""
    return x / (1 + x.abs())


torch.fx.wrap("soft_sign")

TAUGHT = (Registry.default().copy()
          .register(Shrink, PassThrough(), facts={"activation", "zero_preserving"})
          .register(soft_sign, PassThrough(), facts={"activation", "zero_preserving"}))


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1, self.bn1, self.act = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), Shrink()
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)

    def forward(self, x):
        return x + soft_sign(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class ResidualNet(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.stem, self.bn, self.act = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), Shrink()
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.blocks(self.act(self.bn(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseLayer(nn.Module):
    def __init__(self, width, growth=2):
        super().__init__()
        self.norm, self.act, self.conv = nn.BatchNorm2d(width), Shrink(), nn.Conv2d(width, growth, 3, padding=1)

    def forward(self, x):
        return torch.cat([x, self.conv(self.act(self.norm(x)))], 1)


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(DenseLayer(4), DenseLayer(6))
        self.norm, self.act, self.transition = nn.BatchNorm2d(8), Shrink(), nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.transition(soft_sign(self.act(self.norm(self.block(self.stem(x))))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SkipNet(nn.Module):
    """A concatenation with a skip input, read through both user ops."""

    def __init__(self):
        super().__init__()
        self.stem, self.branch, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1), Shrink()
        self.reader, self.head = nn.Conv2d(6, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        x = self.reader(soft_sign(self.act(torch.cat([x, self.branch(x)], 1))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _captured(model, size=6):
    x = torch.randn(2, 3, size, size)
    return graphmorph.capture(randomize_state(model), x, leaf_modules=[Shrink]), x


def test_channel_rewrites_follow_channels_through_the_taught_ops_only():
    gm, x = _captured(ResidualNet())
    refused = channel_dependencies(gm).group_of("stem").refused
    assert refused and "no channel handler" in refused
    with pytest.raises(graphmorph.RewriteError, match="no channel handler"):
        transforms.prune_channels(gm, "stem", [1])
    with pytest.raises(graphmorph.RewriteError, match="no channel handler"):
        transforms.widen(gm, "stem", 2)
    pruned = transforms.prune_channels(gm, "stem", [1], registry=TAUGHT)     # the residual stream, through both ops
    assert [pruned.get_submodule(f"blocks.{k}.conv2").out_channels for k in (0, 1)] == [3, 3]
    record = graphmorph.history(transforms.prune_filters(gm, 0.3, registry=TAUGHT))[-1]
    assert record["pruned"] and not record["skipped"]
    widened = transforms.widen(gm, "stem", 2, registry=TAUGHT)
    assert widened.get_submodule("head").in_features == 6
    assert_preserves_function(gm, widened, x, ("eval", "train"))


def test_growth_finds_the_branch_end_through_a_taught_function():
    gm, x = _captured(ResidualNet())
    with pytest.raises(graphmorph.RewriteError, match="last affine layer"):
        transforms.grow(gm, stage=0, init="zero")
    grown = transforms.grow(gm, stage=0, init="zero", registry=TAUGHT)
    assert len(graphmorph.find_stages(grown, TAUGHT)[0].blocks) == 3
    assert_preserves_function(gm, grown, x, ("eval", "train"))


def test_dense_growth_reads_the_block_through_taught_ops():
    gm, x = _captured(DenseNet())
    with pytest.raises(graphmorph.RewriteError, match="act .* has no channel handler"):
        transforms.grow_dense(gm, "block")
    grown = transforms.grow_dense(gm, "block", registry=TAUGHT)
    assert grown.get_submodule("transition").in_channels == 10
    assert_preserves_function(gm, grown, x, ("eval", "train"))


def test_skip_and_branch_pruning_follow_the_taught_ops():
    gm, x = _captured(SkipNet())
    edge = [(next(n.name for n in gm.graph.nodes if n.target is torch.cat), "stem")]
    with pytest.raises(graphmorph.RewriteError, match="cannot change alone"):
        transforms.prune_skips(gm, edge)
    pruned = transforms.prune_skips(gm, edge, registry=TAUGHT)
    assert pruned.get_submodule("reader").in_channels == 2
    envelope = build("EnvelopeNet-2/2/2", num_classes=3, in_channels=3)
    for parent in list(envelope.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, Shrink())
    net, _ = _captured(envelope, 8)
    cell = graphmorph.models.envelope_structure(net).cells[0]
    branch = transforms.prune_branches(net, cell.name, [0], registry=TAUGHT)
    skip = graphmorph.models.envelope_structure(net).skips[0]
    assert graphmorph.count_flops(branch, registry=TAUGHT).macs < graphmorph.count_flops(net, registry=TAUGHT).macs
    assert transforms.prune_skips(net, [(skip.reduction, skip.source)], registry=TAUGHT) is not None


def test_count_flops_counts_taught_activations_instead_of_measuring_them():
    gm, x = _captured(ResidualNet())
    taught, unknown = graphmorph.count_flops(gm, registry=TAUGHT), graphmorph.count_flops(gm)
    shapes = output_shapes(gm, x)
    custom = [n.name for n in gm.graph.nodes if n.target is soft_sign
              or n.op == "call_module" and isinstance(gm.get_submodule(n.target), Shrink)]
    assert len(custom) == 5
    assert taught.macs == unknown.macs
    assert taught.total.elementwise - unknown.total.elementwise == sum(
        torch.Size(shapes[name]).numel() for name in custom)
