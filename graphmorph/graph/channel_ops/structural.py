"""Handlers of ops that move channels without weights: elementwise arithmetic, concatenation and
splitting, indexing, reductions, rolls and padding."""
from __future__ import annotations

import operator

import torch
from torch import fx

from graphmorph.graph import ops
from graphmorph.graph.channel_ops.protocols import ChannelOp

__all__ = ["Elementwise", "Concat", "Split", "Unbind", "GetItem", "Reduce", "Shift", "Pad", "is_channel_mean"]


class Elementwise(ChannelOp):
    """add, sub, mul, div with broadcasting: an operand with the output's channels shares them;
    a parameter shaped like `[1, C, 1, 1]` or `[C]` (layer scale, position embeddings), or a view
    of one, is sliced with them; size-1 channels broadcast."""

    def relate(self, rel, node):
        out_rank, out_c = rel.rank(node), rel.channels(node)
        for arg in node.all_input_nodes:
            shape = rel.shape(arg)
            if shape is None:
                continue
            dim = len(shape) - out_rank + rel.channel_axis(node)  # the operand dim lined up with the channels
            size = shape[dim] if 0 <= dim < len(shape) else 1
            if size == 1 and out_c != 1:
                continue
            if rel.is_constant(arg):
                rel.couple_parameter(node, arg, dim)
            elif dim == rel.channel_axis(arg) and rel.channels(arg) == out_c:
                rel.same(node, arg)
            else:
                rel.refuse(node, f"{rel.describe(node)} broadcasts {arg.name} of shape {tuple(shape)} "
                                 f"against channels")


class Concat(ChannelOp):
    """torch.cat: along dim 1 each input's channels land at an offset; along another dim they are shared."""

    def relate(self, rel, node):
        parts, axis = list(node.args[0]), rel.channel_axis(node)
        if any(not rel.is_constant(p) and rel.channel_axis(p) != axis for p in parts):
            rel.refuse(node, f"{rel.describe(node)} joins tensors whose channels run along different axes")
            return
        if ops.cat_dim(node, rel.rank(node)) != axis:   # e.g. a class token joined to the patch tokens
            for part in parts:
                if rel.is_constant(part):
                    rel.couple_parameter(node, part, axis)
                else:
                    rel.same(node, part)
            return
        if any(rel.is_constant(p) for p in parts):
            rel.refuse(node, f"{rel.describe(node)} joins parameters to the channels")
            return
        offset = 0
        for part in parts:
            width = rel.channels(part)
            rel.same(node, part, out_index=range(offset, offset + width))
            offset += width


class Split(ChannelOp):
    """torch.split / torch.chunk (function or method); the getitem nodes that read the pieces
    take the matching slices of the input's channels."""

    def relate(self, rel, node):
        source = node.args[0]
        pieces = list(node.users)
        if any(not (u.op == "call_function" and u.target is operator.getitem) for u in pieces):
            rel.refuse(node, f"{rel.describe(node)} is used other than by indexing its pieces")
            return
        along_channels = rel.splits_channels(node)
        sizes = rel.piece_channels(node)
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        for piece in pieces:
            k = piece.args[1]
            rel.set_axis(piece, rel.channel_axis(source))
            if along_channels:
                rel.same(piece, source, in_index=range(offsets[k], offsets[k] + sizes[k]))
            else:
                rel.same(piece, source)

    def check(self, edit, node):
        if not edit.splits_channels(node):
            return None
        if any(size == 0 for size in self._new_sizes(edit, node)):
            return f"{node.name} would leave a piece of its split without channels"
        return None

    def resize(self, edit, node):
        if not edit.splits_channels(node) or not edit.changed(node.args[0]):
            return
        sizes = self._new_sizes(edit, node)
        edit.replace_call(node, torch.split, (node.args[0], sizes, edit.channel_axis(node.args[0])))

    @staticmethod
    def _new_sizes(edit, node) -> list[int]:
        sizes = edit.piece_channels(node)
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        index = edit.index(node.args[0])
        return [sum(1 for c in index if o <= c < o + s) for o, s in zip(offsets, sizes)]


class Unbind(ChannelOp):
    """unbind along a dimension other than the channels' (q, k and v out of one qkv tensor): the
    getitem nodes that read the pieces keep the channels."""

    def relate(self, rel, node):
        source = node.args[0]
        rank, axis = rel.rank(source), rel.channel_axis(source)
        dim = ops.argument(node, 1, "dim", 0) % rank
        if dim == axis or any(not (u.op == "call_function" and u.target is operator.getitem) for u in node.users):
            rel.refuse(node, f"{rel.describe(node)} unbinds the channels or is used other than by indexing its pieces")
            return
        for piece in node.users:
            rel.set_axis(piece, axis - (dim < axis))
            rel.same(piece, source)


