"""EnvelopeNets (Neural Architecture Construction, section 2), named `EnvelopeNet-C/n1-n2-n3/M`.

- Stem: 3x3 conv, BN, ReLU to C channels. Stage i works at C * 2**i channels.
- EnvelopeCell: M parallel branches, each conv -> ReLU -> BN keeping the channel count, outputs
  concatenated. Branch types: conv1x1, conv3x3, sep3x3, conv5x5, sep5x5, sep7x7 (sep: depthwise
  then pointwise); the first M of the branch set are used.
- Dense skips: every cell after the first, and the stage's output, read a 1x1 reduction of the
  concatenation of the previous cell's output and of each earlier output of the stage (the stage
  input and older cells), each of those skips scaled by a learned scalar (randomly initialised).
- Widener between stages: 2x2 max-pool in parallel with a stride-2 3x3 conv, concatenated, so the
  channels double while the size halves. Classifier: global average pool, dropout, linear.

Module names are stable, and branches are named by type (`stage0.cell1.sep5x5`), so pruning one
branch renames nothing else; `envelope_arch` reads the per-cell structure back as JSON.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor, nn

from graphmorph.errors import ArchError

__all__ = ["BRANCH_TYPES", "EnvelopeNet", "EnvelopeCell", "Widener", "SkipReduce", "parse_envelope",
           "envelope_arch"]

BRANCH_TYPES = ("conv1x1", "conv3x3", "sep3x3", "conv5x5", "sep5x5", "sep7x7")
_ENVELOPE = re.compile(r"^EnvelopeNet-(\d+)/(\d+(?:-\d+)*)/(\d+)$")


def _branch(kind: str, channels: int) -> nn.Sequential:
    if kind not in BRANCH_TYPES:
        raise ArchError(f"unknown branch type {kind!r}; choose from {', '.join(BRANCH_TYPES)}")
    size = int(kind[-1])
    if kind.startswith("sep"):
        conv = nn.Sequential(
            nn.Conv2d(channels, channels, size, padding=size // 2, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
        )
    else:
        conv = nn.Conv2d(channels, channels, size, padding=size // 2, bias=False)
    return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(channels))


class EnvelopeCell(nn.Module):
    """Parallel branches, concatenated along channels."""

    def __init__(self, channels: int, branches: Sequence[str]):
        super().__init__()
        if not branches:
            raise ArchError("an EnvelopeCell needs at least one branch")
        for kind in branches:
            self.add_module(kind, _branch(kind, channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.children()], 1)


class SkipReduce(nn.Module):
    """1x1 conv over [main input, w_s * skip_s for each skip]; one learned scalar per skip."""

    def __init__(self, main_channels: int, skip_channels: dict[str, int], out_channels: int):
        super().__init__()
        self.skips = list(skip_channels)
        for name in self.skips:
            self.register_parameter(f"w_{name}", nn.Parameter(torch.empty(()).uniform_(0.5, 1.0)))
        self.conv = nn.Conv2d(main_channels + sum(skip_channels.values()), out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, main: Tensor, *skips: Tensor) -> Tensor:
        scaled = [getattr(self, f"w_{name}") * skip for name, skip in zip(self.skips, skips)]
        return torch.relu(self.bn(self.conv(torch.cat([main, *scaled], 1))))


class Widener(nn.Module):
    """Halve the size, double the channels: max-pool in parallel with a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)  # odd sizes round up, as the stride-2 conv does
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.pool(x), self.conv(x)], 1)


class _Stage(nn.Module):
    """Cells with dense, scaled skips; `reduce{k}` feeds cell k (k >= 1) and `reduce{n}` is the output."""

    def __init__(self, channels: int, cells: Sequence[Sequence[str]]):
        super().__init__()
        self.n = len(cells)
        for k, branches in enumerate(cells):
            self.add_module(f"cell{k}", EnvelopeCell(channels, branches))
        widths = {"input": channels, **{f"cell{k}": channels * len(b) for k, b in enumerate(cells)}}
        for k in range(1, self.n + 1):
            skips = {name: widths[name] for name in ["input", *(f"cell{j}" for j in range(k - 1))]}
            self.add_module(f"reduce{k}", SkipReduce(widths[f"cell{k - 1}"], skips, channels))

    def forward(self, x: Tensor) -> Tensor:
        outputs = {"input": x}
        current = x
        for k in range(self.n):
            if k > 0:
                reduce = getattr(self, f"reduce{k}")
                current = reduce(outputs[f"cell{k - 1}"], *(outputs[s] for s in reduce.skips))
            outputs[f"cell{k}"] = getattr(self, f"cell{k}")(current)
        reduce = getattr(self, f"reduce{self.n}")
        return reduce(outputs[f"cell{self.n - 1}"], *(outputs[s] for s in reduce.skips))


class EnvelopeNet(nn.Module):
    """Stem, stages of EnvelopeCells separated by wideners, classifier."""

    family = "EnvelopeNet"

    def __init__(self, width: int, depths: Sequence[int], branches: Sequence[str] = BRANCH_TYPES,
                 num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2):
        super().__init__()
        self.width, self.depths, self.branches = width, tuple(depths), tuple(branches)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        channels = width
        for i, depth in enumerate(self.depths):
            if i > 0:
                self.add_module(f"widener{i}", Widener(channels))
                channels *= 2
            self.add_module(f"stage{i}", _Stage(channels, [self.branches] * depth))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(len(self.depths)):
            if i > 0:
                x = getattr(self, f"widener{i}")(x)
            x = getattr(self, f"stage{i}")(x)
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def parse_envelope(arch: str) -> tuple[int, tuple[int, ...], int]:
    """'EnvelopeNet-128/2-2-2/6' -> (128, (2, 2, 2), 6); ArchError if malformed."""
    match = _ENVELOPE.match(arch.strip())
    if not match:
        raise ArchError(f"{arch!r} is not of the form EnvelopeNet-C/n1-n2-.../M, e.g. EnvelopeNet-128/2-2-2/6")
    width, depths, branches = int(match.group(1)), tuple(int(d) for d in match.group(2).split("-")), int(match.group(3))
    if width < 1 or min(depths) < 1 or branches < 1:
        raise ArchError(f"{arch!r}: C, every stage depth and M must be at least 1")
    return width, depths, branches


def envelope_arch(model: nn.Module) -> dict:
    """The constructed architecture as JSON-ready data: per stage, per cell, its branches and the
    skip inputs of the reduction that feeds it (the stage output's reduction listed as `output`)."""
    modules = dict(model.named_modules())
    stages = []
    i = 0
    while f"stage{i}" in modules:
        cells, k = [], 0
        while f"stage{i}.cell{k}" in modules:
            reduce = modules.get(f"stage{i}.reduce{k}")
            cells.append({"name": f"stage{i}.cell{k}",
                          "branches": [b for b in BRANCH_TYPES if f"stage{i}.cell{k}.{b}" in modules],
                          "skips": _skips(reduce)})
            k += 1
        stages.append({"cells": cells, "output_skips": _skips(modules.get(f"stage{i}.reduce{k}"))})
        i += 1
    return {"family": "EnvelopeNet", "stages": stages}


def _skips(reduce: nn.Module | None) -> list[str]:
    if reduce is None:
        return []
    return sorted(name[2:] for name, _ in reduce.named_parameters(recurse=False) if name.startswith("w_"))
