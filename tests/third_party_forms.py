"""Stand-ins for ops of packages the project does not depend on, under the qualified names those
packages give them, so the tests can check that graphmorph knows them by name: torchvision's
`stochastic_depth` (an fx-wrapped function) and timm's `DropPath` (a module)."""
from __future__ import annotations

import torch
import torch.fx
from torch import nn


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth: zero whole rows (samples) with probability p in training."""
    if not training or p == 0.0:
        return input
    survival = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival)
    return input * noise.div_(survival)


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"
torch.fx.wrap("stochastic_depth")


class DropPath(nn.Module):
    """timm.layers.drop.DropPath (kept a leaf when captured, as timm's tracing does)."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, "row", self.training)


DropPath.__module__ = "timm.layers.drop"


class MBConv(nn.Module):
    """torchvision's EfficientNet block: expand, depthwise, project, stochastic depth, add."""

    def __init__(self, c: int, expand: int = 2, p: float = 0.2):
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(),
            nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(self.block(x), self.p, "row", self.training) + x


class TimmBlock(nn.Module):
    """A timm-style residual block whose branch ends in DropPath."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.drop_path = DropPath()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.bn(self.conv(torch.relu(x))))


class StochasticDepthNet(nn.Module):
    def __init__(self, c: int = 8, block=MBConv):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.SiLU())
        self.layer1 = nn.Sequential(block(c), block(c))
        self.head = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer1(self.stem(x)).mean((2, 3)))
