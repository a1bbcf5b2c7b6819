"""A model of your own, as the guide in docs/your-models.md grows it:

    graphmorph autogrow --model examples.tinynet:make

Any module works the same way: a callable that returns an fx-traceable nn.Module (given
num_classes= and in_channels= when it takes them), whose stages have blocks AutoGrow can copy.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class Unit(nn.Module):
    """conv-BN-ReLU-conv-BN on a branch, added to its input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyNet(nn.Module):
    """A stem, one unit at full resolution, a strided conv, one unit at half resolution, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.features = nn.Sequential(Unit(width))
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.refine = nn.Sequential(Unit(2 * width))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.refine(self.down(self.features(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make(num_classes: int = 10, in_channels: int = 1) -> TinyNet:
    return TinyNet(num_classes, in_channels)
