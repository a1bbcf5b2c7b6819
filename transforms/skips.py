"""Remove an input of a merge on any model: a skip edge of an add or a concatenation
(`prune_skip_edges`), or a whole residual block (`remove_block`, the inverse of `grow`).

Contract (checked by `graphmorph.graph.verify`): the new graph computes exactly what the old graph
computes with the removed input multiplied by zero where it enters the merge, in float64, in eval
mode and, when the graph has no dropout, in train mode. Removing a concatenation input also
removes its channels from every reader downstream (BatchNorm statistics, convolution and linear
input columns); a path that adds them to another tensor, or an op the channel registry cannot
follow, is refused with the node named.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
from torch import fx

from graphmorph.graph import ops
from graphmorph.graph.analysis import block_named, find_stages
from graphmorph.graph.channel_surgery import apply_edit, check_edit, kept_index
from graphmorph.graph.channels import channel_dependencies
from graphmorph.graph.copying import clone
from graphmorph.graph.registry import Registry
from graphmorph.errors import RewriteError
from graphmorph.graph.shapes import Inputs
from graphmorph.graph.verify import annotate_rewritten, parameter_count
from transforms.channel_pruning import mask_channels
from transforms.protocol import Edit, Rewrite, Step, apply, register

__all__ = ["prune_skip_edges", "remove_block", "zero_inputs", "cut_downstream", "PruneSkipEdges", "RemoveBlock"]


def prune_skip_edges(gm: fx.GraphModule, edges: Iterable[tuple[str, str]], *,
                     example_input: torch.Tensor | Inputs | None = None, verify: bool = True,
                     registry: Registry | None = None) -> fx.GraphModule:
    """A new graph without the given skip edges, each `(merge node, input node)` by fx node name:
    an input of an add (the add becomes its other input) or of a concatenation along channels
    (its channels leave every reader downstream, followed with `registry`'s channel handlers)."""
    rewrite = PruneSkipEdges(tuple(tuple(e) for e in edges), registry=registry)
    return apply(gm, rewrite, example_input=example_input, verify=verify)


def remove_block(gm: fx.GraphModule, block: str, *, example_input: torch.Tensor | Inputs | None = None,
                 verify: bool = True, registry: Registry | None = None) -> fx.GraphModule:
    """A new graph without the shape-preserving residual block `block` (a name from `find_blocks`):
    its residual branch goes, its identity shortcut and any op after the add (a trailing ReLU) stay."""
    return apply(gm, RemoveBlock(block, registry=registry), example_input=example_input, verify=verify)


class _InputRemoval(Rewrite):
    """Drops inputs of merges (`_edges`: (merge, input) node names); the contract is the source
    with each input multiplied by zero where it enters its merge and, for a concatenation, its
    channels masked wherever they flow after it (through a BatchNorm, whose shift would turn the
    zeros into values, as the pruned graph no longer has them)."""

    def _edges(self, gm: fx.GraphModule) -> list[tuple[str, str]]:
        raise NotImplementedError

    def check(self, gm: fx.GraphModule) -> str | None:
        nodes = ops.nodes_by_name(gm.graph)
        for merge_name, source_name in self._edges(gm):
            merge, source = nodes.get(merge_name), nodes.get(source_name)
            if merge is None or not (ops.is_add(merge) or ops.is_cat(merge)):
                merges = [n.name for n in gm.graph.nodes if ops.is_add(n) or ops.is_cat(n)]
                return (f"no add or concatenation node named {merge_name!r}; the merges are: "
                        f"{', '.join(merges[:12]) or 'none'}")
            if source is None or source not in merge.all_input_nodes:
                return (f"{source_name!r} is not an input of {merge_name!r}; its inputs are: "
                        f"{', '.join(i.name for i in merge.all_input_nodes)}")
        return None

    def edit(self, step: Step) -> Edit:
        gm, work = step.source, step.work
        edges = self._edges(gm)
        delta = 0
        for k, (merge, source) in enumerate(edges):
            if k:  # the previous drop changed shapes downstream of it
                work.recompile()
                annotate_rewritten(gm, work, step.inputs, self.describe())
            delta += _drop_input(work, merge, source, self.op_registry)
        stochastic = any(self.op_registry.has(gm, n, "stochastic") for n in gm.graph.nodes)
        downstream: dict[str, set[int]] = {}
        nodes = ops.nodes_by_name(gm.graph)
        for merge, source in edges:
            if ops.is_cat(nodes[merge]):
                for name, channels in _cat_removal(gm, nodes[merge], nodes[source], self.op_registry).items():
                    downstream.setdefault(name, set()).update(channels)
        removal = {name: sorted(channels) for name, channels in downstream.items()}
        return Edit(delta, lambda: mask_channels(zero_inputs(gm, edges), removal),
                    ("eval",) if stochastic else ("eval", "train"))


@register
@dataclass(frozen=True)
class PruneSkipEdges(_InputRemoval):
    """Drop each `(merge, input)` edge, by fx node names, of an add or a channel concatenation."""

    name: ClassVar[str] = "prune_skip_edges"
    edges: tuple[tuple[str, str], ...]

    def check(self, gm: fx.GraphModule) -> str | None:
        return "no skip edges to prune" if not self.edges else super().check(gm)

    def _edges(self, gm: fx.GraphModule) -> list[tuple[str, str]]:
        return [tuple(e) for e in self.edges]


@register
@dataclass(frozen=True)
class RemoveBlock(_InputRemoval):
    """Remove the residual branch of the identity-shortcut block `block` (the inverse of grow)."""

    name: ClassVar[str] = "remove_block"
    block: str

    def _edges(self, gm: fx.GraphModule) -> list[tuple[str, str]]:
        found = block_named(gm, self.block, registry=self.op_registry)
        if not found.residual or found.shortcut != "identity":
            raise RewriteError(f"block {self.block!r} is a {found.kind} block with a {found.shortcut or 'no'} "
                               "shortcut; only residual blocks with an identity shortcut can be removed")
        stage = next((s for s in find_stages(gm, self.op_registry) if s.blocks == (self.block,)), None)
        if stage is not None:
            raise RewriteError(f"block {self.block!r} is the only block of stage {stage.index}; a stage keeps one "
                               "block at least")
        names = set(found.nodes)
        nodes = ops.nodes_by_name(gm.graph)
        merge = next((nodes[n] for n in found.nodes if ops.is_add(nodes[n])
                      and any(i.name not in names for i in nodes[n].all_input_nodes)), None)
        if merge is None:
            raise RewriteError(f"block {self.block!r} has no add that joins its shortcut")
        branch = next(i for i in merge.all_input_nodes if i.name in names)
        return [(merge.name, branch.name)]


# --------------------------------------------------------------------------- implementation


def _drop_input(work: fx.GraphModule, merge_name: str, source_name: str, registry: Registry) -> int:
    """Drop input `source_name` of merge `merge_name` in `work` (shapes current); the parameter change."""
    nodes = ops.nodes_by_name(work.graph)
    merge, source = nodes.get(merge_name), nodes.get(source_name)
    if merge is None or source is None or source not in merge.all_input_nodes:
        raise RewriteError(f"edge ({merge_name!r}, {source_name!r}) is gone once the edges before it are dropped")
    if ops.is_add(merge):
        delta = _drop_add_input(work, merge, source)
    else:
        delta = _drop_cat_input(work, merge, source, registry)
    return delta + _erase_dead(work, source)


def _drop_add_input(work, merge: fx.Node, source: fx.Node) -> int:
    tensors = [a for a in (*merge.args, *merge.kwargs.values()) if isinstance(a, fx.Node)]
    other = [a for a in tensors if a is not source]
    if len(tensors) != 2 or len(other) != 1 or merge.kwargs.get("alpha", 1) != 1:
        raise RewriteError(f"{merge.name} is not a plain add of two tensors")
    if merge.meta["tensor_meta"].shape != other[0].meta["tensor_meta"].shape:
        raise RewriteError(f"{merge.name} broadcasts {other[0].name} to a larger shape; dropping "
                           f"{source.name} would change the output shape")
    merge.replace_all_uses_with(other[0])
    work.graph.erase_node(merge)
    return 0


def _drop_cat_input(work, merge: fx.Node, source: fx.Node, registry: Registry) -> int:
    """Cut the input's channels from the concatenation onward, in every layer that reads them."""
    removal = _cat_removal(work, merge, source, registry)
    delta = cut_downstream(work, removal, registry)
    merge.args = ([p for p in merge.args[0] if p is not source], *merge.args[1:])
    return delta


def _cat_removal(gm: fx.GraphModule, merge: fx.Node, source: fx.Node, registry: Registry) -> dict[str, list[int]]:
    """The channels `source` brings to the concatenation `merge`, from there to their readers."""
    dim = ops.cat_dim(merge, len(merge.meta["tensor_meta"].shape))
    parts = list(merge.args[0])
    if dim != 1:
        raise RewriteError(f"{merge.name} concatenates along dim {dim}; only channel concatenations can lose an input")
    if len(parts) < 2:
        raise RewriteError(f"{merge.name} has a single input; there is no skip to drop")
    offset = sum(p.meta["tensor_meta"].shape[1] for p in parts[:parts.index(source)])
    width = source.meta["tensor_meta"].shape[1]
    return channel_dependencies(gm, registry).downstream(merge, range(offset, offset + width))


def cut_downstream(work: fx.GraphModule, removal: dict[str, list[int]], registry: Registry) -> int:
    """Cut `removal` (node name -> channels, from `ChannelDependencies.downstream` on `work`) from
    `work`, after the channel engine's checks; the parameter change."""
    deps = channel_dependencies(work, registry)
    index = kept_index(work, removal, deps.layout)
    reason = check_edit(work, deps, index)
    if reason:
        raise RewriteError(str(reason), reason)
    return apply_edit(work, index, deps.registry, deps.layout).param_delta


def zero_inputs(gm: fx.GraphModule, edges: list[tuple[str, str]]) -> fx.GraphModule:
    """The contract's reference: `gm` with each edge's input multiplied by zero where it enters its merge."""
    masked = clone(gm)
    nodes = ops.nodes_by_name(masked.graph)
    for merge_name, source_name in edges:
        merge, source = nodes[merge_name], nodes[source_name]
        with masked.graph.inserting_before(merge):
            zeroed = masked.graph.call_function(operator.mul, (source, 0.0))
        merge.replace_input_with(source, zeroed)
    masked.recompile()
    return masked


def _erase_dead(work: fx.GraphModule, start: fx.Node) -> int:
    """Erase `start` and its ancestors once nothing uses them, and the modules and attributes only
    they used; returns the parameter change."""
    before = parameter_count(work)
    stack, targets, erased = [start], set(), set()
    while stack:
        node = stack.pop()
        if node in erased or node.users or node.op in ("placeholder", "output"):
            continue
        inputs = node.all_input_nodes
        if node.op in ("call_module", "get_attr"):
            targets.add(str(node.target))
        work.graph.erase_node(node)
        erased.add(node)
        stack.extend(inputs)
    used = {str(n.target) for n in work.graph.nodes if n.op in ("call_module", "get_attr")}
    for target in sorted(targets - used, key=len, reverse=True):
        owner, _, name = target.rpartition(".")
        delattr(work.get_submodule(owner) if owner else work, name)
    return parameter_count(work) - before
