"""Pruning rewrites for EnvelopeNets (NAC section 2): branches of a cell, and scaled skip inputs.

Contract (checked by `graphmorph.graph.verify` after every call): the pruned graph computes exactly what
the old graph computes with the pruned branches' outputs (their final BatchNorm's scale and
shift) or the pruned skips' scalars set to zero, in float64, in eval and train mode.

The removed channels are followed forward from the pruned tensor through scalar multiplies and
concatenations (with their channel offsets) to the 1x1 convolutions that read them, which lose
exactly those input channels: the removal and surgery that skip-edge pruning uses
(`ChannelDependencies.downstream`, then one edit of the channel engine: `transforms.skips.cut_downstream`). Cells,
branches and skips come from the net's declared structure (`graphmorph.models.envelope_structure`),
which these rewrites keep current.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Sequence

import torch
from torch import fx, nn

from graphmorph.graph import ops
from graphmorph.graph.copying import clone
from graphmorph.errors import RewriteError
from graphmorph.graph.shapes import Inputs
from graphmorph.graph.ops import attribute
from graphmorph.errors import ArchError
from graphmorph.graph.capture import STRUCTURE_KEY
from graphmorph.graph.channels import channel_dependencies
from graphmorph.graph.registry import Registry
from graphmorph.graph.verify import parameter_count
from graphmorph.models.envelope import Cell, EnvelopeStructure, Skip, cell_concat, envelope_structure
from transforms.protocol import Edit, Rewrite, Step, apply, register
from transforms.skips import cut_downstream, prune_skip_edges

__all__ = ["prune_branches", "prune_skips", "PruneBranches", "PruneSkips"]


def prune_branches(gm: fx.GraphModule, cell: str, branches: Sequence[str | int], *,
                   example_input: torch.Tensor | Inputs | None = None, verify: bool = True,
                   registry: Registry | None = None) -> fx.GraphModule:
    """A new graph without the named (or numbered) branches of `cell` (e.g. "stage0.cell1"); the
    cell's concatenation and every reader of it lose those channels, followed with `registry`'s
    channel handlers (default: `Registry.default()`). The last branch of a cell is never pruned."""
    names = list(_cell(gm, cell).branches)
    remove = _resolve_branches(cell, names, branches)
    rewrite = PruneBranches(cell, tuple(sorted(remove, key=names.index)), registry=registry)
    return apply(gm, rewrite, example_input=example_input, verify=verify)


def prune_skips(gm: fx.GraphModule, skips: Iterable[tuple[str, str]], *,
                example_input: torch.Tensor | Inputs | None = None, verify: bool = True,
                registry: Registry | None = None) -> fx.GraphModule:
    """A new graph without the given skip inputs. On an EnvelopeNet each is `(reduction, source)`
    such as `("stage0.reduce2", "input")`: the scaled input, its scalar, and the reduction conv's
    channels for it go. On any model each is `(merge node, input node)`, fx node names of an add or
    a channel concatenation and one of its inputs (see `transforms.skips.prune_skip_edges`).
    `registry` holds the channel handlers the removed channels are followed with."""
    skips = tuple(tuple(s) for s in skips)
    merges = {n.name for n in gm.graph.nodes if ops.is_add(n) or ops.is_cat(n)}
    if skips and all(reduce in merges for reduce, _ in skips):
        return prune_skip_edges(gm, skips, example_input=example_input, verify=verify, registry=registry)
    return apply(gm, PruneSkips(skips, registry=registry), example_input=example_input, verify=verify)


@register
@dataclass(frozen=True)
class PruneBranches(Rewrite):
    """Remove the named branches of EnvelopeNet cell `cell`; the contract is the source with their
    final BatchNorms' scale and shift set to zero."""

    name: ClassVar[str] = "prune_branches"
    cell: str
    branches: tuple[str, ...]

    keeps_structure = True

    def check(self, gm: fx.GraphModule) -> str | None:
        _resolve_branches(self.cell, list(_cell(gm, self.cell).branches), self.branches)
        return None

    def edit(self, step: Step) -> Edit:
        gm, work, cell = step.source, step.work, self.cell
        structure = envelope_structure(gm)
        concat = cell_concat(work, cell)
        outputs = list(concat.args[0])
        names = [structure.cell(cell).branch_of(node) for node in outputs]
        remove = set(self.branches)
        work.meta[STRUCTURE_KEY] = structure.without_branches(cell, self.branches)
        removed, start = set(), 0
        for name, node in zip(names, outputs):
            if name in remove:
                removed.update(range(start, start + ops.channels_of(node)))
            start += ops.channels_of(node)

        def masked() -> fx.GraphModule:
            reference = clone(gm)
            for name in remove:
                _zero_final_norm(reference, outputs[names.index(name)], f"{cell}.{name}")
            return reference

        delta = _cut_readers(work, [(concat, removed)], self.op_registry)
        concat.args = ([node for node, name in zip(outputs, names) if name not in remove], *concat.args[1:])
        for name in remove:
            prefix = f"{cell}.{name}"
            delta -= parameter_count(work.get_submodule(prefix))
            _erase_nodes(work, lambda n: ops.module_path(n) == prefix or ops.module_path(n).startswith(prefix + "."))
            work.delete_submodule(prefix)
        return Edit(delta, masked)


