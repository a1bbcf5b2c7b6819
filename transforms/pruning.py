"""Pruning rewrites for EnvelopeNets (NAC section 2): branches of a cell, and scaled skip inputs.

Contract (checked by `graphmorph.graph.verify` after every call): the pruned graph computes exactly what
the old graph computes with the pruned branches' outputs (their final BatchNorm's scale and
shift) or the pruned skips' scalars set to zero, in float64, in eval and train mode.

The removed channels are followed forward from the pruned tensor through scalar multiplies and
concatenations (with their channel offsets) to the 1x1 convolutions that read them, which lose
exactly those input channels.
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
from transforms.protocol import Edit, Rewrite, Step, apply, register
from transforms.skips import prune_skip_edges

__all__ = ["prune_branches", "prune_skips", "PruneBranches", "PruneSkips"]


def prune_branches(gm: fx.GraphModule, cell: str, branches: Sequence[str | int], *,
                   example_input: torch.Tensor | Inputs | None = None, verify: bool = True) -> fx.GraphModule:
    """A new graph without the named (or numbered) branches of `cell` (e.g. "stage0.cell1"); the
    cell's concatenation and every reader of it lose those channels. The last branch of a cell is
    never pruned."""
    names = _branch_names(gm, cell)
    remove = _resolve_branches(cell, names, branches)
    rewrite = PruneBranches(cell, tuple(sorted(remove, key=names.index)))
    return apply(gm, rewrite, example_input=example_input, verify=verify)


def prune_skips(gm: fx.GraphModule, skips: Iterable[tuple[str, str]], *,
                example_input: torch.Tensor | Inputs | None = None, verify: bool = True) -> fx.GraphModule:
    """A new graph without the given skip inputs. On an EnvelopeNet each is `(reduction, source)`
    such as `("stage0.reduce2", "input")`: the scaled input, its scalar, and the reduction conv's
    channels for it go. On any model each is `(merge node, input node)`, fx node names of an add or
    a channel concatenation and one of its inputs (see `transforms.skips.prune_skip_edges`)."""
    skips = tuple(tuple(s) for s in skips)
    merges = {n.name for n in gm.graph.nodes if ops.is_add(n) or ops.is_cat(n)}
    if skips and all(reduce in merges for reduce, _ in skips):
        return prune_skip_edges(gm, skips, example_input=example_input, verify=verify)
    return apply(gm, PruneSkips(skips), example_input=example_input, verify=verify)


@register
@dataclass(frozen=True)
class PruneBranches(Rewrite):
    """Remove the named branches of EnvelopeNet cell `cell`; the contract is the source with their
    final BatchNorms' scale and shift set to zero."""

    name: ClassVar[str] = "prune_branches"
    cell: str
    branches: tuple[str, ...]

    def check(self, gm: fx.GraphModule) -> str | None:
        _resolve_branches(self.cell, _branch_names(gm, self.cell), self.branches)
        return None

    def edit(self, step: Step) -> Edit:
        gm, work, cell = step.source, step.work, self.cell
        concat = _cell_concat(work, cell)
        outputs = list(concat.args[0])
        names = [_branch_name(node, cell) for node in outputs]
        remove = set(self.branches)
        removed, start = set(), 0
        for name, node in zip(names, outputs):
            if name in remove:
                removed.update(range(start, start + _channels(node)))
            start += _channels(node)

        def masked() -> fx.GraphModule:
            reference = clone(gm)
            for name in remove:
                _zero_final_norm(reference, outputs[names.index(name)], f"{cell}.{name}")
            return reference

        delta = _narrow_readers(work, concat, removed)
        concat.args = ([node for node, name in zip(outputs, names) if name not in remove], *concat.args[1:])
        for name in remove:
            prefix = f"{cell}.{name}"
            delta -= sum(p.numel() for p in work.get_submodule(prefix).parameters())
            _erase_nodes(work, lambda n: ops.module_path(n) == prefix or ops.module_path(n).startswith(prefix + "."))
            work.delete_submodule(prefix)
        return Edit(delta, masked)


