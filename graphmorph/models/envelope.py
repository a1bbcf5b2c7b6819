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
branch renames nothing else. `envelope_structure` reads the typed structure (stages, cells,
branches, skips) from the modules, each reduction declaring its skips; `envelope_arch` is its
JSON form.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, fx, nn

from graphmorph.errors import ArchError
from graphmorph.graph import ops
from graphmorph.graph.capture import STRUCTURE_KEY

__all__ = ["BRANCH_TYPES", "EnvelopeNet", "EnvelopeCell", "Widener", "SkipReduce", "parse_envelope",
           "envelope_arch", "envelope_structure", "EnvelopeStructure", "EnvelopeStage", "Cell", "Skip", "cell_concat"]

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
    """1x1 conv over [main input, w_s * skip_s for each skip]; one learned scalar per skip.
    `skips` declares the skip inputs in concatenation order (rewrites keep it current)."""

    def __init__(self, main_channels: int, skip_channels: dict[str, int], out_channels: int):
        super().__init__()
        self.skips = list(skip_channels)
        for name in self.skips:
            self.register_parameter(self.weight_name(name), nn.Parameter(torch.empty(()).uniform_(0.5, 1.0)))
        self.conv = nn.Conv2d(main_channels + sum(skip_channels.values()), out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    @staticmethod
    def weight_name(source: str) -> str:
        return f"w_{source}"

    def forward(self, main: Tensor, *skips: Tensor) -> Tensor:
        scaled = [getattr(self, self.weight_name(name)) * skip for name, skip in zip(self.skips, skips)]
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
    """Cells with scaled skips; `reduce{k}` feeds cell k (k >= 1) and `reduce{n}` is the output.

    `skips[k - 1]` lists the skip inputs of `reduce{k}` ("input", "cell0", ...: the stage input and
    cells before cell k - 1); by default every reduction reads all of them (dense)."""

    def __init__(self, channels: int, cells: Sequence[Sequence[str]], skips: Sequence[Sequence[str]] | None = None):
        super().__init__()
        self.n = len(cells)
        if skips is None:
            skips = [["input", *(f"cell{j}" for j in range(k - 1))] for k in range(1, self.n + 1)]
        for k, branches in enumerate(cells):
            self.add_module(f"cell{k}", EnvelopeCell(channels, branches))
        widths = {"input": channels, **{f"cell{k}": channels * len(b) for k, b in enumerate(cells)}}
        for k in range(1, self.n + 1):
            self.add_module(f"reduce{k}", SkipReduce(widths[f"cell{k - 1}"], {name: widths[name] for name in skips[k - 1]},
                                                     channels))

    def cells(self) -> list[tuple[str, EnvelopeCell]]:
        """(name, cell) in order: cell0, cell1, ..."""
        return [(name, m) for name, m in self.named_children() if isinstance(m, EnvelopeCell)]

    def reduction(self, k: int) -> tuple[str, SkipReduce | None]:
        """The reduction feeding cell k (k >= 1), or the stage output for k = the cell count."""
        name = f"reduce{k}"
        return name, getattr(self, name, None)

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
    """Stem, stages of EnvelopeCells separated by wideners, classifier.

    Every cell has `branches` and `depths[i]` cells form stage i, unless `cells` (per stage, per
    cell, its branches) and `skips` (per stage, per reduction, its skip inputs) describe a
    constructed net; `from_structure` reads them from `envelope_arch`'s JSON form."""

    family = "EnvelopeNet"

    def __init__(self, width: int, depths: Sequence[int] = (), branches: Sequence[str] = BRANCH_TYPES,
                 num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2, *,
                 cells: Sequence[Sequence[Sequence[str]]] | None = None,
                 skips: Sequence[Sequence[Sequence[str]] | None] | None = None):
        super().__init__()
        cells = cells if cells is not None else [[tuple(branches)] * depth for depth in depths]
        skips = skips if skips is not None else [None] * len(cells)
        self.width, self.depths = width, tuple(len(stage) for stage in cells)
        self.branches = tuple(b for b in BRANCH_TYPES if any(b in cell for stage in cells for cell in stage))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        channels = width
        for i, (stage_cells, stage_skips) in enumerate(zip(cells, skips)):
            if i > 0:
                self.add_module(f"widener{i}", Widener(channels))
                channels *= 2
            self.add_module(f"stage{i}", _Stage(channels, stage_cells, stage_skips))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    @classmethod
    def from_structure(cls, structure: dict, num_classes: int = 10, in_channels: int = 3,
                       dropout: float = 0.2) -> "EnvelopeNet":
        """A fresh net with the per-cell branches and skips of `envelope_arch`'s JSON form."""
        try:
            width = structure["width"]
            cells = [[cell["branches"] for cell in stage["cells"]] for stage in structure["stages"]]
            skips = [[cell["skips"] for cell in stage["cells"][1:]] + [stage["output_skips"]]
                     for stage in structure["stages"]]
        except (KeyError, TypeError) as err:
            raise ArchError(f"an EnvelopeNet structure needs width and stages with cells (branches, skips) and "
                            f"output_skips, as graphmorph.models.envelope_arch writes it; missing {err}") from None
        _check_structure(width, cells, skips)
        return cls(width, num_classes=num_classes, in_channels=in_channels, dropout=dropout, cells=cells, skips=skips)

    def graphmorph_structure(self) -> "EnvelopeStructure":
        """What `graphmorph.capture` keeps of this net's structure (fx keeps only leaf modules)."""
        return _read_modules(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(len(self.depths)):
            if i > 0:
                x = getattr(self, f"widener{i}")(x)
            x = getattr(self, f"stage{i}")(x)
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def _check_structure(width, cells, skips) -> None:
    if not isinstance(width, int) or width < 1:
        raise ArchError(f"an EnvelopeNet's width must be a positive integer, got {width!r}")
    if not cells or any(not stage for stage in cells):
        raise ArchError("an EnvelopeNet structure needs at least one stage, and every stage at least one cell")
    for i, (stage_cells, stage_skips) in enumerate(zip(cells, skips)):
        for k, branches in enumerate(stage_cells):
            unknown = [b for b in branches if b not in BRANCH_TYPES]
            if not branches or unknown or len(set(branches)) != len(branches):
                raise ArchError(f"stage{i}.cell{k} has branches {branches!r}: give distinct ones of "
                                f"{', '.join(BRANCH_TYPES)}, at least one")
        for k, names in enumerate(stage_skips, start=1):
            allowed = ["input", *(f"cell{j}" for j in range(k - 1))]
            wrong = [name for name in names if name not in allowed]
            if wrong:
                raise ArchError(f"stage{i}.reduce{k} cannot read skip(s) {', '.join(wrong)}; "
                                f"it may read {', '.join(allowed)}")


def parse_envelope(arch: str) -> tuple[int, tuple[int, ...], int]:
    """'EnvelopeNet-128/2-2-2/6' -> (128, (2, 2, 2), 6); ArchError if malformed."""
    match = _ENVELOPE.match(arch.strip())
    if not match:
        raise ArchError(f"{arch!r} is not of the form EnvelopeNet-C/n1-n2-.../M, e.g. EnvelopeNet-128/2-2-2/6")
    width, depths, branches = int(match.group(1)), tuple(int(d) for d in match.group(2).split("-")), int(match.group(3))
    if width < 1 or min(depths) < 1 or branches < 1:
        raise ArchError(f"{arch!r}: C, every stage depth and M must be at least 1")
    return width, depths, branches


@dataclass(frozen=True)
class Skip:
    """A scaled skip input of a reduction: `source` ("input" or "cellK") times a learned scalar."""

    reduction: str                      # the SkipReduce's module path, e.g. "stage0.reduce2"
    source: str

    @property
    def weight(self) -> str:
        """The scalar's parameter path."""
        return f"{self.reduction}.{SkipReduce.weight_name(self.source)}"


@dataclass(frozen=True)
class Cell:
    """An EnvelopeCell: its branches in concatenation order, and the skips of the reduction that
    feeds it (none for a stage's first cell, which reads the stage input)."""

    name: str                           # module path, e.g. "stage0.cell1"
    branches: tuple[str, ...]
    skips: tuple[Skip, ...]

    def branch_of(self, node: fx.Node) -> str | None:
        """The branch whose module `node` calls (a branch's BatchNorm, say), or None."""
        target = str(node.target) if node.op == "call_module" else ""
        return next((b for b in self.branches if target.startswith(f"{self.name}.{b}.")), None)


@dataclass(frozen=True)
class EnvelopeStage:
    index: int
    name: str                           # "stage0"
    cells: tuple[Cell, ...]
    output: str                         # the stage's output reduction, "stage0.reduce<n>"
    output_skips: tuple[Skip, ...]

    @property
    def skips(self) -> tuple[Skip, ...]:
        return tuple(s for cell in self.cells for s in cell.skips) + self.output_skips


@dataclass(frozen=True)
class EnvelopeStructure:
    """What an EnvelopeNet (or a graph captured from one, however rewritten) is made of, read from
    its modules: the stages, their cells and branches, and every reduction's declared skips."""

    width: int
    stages: tuple[EnvelopeStage, ...]

    def cell(self, name: str) -> Cell | None:
        return next((c for stage in self.stages for c in stage.cells if c.name == name), None)

    def without_branches(self, cell: str, branches: Sequence[str]) -> "EnvelopeStructure":
        return self._edit_cells(lambda c: dataclasses.replace(
            c, branches=tuple(b for b in c.branches if b not in branches)) if c.name == cell else c)

    def without_skips(self, skips: Sequence[Skip]) -> "EnvelopeStructure":
        gone = set(skips)
        kept = self._edit_cells(lambda c: dataclasses.replace(c, skips=tuple(s for s in c.skips if s not in gone)))
        return dataclasses.replace(kept, stages=tuple(
            dataclasses.replace(stage, output_skips=tuple(s for s in stage.output_skips if s not in gone))
            for stage in kept.stages))

    def with_cell(self, stage: int, branches: Sequence[str]) -> "EnvelopeStructure":
        """A new last cell for stage `stage`, fed by the old output reduction, and a new output
        reduction that reads every earlier output of the stage as a skip (dense)."""
        old = self.stages[stage]
        n = len(old.cells)
        cell = Cell(f"{old.name}.cell{n}", tuple(branches), old.output_skips)
        output = f"{old.name}.reduce{n + 1}"
        skips = tuple(Skip(output, source) for source in ("input", *(f"cell{j}" for j in range(n))))
        new = dataclasses.replace(old, cells=(*old.cells, cell), output=output, output_skips=skips)
        return dataclasses.replace(self, stages=tuple(new if s.index == stage else s for s in self.stages))

    def _edit_cells(self, edit) -> "EnvelopeStructure":
        return dataclasses.replace(self, stages=tuple(
            dataclasses.replace(stage, cells=tuple(edit(c) for c in stage.cells)) for stage in self.stages))

    @property
    def cells(self) -> tuple[Cell, ...]:
        return tuple(c for stage in self.stages for c in stage.cells)

    @property
    def skips(self) -> tuple[Skip, ...]:
        return tuple(s for stage in self.stages for s in stage.skips)

    def to_dict(self) -> dict:
        """The JSON form (`envelope_arch`) that `build` and `EnvelopeNet.from_structure` take."""
        return {"family": "EnvelopeNet", "width": self.width, "stages": [
            {"cells": [{"name": c.name, "branches": list(c.branches), "skips": [s.source for s in c.skips]}
                       for c in stage.cells],
             "output_skips": [s.source for s in stage.output_skips]} for stage in self.stages]}


def envelope_structure(model: nn.Module) -> EnvelopeStructure:
    """The structure of an EnvelopeNet, or of a graph captured from one (as its rewrites left it);
    ArchError for other models."""
    if isinstance(model, fx.GraphModule):
        structure = model.meta.get(STRUCTURE_KEY)
        if not isinstance(structure, EnvelopeStructure):
            raise ArchError("this graph has no EnvelopeNet structure: capture an EnvelopeNet with graphmorph.capture "
                            "(a rewrite that does not know EnvelopeNets, such as grow, leaves it unknown)")
        return structure
    return _read_modules(model)


def _read_modules(model: nn.Module) -> EnvelopeStructure:
    stages = [(name, module) for name, module in model.named_children() if isinstance(module, _Stage)]
    if not stages:
        raise ArchError(f"{type(model).__name__} is not an EnvelopeNet: it has no EnvelopeNet stages")
    read = []
    for index, (name, stage) in enumerate(stages):
        cells = []
        for k, (cell_name, cell) in enumerate(stage.cells()):
            reduce_name, reduce = stage.reduction(k)
            cells.append(Cell(f"{name}.{cell_name}", tuple(n for n, _ in cell.named_children()),
                              _skips_of(f"{name}.{reduce_name}", reduce)))
        output_name, output = stage.reduction(len(cells))
        read.append(EnvelopeStage(index, name, tuple(cells), f"{name}.{output_name}",
                                  _skips_of(f"{name}.{output_name}", output)))
    return EnvelopeStructure(model.get_submodule("stem.0").out_channels, tuple(read))


def envelope_arch(model: nn.Module) -> dict:
    """The constructed architecture as JSON-ready data: the stem width and, per stage, per cell, its
    branches (in concatenation order) and the skip inputs of the reduction that feeds it (in the order the reduction
    concatenates them), and the stage output reduction's skips. `build` turns it back into a net
    whose state_dict fits this one's."""
    return envelope_structure(model).to_dict()


def cell_concat(gm: fx.GraphModule, cell: str) -> fx.Node | None:
    """The node that concatenates the branches of the cell named `cell`, or None."""
    return next((n for n in gm.graph.nodes if ops.is_cat(n) and ops.module_path(n) == cell), None)


def _skips_of(path: str, reduce: nn.Module | None) -> tuple[Skip, ...]:
    return tuple(Skip(path, source) for source in reduce.skips) if reduce is not None else ()