@register
@dataclass(frozen=True)
class PruneSkips(Rewrite):
    """Remove EnvelopeNet skip inputs `(reduction, source)`: the scaled input, its scalar and the
    reduction conv's columns for it; the contract is the source with those scalars set to zero."""

    name: ClassVar[str] = "prune_skips"
    keeps_structure = True
    skips: tuple[tuple[str, str], ...]

    def check(self, gm: fx.GraphModule) -> str | None:
        known = _structure(gm).skips
        for reduce, source in self.skips:
            if Skip(reduce, source) not in known:
                shown = ", ".join(f"({s.reduction!r}, {s.source!r})" for s in known)
                return f"no skip ({reduce!r}, {source!r}); the skips are: {shown or 'none'}"
        return None

    def edit(self, step: Step) -> Edit:
        gm, work = step.source, step.work
        skips = [Skip(reduce, source) for reduce, source in self.skips]
        work.meta[STRUCTURE_KEY] = envelope_structure(gm).without_skips(skips)
        weights = [next(n for n in work.graph.nodes if n.op == "get_attr" and n.target == s.weight) for s in skips]
        scaled = [next(u for u in weight.users if ops.is_mul(u)) for weight in weights]
        delta = _cut_readers(work, [(node, range(ops.channels_of(node))) for node in scaled], self.op_registry)
        for skip, weight, product in zip(skips, weights, scaled):
            for concat in [u for u in product.users if ops.is_cat(u)]:
                concat.args = ([n for n in concat.args[0] if n is not product], *concat.args[1:])
            work.graph.erase_node(product)
            work.graph.erase_node(weight)
            owner, _, name = skip.weight.rpartition(".")
            delattr(work.get_submodule(owner), name)
            delta -= 1

        def masked() -> fx.GraphModule:
            reference = clone(gm)
            with torch.no_grad():
                for skip in skips:
                    attribute(reference, skip.weight).zero_()
            return reference

        return Edit(delta, masked)


# --------------------------------------------------------------------------- helpers


def _structure(gm: fx.GraphModule) -> EnvelopeStructure:
    """The EnvelopeNet structure `gm` declares; a RewriteError for other graphs."""
    try:
        return envelope_structure(gm)
    except ArchError as err:
        raise RewriteError(str(err)) from None


def _cell(gm: fx.GraphModule, name: str) -> Cell:
    structure = _structure(gm)
    cell = structure.cell(name)
    if cell is None:
        raise RewriteError(f"no cell named {name!r}; the cells are: {', '.join(c.name for c in structure.cells)}")
    return cell


def _resolve_branches(cell: str, names: list[str], branches: Sequence[str | int]) -> set[str]:
    remove = set()
    for branch in branches:
        if isinstance(branch, int) and not isinstance(branch, bool):
            if not 0 <= branch < len(names):
                raise RewriteError(f"cell {cell!r} has branches 0..{len(names) - 1} ({', '.join(names)}); "
                                   f"there is no branch {branch}")
            branch = names[branch]
        if branch not in names:
            raise RewriteError(f"cell {cell!r} has no branch {branch!r}; its branches are: {', '.join(names)}")
        remove.add(branch)
    if not remove:
        raise RewriteError(f"no branches to prune in cell {cell!r}")
    if len(remove) >= len(names):
        raise RewriteError(f"cannot prune every branch of cell {cell!r}: the last branch of a cell is never pruned")
    return remove


def _zero_final_norm(masked: fx.GraphModule, output: fx.Node, branch: str) -> None:
    """Mask a branch in the reference graph: zero its final BatchNorm's scale and shift."""
    node = next(n for n in masked.graph.nodes if n.name == output.name)
    module = ops.module_of(masked, node)
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.affine:
        raise RewriteError(f"branch {branch!r} does not end in an affine BatchNorm, so it cannot be masked")
    with torch.no_grad():
        module.weight.zero_()
        module.bias.zero_()


def _cut_readers(work: fx.GraphModule, starts: list[tuple[fx.Node, Iterable[int]]], registry: Registry) -> int:
    """Cut the removed channels of each start node from there onward, in every layer that reads
    them, in one edit of the channel engine (a start losing all its channels is erased by the
    caller, so it is not edited); the parameter change."""
    deps = channel_dependencies(work, registry)
    removal: dict[str, set[int]] = {}
    for start, removed in starts:
        for name, channels in deps.downstream(start, removed).items():
            removal.setdefault(name, set()).update(channels)
    gone = {start.name for start, removed in starts if len(set(removed)) == ops.channels_of(start)}
    return cut_downstream(work, {k: sorted(v) for k, v in removal.items() if k not in gone}, registry)


def _erase_nodes(gm: fx.GraphModule, belongs) -> None:
    for node in reversed(list(gm.graph.nodes)):
        if belongs(node) and not node.users and node.op not in ("placeholder", "output"):
            gm.graph.erase_node(node)
