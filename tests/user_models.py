"""Models as a user would write them, outside graphmorph's families, for `--model user_models:...`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedUnit(nn.Module):
    """Pre-activation residual unit with a squeeze-excitation gate on its branch."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gate = nn.Linear(channels, channels)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        weights = torch.sigmoid(self.gate(out.mean((2, 3))))
        return x + out * weights[:, :, None, None]


class GatedNet(nn.Module):
    """Stem, a unit at full size, a strided transition, a unit at half size, pooled head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 6):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.early = nn.Sequential(GatedUnit(width))
        self.transition = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.late = nn.Sequential(GatedUnit(2 * width))
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.late(self.transition(self.early(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1))


class DenseOnly(nn.Module):
    """Every block concatenates its input: none can be stacked shape-preserving."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.grow1 = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.grow1(x)], 1)
        return self.head(x.mean((2, 3)))


class HalfDense(DenseOnly):
    """A concatenating block at full size (cannot grow), then a strided conv and a gated unit."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__(num_classes, in_channels)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.late = nn.Sequential(GatedUnit(8))

    def forward(self, x):
        x = self.stem(x)
        x = self.late(self.down(torch.cat([x, self.grow1(x)], 1)))
        return self.head(x.mean((2, 3)))


def half_dense(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return HalfDense(num_classes, in_channels)


def gated(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return GatedNet(num_classes, in_channels)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def dense_only(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return DenseOnly(num_classes, in_channels)


def not_a_model():
    return "a string"


def hundred_classes() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 100))