@register
@dataclass(frozen=True)
class PruneSkips(Rewrite):
    """Remove EnvelopeNet skip inputs `(reduction, source)`: the scaled input, its scalar and the
    reduction conv's columns for it; the contract is the source with those scalars set to zero."""

    name: ClassVar[str] = "prune_skips"
    skips: tuple[tuple[str, str], ...]

    def check(self, gm: fx.GraphModule) -> str | None:
        scalars = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr" and ".w_" in str(n.target)}
        for reduce, source in self.skips:
            if f"{reduce}.w_{source}" not in scalars:
                known = sorted(f"({t.rpartition('.w_')[0]!r}, {t.rpartition('.w_')[2]!r})" for t in scalars)
                return f"no skip ({reduce!r}, {source!r}); the skips are: {', '.join(known) or 'none'}"
        return None

    def edit(self, step: Step) -> Edit:
        gm, work, delta = step.source, step.work, 0
        for reduce, source in self.skips:
            scalar = f"{reduce}.w_{source}"
            weight = next(n for n in work.graph.nodes if n.op == "get_attr" and n.target == scalar)
            scaled = next(u for u in weight.users if ops.is_mul(u))
            delta += _narrow_readers(work, scaled, set(range(_channels(scaled))))
            for concat in [u for u in scaled.users if ops.is_cat(u)]:
                concat.args = ([n for n in concat.args[0] if n is not scaled], *concat.args[1:])
            work.graph.erase_node(scaled)
            work.graph.erase_node(weight)
            owner, _, name = scalar.rpartition(".")
            delattr(work.get_submodule(owner), name)
            delta -= 1

        def masked() -> fx.GraphModule:
            reference = clone(gm)
            with torch.no_grad():
                for reduce, source in self.skips:
                    attribute(reference, f"{reduce}.w_{source}").zero_()
            return reference

        return Edit(delta, masked)


# --------------------------------------------------------------------------- helpers


def _cell_concat(gm: fx.GraphModule, cell: str) -> fx.Node:
    for node in gm.graph.nodes:
        if ops.is_cat(node) and ops.module_path(node) == cell:
            return node
    cells = sorted({ops.module_path(n) for n in gm.graph.nodes if ops.is_cat(n) and ".cell" in ops.module_path(n)})
    raise RewriteError(f"no cell named {cell!r}; the cells are: {', '.join(cells) or 'none'}")


def _branch_names(gm: fx.GraphModule, cell: str) -> list[str]:
    return [_branch_name(node, cell) for node in _cell_concat(gm, cell).args[0]]


def _branch_name(node: fx.Node, cell: str) -> str:
    path = ops.module_path(node)
    return path[len(cell) + 1:].split(".")[0]


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


def _narrow_readers(gm: fx.GraphModule, start: fx.Node, removed: set[int]) -> int:
    """Follow the removed channels of `start` to the convolutions that read them and drop those
    input channels there; returns the parameter change."""
    delta, stack = 0, [(start, removed)]
    while stack:
        node, channels = stack.pop()
        for user in list(node.users):
            if ops.is_cat(user) and ops.cat_dim(user, len(user.meta["tensor_meta"].shape)) == 1:
                offset = 0
                for part in user.args[0]:
                    if part is node:
                        break
                    offset += _channels(part)
                stack.append((user, {offset + c for c in channels}))
            elif ops.is_mul(user) and all(_is_scalar(a) for a in user.args if a is not node):
                stack.append((user, channels))
            elif user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.Conv2d):
                delta += _drop_input_channels(gm, str(user.target), channels)
            else:
                raise RewriteError(f"cannot narrow {user.name} ({user.op} {user.target}), which reads pruned channels")
    return delta


def _drop_input_channels(gm: fx.GraphModule, target: str, removed: set[int]) -> int:
    conv = gm.get_submodule(target)
    if conv.groups != 1:
        raise RewriteError(f"{target} is a grouped convolution; its input channels cannot be dropped one by one")
    keep = [c for c in range(conv.in_channels) if c not in removed]
    narrow = nn.Conv2d(len(keep), conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        narrow.weight.copy_(conv.weight[:, keep])
        if conv.bias is not None:
            narrow.bias.copy_(conv.bias)
    owner, _, name = target.rpartition(".")
    setattr(gm.get_submodule(owner) if owner else gm, name, narrow)
    return narrow.weight.numel() - conv.weight.numel()


def _erase_nodes(gm: fx.GraphModule, belongs) -> None:
    for node in reversed(list(gm.graph.nodes)):
        if belongs(node) and not node.users and node.op not in ("placeholder", "output"):
            gm.graph.erase_node(node)


def _channels(node: fx.Node) -> int:
    return node.meta["tensor_meta"].shape[1]


def _is_scalar(arg) -> bool:
    if isinstance(arg, (int, float)):
        return True
    meta = arg.meta.get("tensor_meta") if isinstance(arg, fx.Node) else None
    return meta is not None and len(meta.shape) == 0
