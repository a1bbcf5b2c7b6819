"""Cell addition for EnvelopeNets (NAC section 2): append a cell at a stage's tail.

`add_cell(gm, stage)` gives stage i one more EnvelopeCell, `stage{i}.cell{n}`, fed by the stage's
old output reduction, and a new output reduction `stage{i}.reduce{n+1}` that reads the new cell
and, as scaled skips, the stage input and every earlier cell (dense, as in a fresh EnvelopeNet).

With `init="preserve"` (the default) the new reduction starts as a copy of the old output
reduction: the weights it had for the old cells and skips, scalar 1 on the previous cell (which
the old reduction read unscaled), and zero weights for the new cell and for skips the old one did
not read. The net then computes exactly what it computed before, in eval and train mode, while
the new cell's weights still receive gradients. `init="random"` keeps the fresh initialisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import fx, nn
from torch.fx.node import map_arg

from graphmorph.graph import ops
from graphmorph.errors import RewriteError
from graphmorph.errors import ArchError
from graphmorph.graph.capture import STRUCTURE_KEY
from graphmorph.models.envelope import (BRANCH_TYPES, EnvelopeCell, EnvelopeStage, Skip, SkipReduce, _Stage, cell_concat,
                                        envelope_structure)
from graphmorph.graph.rng import seeded
from graphmorph.graph.shapes import Inputs
from graphmorph.graph.verify import annotate_rewritten
from transforms.protocol import Edit, Rewrite, Step, apply, register

__all__ = ["add_cell", "AddCell", "CELL_INITS"]

CELL_INITS = ("preserve", "random")


def add_cell(gm: fx.GraphModule, stage: int, *, branches: Sequence[str] | None = None, init: str = "preserve",
             example_input: torch.Tensor | Inputs | None = None, generator: torch.Generator | None = None,
             verify: bool = True) -> fx.GraphModule:
    """A new graph with an EnvelopeCell appended to stage `stage`, densely connected to the stage's
    earlier cells. `branches` default to every branch type any cell of the net still has. New
    parameters are drawn from a seed taken from `generator` and recorded, so `replay` repeats them.
    Raises RewriteError when `gm` has no such EnvelopeNet stage or the options are wrong."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rewrite = AddCell(stage, tuple(_present_branches(gm) if branches is None else branches), init, seed)
    return apply(gm, rewrite, example_input=example_input, verify=verify)


@register
@dataclass(frozen=True)
class AddCell(Rewrite):
    """Append an EnvelopeCell of `branches` to EnvelopeNet stage `stage`, with a new dense output
    reduction; `init="preserve"` keeps the function, "random" the fresh draw from `seed`."""

    name: ClassVar[str] = "add_cell"
    stage: int
    branches: tuple[str, ...]
    init: str
    seed: int

    def describe(self) -> str:
        return f"add_cell to stage{self.stage} (init={self.init!r})"

    keeps_structure = True

    def check(self, gm: fx.GraphModule) -> str | None:
        if self.init not in CELL_INITS:
            return f"unknown cell init {self.init!r}; choose one of {', '.join(CELL_INITS)}"
        _stage(gm, self.stage)
        unknown = [b for b in self.branches if b not in BRANCH_TYPES]
        if unknown or not self.branches or len(set(self.branches)) != len(self.branches):
            return f"a new cell needs distinct branches from {', '.join(BRANCH_TYPES)}, got {list(self.branches)}"
        return None

    def edit(self, step: Step) -> Edit:
        gm, work, branches = step.source, step.work, self.branches
        stage = _stage(gm, self.stage)
        prefix = stage.name
        anchors = _Anchors(work, stage)
        n = len(anchors.cells)
        channels = anchors.channels()
        cell_name, reduce_name = f"cell{n}", f"reduce{n + 1}"
        skip_widths = {"input": channels, **{f"cell{j}": ops.channels_of(node) for j, node in enumerate(anchors.cells)}}
        with seeded(self.seed, like=work):
            cell = EnvelopeCell(channels, branches)
            reduce = SkipReduce(channels * len(branches), skip_widths, channels)
        reference = next(work.parameters())
        for module in (cell, reduce):
            module.to(device=reference.device, dtype=reference.dtype)
        work.get_submodule(prefix).add_module(cell_name, cell)
        work.get_submodule(prefix).add_module(reduce_name, reduce)
        _splice(work, prefix, anchors, n, branches, (cell_name, reduce_name))
        work.recompile()
        same_shapes = annotate_rewritten(gm, work, step.inputs, "add_cell")
        structure = envelope_structure(gm).with_cell(self.stage, branches)
        work.meta[STRUCTURE_KEY] = structure
        if self.init == "preserve":
            _copy_reduction(work, stage.output, [s.source for s in stage.output_skips],
                            structure.stages[self.stage].output, list(skip_widths), f"cell{n - 1}")
        added = sum(p.numel() for m in (cell, reduce) for p in m.parameters())
        return Edit(added, lambda: gm, ("eval", "train") if self.init == "preserve" else (),
                    shapes_propagated=same_shapes, notes={"cell": f"{prefix}.{cell_name}"})


# --------------------------------------------------------------------------- where the cell goes


def _stage(gm: fx.GraphModule, stage: int) -> EnvelopeStage:
    try:
        stages = envelope_structure(gm).stages
    except ArchError:
        stages = ()
    if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage < len(stages):
        shown = ", ".join(str(s.index) for s in stages) or "none: it is not an EnvelopeNet"
        raise RewriteError(f"no EnvelopeNet stage {stage!r}; the stages with cells are: {shown}")
    return stages[stage]


