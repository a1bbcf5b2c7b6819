"""Handlers of ops that reshape tensors: views and flattening (heads, windows, features), expands and
permutes, with the size arguments they carry."""
from __future__ import annotations

import math

import torch
from torch import fx

from graphmorph.graph import ops
from graphmorph.graph.channel_ops.protocols import ChannelOp

__all__ = ["Reshape", "Expand", "Permute", "Unsqueeze"]


class Reshape(ChannelOp):
    """view / reshape / flatten. The channel axis stays whole where the reshape keeps it as one
    dimension (a window partition of a channels-last map, tokens to a grid). Channels merged with
    the dimensions after them (flattened into a Linear) map one channel to a run of features, and
    features unflattened into channels and space map a run back to one channel. Channels split into
    heads (`(B, N, 3C) -> (B, N, 3, H, D)`, `(B, 3C, H, W) -> (B, H, 3D, HW)`, a channel shuffle's
    `(B, G, C/G, H, W)`) run along the split's last dimension, feature d of every head one channel
    (so every head keeps as many), and heads merged back map feature f to channel f % D. Any other
    reshape is refused.

    With `heads=True` (`Registry.with_heads()`) a head is the unit instead: channels split into
    heads run along the heads' dimension, channel c of head c // D, so a cut removes whole heads
    and keeps their size; heads merged back (and grouped-query attention's repeated key/value
    heads) follow as channels merged with the dimensions after them."""

    def __init__(self, heads: bool = False):
        self.heads = heads

    def relate(self, rel, node):
        source = node.args[0]
        before, after = rel.shape(source), rel.shape(node)
        if after is None or len(after) < 2:
            rel.refuse(node, f"{rel.describe(node)} folds channels into the batch dimension")
            return
        axis = rel.channel_axis(source)
        channels, prefix = before[axis], math.prod(before[:axis])
        tokens_last = 2 <= axis == len(before) - 1
        for j in range(1, len(after)):
            head = math.prod(after[:j])
            if head == prefix and after[j] == channels:
                return self._relate(rel, node, j)
            merged = _run_length(before[axis:], after[j]) if head == prefix else None    # with the dims after
            if merged:
                per = after[j] // channels
                return self._relate(rel, node, j, range(after[j]), [f // per for f in range(after[j])])
            split = _run_length(after[j:], channels) if head == prefix else None         # into several dims
            if split and (j + split < len(after) or tokens_last):                        # heads
                width = after[j + split - 1]
                if self.heads:
                    count = after[j + split - 2]
                    return self._relate(rel, node, j + split - 2, [c // width % count for c in range(channels)])
                return self._relate(rel, node, j + split - 1, [c % width for c in range(channels)])
            if split:                                                                    # and space
                per = channels // after[j]
                return self._relate(rel, node, j, [c // per for c in range(channels)])
            if any(math.prod(before[:k]) == head and math.prod(before[k:axis + 1]) == after[j]
                   for k in range(1, axis)):                                             # heads merged
                return self._relate(rel, node, j, range(after[j]), [f % channels for f in range(after[j])])
        rel.refuse(node, f"{rel.describe(node)} folds channels into other dimensions "
                         f"({tuple(before)} -> {tuple(after)})")

    @staticmethod
    def _relate(rel, node: fx.Node, axis: int, out_index=None, in_index=None) -> None:
        rel.set_axis(node, axis)
        rel.same(node, node.args[0], out_index, in_index)

    def resize(self, edit, node):
        if node.target in ("flatten", torch.flatten) or node.op == "call_module":
            return
        _resize_size_argument(edit, node)


class Expand(ChannelOp):
    """expand / repeat-free broadcasting of a tensor to a larger shape with its channels kept."""

    def relate(self, rel, node):
        source = node.args[0]
        axis = rel.channel_axis(source)
        if rel.rank(node) != rel.rank(source) or rel.shape(node)[axis] != rel.channels(source):
            rel.refuse(node, f"{rel.describe(node)} broadcasts across the channel dimension")
        else:
            rel.same(node, source)

    def resize(self, edit, node):
        _resize_size_argument(edit, node)


class Unsqueeze(ChannelOp):
    """unsqueeze / squeeze of a dimension other than the channels': the channels keep their place
    among the other dimensions (grouped-query attention's `k[:, :, None].expand(...)`)."""

    def relate(self, rel, node):
        source = node.args[0]
        axis, dim = rel.channel_axis(source), ops.argument(node, 1, "dim")
        if node.target in ("unsqueeze", torch.unsqueeze):
            new_axis = axis + (dim % rel.rank(node) <= axis)
        else:
            shape = rel.shape(source)
            dims = [d for d, size in enumerate(shape) if size == 1] if dim is None else \
                [d % len(shape) for d in (dim if isinstance(dim, (tuple, list)) else (dim,)) if shape[d] == 1]
            if axis in dims:
                rel.refuse(node, f"{rel.describe(node)} squeezes the channel dimension away")
                return
            new_axis = axis - sum(d < axis for d in dims)
        rel.set_axis(node, new_axis)
        rel.same(node, source)


class Permute(ChannelOp):
    """permute / transpose / swapaxes: the channels move to another axis (channels-last blocks, tokens)."""

    def relate(self, rel, node):
        source = node.args[0]
        rank, axis = rel.rank(source), rel.channel_axis(source)
        rel.set_axis(node, self.order(node, rank).index(axis))
        rel.same(node, source)

    @staticmethod
    def order(node: fx.Node, rank: int) -> list[int]:
        """The source dimension each output dimension takes."""
        if node.target in ("transpose", "swapaxes", "swapdims", torch.transpose, torch.swapaxes, torch.swapdims):
            a, b = (d % rank for d in node.args[1:3])
            order = list(range(rank))
            order[a], order[b] = b, a
            return order
        dims = node.args[1:] if node.op == "call_method" else (node.args[1],) if len(node.args) > 1 \
            else (node.kwargs["dims"],)
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return [d % rank for d in dims]


def _run_length(dims: tuple[int, ...], total: int) -> int | None:
    """How many (two or more) of the first `dims` multiply to `total`, else None."""
    return next((m for m in range(2, len(dims) + 1) if math.prod(dims[:m]) == total), None)


def _resize_size_argument(edit, node: fx.Node) -> None:
    """Set a view/reshape/expand's explicit size at the node's channel axis to its new channel count
    where its channels change, or where the size is read from the shape of a tensor whose channels
    change (`C` of `B, N, C = x.shape` in `reshape(B, N, C)`, which may be another width than the node's)."""
    sizes = list(node.args[1:])
    nested = len(sizes) == 1 and isinstance(sizes[0], (tuple, list))
    sizes = list(sizes[0]) if nested else sizes
    axis = edit.channel_axis(node)
    if axis >= len(sizes):
        return
    size = sizes[axis]
    if (size != -1 and edit.changed(node)) or (isinstance(size, fx.Node) and _reads_changed_shape(edit, size)):
        sizes[axis] = len(edit.index(node))
        node.args = (node.args[0], tuple(sizes)) if nested else (node.args[0], *sizes)


def _reads_changed_shape(edit, size: fx.Node) -> bool:
    """Whether a size argument is computed from the shape of a tensor whose channels change."""
    stack, seen = [size], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if edit.shape(current) is not None:
            if edit.changed(current):
                return True
        else:
            stack.extend(current.all_input_nodes)
    return False
