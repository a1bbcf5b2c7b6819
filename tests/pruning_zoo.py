"""Architectures for channel pruning beyond tests/zoo.py: the styles whose channels are hardest to
follow (a channel shuffle that must be refused, split/concat, a learned per-channel scale, a
functional BatchNorm, a pixel shuffle). Each entry is (factory, input size)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Plain(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> mean -> fc: conv1's channels are one group alone."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


def _conv_bn(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


# ShuffleNet-style: grouped 1x1 convs with a channel shuffle between them (view/transpose/view): channel
# k of every group is one channel, so each group keeps as many
class ShuffleUnit(nn.Module):
    def __init__(self, channels: int, groups: int = 2):
        super().__init__()
        self.groups = groups
        self.gconv1 = _conv_bn(channels, channels, 1, groups)
        self.dw = _conv_bn(channels, channels, 3, channels)
        self.gconv2 = _conv_bn(channels, channels, 1, groups)

    def forward(self, x):
        out = F.relu(self.gconv1(x))
        b, c, h, w = out.size(0), out.size(1), out.size(2), out.size(3)
        out = out.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return F.relu(x + self.gconv2(self.dw(out)))


class ShuffleNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 8), nn.ReLU())
        self.stage = nn.Sequential(ShuffleUnit(8), ShuffleUnit(8))
        self.head = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = F.relu(self.head(self.stage(self.stem(x))))
        return self.fc(x.mean((2, 3)))


# ShuffleNetV2-style split without the shuffle: chunk into halves, transform one, concatenate
class SplitUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(_conv_bn(half, half, 1), nn.ReLU(), _conv_bn(half, half, 3, half))

    def forward(self, x):
        keep, change = x.chunk(2, dim=1)
        return torch.cat([keep, self.branch(change)], 1)


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 8), nn.ReLU())
        self.units = nn.Sequential(SplitUnit(8), SplitUnit(8))
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(self.units(self.stem(x)), 4)
        return self.fc(x.view(x.size(0), -1))


# ConvNeXt-style learned per-channel layer scale [1, C, 1, 1] on the residual branch
class LayerScaleBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.dw = _conv_bn(channels, channels, 3, channels)
        self.pw1, self.pw2 = nn.Conv2d(channels, 2 * channels, 1), nn.Conv2d(2 * channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))

    def forward(self, x):
        return x + self.gamma * self.pw2(F.gelu(self.pw1(self.dw(x))))


class LayerScaleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.blocks = nn.Sequential(LayerScaleBlock(8), LayerScaleBlock(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


# functional BatchNorm with registered buffers, and a literal channel count in a view
class FunctionalBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.weight, self.bias = nn.Parameter(torch.rand(6) + 0.5), nn.Parameter(torch.randn(6) * 0.1)
        self.register_buffer("mean", torch.randn(6) * 0.1)
        self.register_buffer("var", torch.rand(6) + 0.5)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = F.batch_norm(self.conv(x), self.mean, self.var, self.weight, self.bias, False)
        x = F.adaptive_max_pool2d(F.relu(x), 1)
        return self.fc(x.view(-1, 6))


# sub-pixel upsampling: PixelShuffle folds channels into space and must be refused
class PixelShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv2(self.up(F.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


PRUNING_ZOO = {
    "ShuffleNetish": (ShuffleNetish, 8),
    "SplitNet": (SplitNet, 16),
    "LayerScaleNet": (LayerScaleNet, 16),
    "FunctionalBNNet": (FunctionalBNNet, 8),
    "PixelShuffleNet": (PixelShuffleNet, 8),
}
# layers whose groups must be refused, and a word the reason must contain
REFUSED = {
    "PixelShuffleNet": {"conv": "moves channels into space"},
}