def _present_branches(gm: nn.Module) -> tuple[str, ...]:
    """Every branch type a cell of the EnvelopeNet `gm` still has (all of them for other nets,
    which `AddCell.check` refuses)."""
    try:
        cells = envelope_structure(gm).cells
    except ArchError:
        return BRANCH_TYPES
    return tuple(b for b in BRANCH_TYPES if any(b in cell.branches for cell in cells))


class _Anchors:
    """The nodes of a stage the new cell connects to: its input, each cell's output (the cell's
    concatenation) and the old output reduction's result."""

    def __init__(self, gm: fx.GraphModule, stage: EnvelopeStage):
        prefix = stage.name
        self.cells = [cell_concat(gm, cell.name) for cell in stage.cells]
        inside = [n for n in gm.graph.nodes if _within(n, prefix)]
        outer = {a for n in inside if n.op != "get_attr" for a in n.all_input_nodes if not _within(a, prefix)}
        exits = [n for n in inside if _within(n, stage.output) and any(not _within(u, stage.output) for u in n.users)]
        if None in self.cells or len(outer) != 1 or len(exits) != 1:
            raise RewriteError(f"{prefix} does not have the shape of an EnvelopeNet stage (one input, its cells, and "
                               f"one output from {stage.output}); remove statistics instrumentation before adding cells")
        self.input, = outer
        self.exit, = exits

    def channels(self) -> int:
        return ops.channels_of(self.exit)


def _within(node: fx.Node, path: str) -> bool:
    where = ops.module_path(node)
    return where == path or where.startswith(path + ".")


# --------------------------------------------------------------------------- the new nodes


def _splice(work: fx.GraphModule, prefix: str, anchors: _Anchors, n: int, branches: Sequence[str],
            new: tuple[str, str]) -> None:
    """Copy the nodes of the last cell and reduction of a template stage with n + 1 cells (traced on
    the meta device, in the module's own op granularity) after the old stage output, reading the
    stage's real input, cells and old output, and make the new reduction the stage output."""
    with torch.device("meta"):
        stage = _Stage(1, [branches] * (n + 1))
    template = fx.Tracer().trace(stage)
    cells = {name: anchors.cells[k] for k, (name, _) in enumerate(stage.cells()[:n])}
    old_output, _ = stage.reduction(n)
    outer_stack = [(key, value) for key, value in anchors.exit.meta["nn_module_stack"].items()
                   if prefix == value[0] or prefix.startswith(value[0] + ".")]

    def source(node: fx.Node) -> fx.Node:
        path = ops.module_path(node)
        if node.op == "placeholder":
            return anchors.input
        if path in cells:
            return cells[path]
        if path == old_output or path.startswith(old_output + "."):
            return anchors.exit
        raise RewriteError(f"internal: the new cell reads {node.name} ({path}), which has no counterpart")

    env: dict[fx.Node, fx.Node] = {}
    created = []
    ours = [node for node in template.nodes if any(_within(node, name) for name in new)]
    point = anchors.exit
    for node in ours:
        args = map_arg(node.args, lambda a: env[a] if a in env else source(a))
        kwargs = map_arg(node.kwargs, lambda a: env[a] if a in env else source(a))
        target = f"{prefix}.{node.target}" if node.op in ("call_module", "get_attr") else node.target
        name = target.replace(".", "_") if node.op in ("call_module", "get_attr") else node.name
        with work.graph.inserting_after(point):
            copy = work.graph.create_node(node.op, target, args, kwargs, name=name)
        stack = node.meta.get("nn_module_stack") or {}
        copy.meta["nn_module_stack"] = dict(outer_stack + [
            (f"{prefix}.{key}", (f"{prefix}.{path}", cls)) for key, (path, cls) in stack.items()])
        env[node] = point = copy
        created.append(copy)
    output = env[ours[-1]]  # the new reduction's result, the last node the template computes
    inside = set(created)
    anchors.exit.replace_all_uses_with(output, delete_user_cb=lambda user: user not in inside)


# --------------------------------------------------------------------------- function preservation


def _copy_reduction(gm: fx.GraphModule, old: str, old_skips: list[str], new: str, new_skips: list[str],
                    previous: str) -> None:
    """Make reduction `new` compute what `old` computed: zero columns for the new cell, `old`'s
    columns and scalars for the skips it read, scalar 1 and `old`'s main columns for `previous`."""
    old_columns, new_columns = _columns(gm, old, old_skips), _columns(gm, new, new_skips)
    old_conv, new_conv = gm.get_submodule(f"{old}.conv"), gm.get_submodule(f"{new}.conv")
    with torch.no_grad():
        new_conv.weight.zero_()
        new_conv.weight[:, new_columns[previous]] = old_conv.weight[:, old_columns["main"]]
        gm.get_parameter(Skip(new, previous).weight).fill_(1.0)
        for name, columns in old_columns.items():
            if name != "main":
                new_conv.weight[:, new_columns[name]] = old_conv.weight[:, columns]
                gm.get_parameter(Skip(new, name).weight).copy_(gm.get_parameter(Skip(old, name).weight))
        gm.get_submodule(f"{new}.bn").load_state_dict(gm.get_submodule(f"{old}.bn").state_dict())


def _columns(gm: fx.GraphModule, reduction: str, skips: list[str]) -> dict[str, slice]:
    """The input channels of a reduction's conv per source: "main" (the unscaled previous cell)
    and each of its declared skips, in the order of the concatenation that feeds the conv."""
    concat = next(n for n in gm.graph.nodes if ops.is_cat(n) and ops.module_path(n) == reduction)
    columns, start = {}, 0
    for name, part in zip(["main", *skips], concat.args[0]):
        columns[name] = slice(start, start + ops.channels_of(part))
        start += ops.channels_of(part)
    return columns