class GetItem(ChannelOp):
    """Indexing a split's pieces is handled by the split; indexing a tensor with integers and
    slices keeps the channels where the channel axis is left whole (`x[:, 0]`, a class token;
    `x[:, 0::2, 0::2, :]`) or sliced with step 1 (`x[:, :C]`, GhostNet: output channel i is input
    channel start + i, and a cut moves the bounds); any other indexing is refused."""

    def relate(self, rel, node):
        source = node.args[0]
        if source.op in ("call_function", "call_method") and isinstance(rel.handler(source), (Split, Unbind)):
            return
        if rel.channels(source) is None:
            if rel.channels(node) is not None:
                rel.refuse(node, f"{rel.describe(node)} indexes a tensor")
            return
        index, axis = self._index(node), rel.channel_axis(source)
        simple = all(isinstance(i, (int, slice)) and not isinstance(i, bool) for i in index)
        across = axis < len(index) and not (isinstance(index[axis], slice) and index[axis].step in (None, 1))
        if not simple or across or rel.channels(node) is None:
            rel.refuse(node, f"{rel.describe(node)} indexes a tensor across its channels")
            return
        rel.set_axis(node, axis - sum(isinstance(i, int) for i in index[:axis]))
        start = self._channel_slice(rel, node).indices(rel.channels(source))[0]
        rel.same(node, source, in_index=range(start, start + rel.channels(node)))

    def resize(self, edit, node):
        source = node.args[0]
        if not edit.changed(source) or source.op in ("call_function", "call_method") \
                and isinstance(edit.handler(source), (Split, Unbind)):
            return
        start = self._channel_slice(edit, node).indices(edit.channels(source))[0]
        new_start = sum(c < start for c in edit.index(source))
        index = list(self._index(node))
        index += [slice(None)] * (edit.channel_axis(source) + 1 - len(index))
        index[edit.channel_axis(source)] = slice(new_start, new_start + len(edit.index(node)))
        node.args = (source, tuple(index))

    @staticmethod
    def _index(node: fx.Node) -> tuple:
        return node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)

    def _channel_slice(self, questions, node: fx.Node) -> slice:
        index, axis = self._index(node), questions.channel_axis(node.args[0])
        return index[axis] if axis < len(index) else slice(None)


class Reduce(ChannelOp):
    """mean / sum / amax / norm over dimensions other than batch and channels keeps the channels.
    A mean over the channels kept as a size-1 dimension (ConvNeXt-V2's global response norm) is a
    statistic of them, like a layer norm's: after a cut it runs over the kept channels, and the
    pruning reference computes it so (`is_channel_mean`). Any other reduction over them is refused.
    `dim_at` is the position of the `dim` argument (2 for `norm(p, dim)`)."""

    def __init__(self, dim_at: int = 1):
        self.dim_at = dim_at

    def check(self, edit, node):
        source = node.args[0]
        if edit.grows and edit.changed(source) and is_channel_mean(node, edit.channel_axis(source), edit.rank(source)):
            return f"{edit.describe(node)} averages over the channels: new channels would change its value"
        return None

    def relate(self, rel, node):
        source = node.args[0]
        dims = ops.argument(node, self.dim_at, "dim")
        rank, axis = rel.rank(source), rel.channel_axis(source)
        dims = [dims] if isinstance(dims, int) else dims
        keepdim = ops.argument(node, self.dim_at + 1, "keepdim", False)
        if is_channel_mean(node, axis, rank):
            return
        if dims is None or any(d % rank in (0, axis) for d in dims):
            rel.refuse(node, f"{rel.describe(node)} reduces over the batch or channel dimension")
            return
        rel.set_axis(node, axis if keepdim else axis - sum(1 for d in dims if d % rank < axis))
        rel.same(node, source)


def is_channel_mean(node: fx.Node, axis: int, rank: int) -> bool:
    """A mean over the channel `axis` alone (of a rank-`rank` input), kept as a size-1 dimension."""
    if not (node.op == "call_method" and node.target == "mean") and node.target is not torch.mean:
        return False
    dims = ops.argument(node, 1, "dim")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    return [d % rank for d in dims] == [axis] and ops.argument(node, 2, "keepdim", False) is True


class Shift(ChannelOp):
    """torch.roll over dimensions other than the channels' (a shifted window) keeps them."""

    def relate(self, rel, node):
        source = node.args[0]
        dims = ops.argument(node, 2, "dims")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if not dims or rel.channel_axis(source) in [d % rel.rank(source) for d in dims]:
            rel.refuse(node, f"{rel.describe(node)} rolls the channels")
        else:
            rel.same(node, source)


class Pad(ChannelOp):
    """F.pad of dimensions other than the channels' (a channels-last map padded to whole windows)."""

    def relate(self, rel, node):
        source, pad = node.args[0], ops.argument(node, 1, "pad")
        at = 2 * (rel.rank(source) - 1 - rel.channel_axis(source))
        if not isinstance(pad, (tuple, list)) or any(pad[at:at + 2]):
            rel.refuse(node, f"{rel.describe(node)} pads the channels")
        else:
            rel.same(node, source)
