"""How each op relates and cuts channels: the registry behind channel dependencies and pruning.

A handler answers two questions about one kind of fx node. `relate` tells the dependency analysis
how the node's output channels relate to its inputs' (`Relations`: the same channel, an offset,
fresh channels, channels it reads and can drop, or a refusal with the reason). `cut` edits the
node once a set of channels is removed (`Cut`: the removed indices per node, module and tensor
replacement). `check` may refuse a cut before anything is edited.

Handlers are keyed by module type, by function, or by method name in a `Registry`
(`graphmorph.graph.registry`), which users extend with their own layers; an op without a handler
that touches channels makes its groups unprunable, with a reason that names it.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphmorph.graph import ops

if TYPE_CHECKING:  # pragma: no cover
    from graphmorph.graph.channel_surgery import Cut
    from graphmorph.graph.channels import Relations
    from graphmorph.graph.registry import Registry

__all__ = ["ChannelOp", "PassThrough", "Refuse", "Ignore", "Elementwise", "Concat", "Split", "GetItem", "Reduce",
           "Reshape", "Expand", "Permute", "Shift", "Unbind", "MatMul", "Pad",
           "ScaledDotProductAttention", "Convolution", "TransposedConvolution", "Linear", "ChannelNorm",
           "output_weight", "is_channel_norm", "is_channel_mean", "TensorQuestions", "ChannelLayout", "describe",
           "DEFAULT_MODULES", "DEFAULT_FUNCTIONS", "DEFAULT_METHODS"]

@dataclass(frozen=True)
class ChannelLayout:
    """Where channels run in each tensor: `axes` maps a node name to its channel axis where it is
    not 1 (channels-last blocks, tokens-then-features tensors); `parameter_dims` maps a constant
    node (a parameter or buffer, or a view of one) to the dimension indexed by the channels it meets."""

    axes: dict[str, int] = field(default_factory=dict)
    parameter_dims: dict[str, int] = field(default_factory=dict)


class TensorQuestions:
    """Shape questions about the nodes of `self.gm` (shapes as captured, before any edit), and
    their handlers in `self.registry`."""

    gm: fx.GraphModule
    registry: "Registry"
    layout: ChannelLayout = ChannelLayout()

    def handler(self, node: fx.Node) -> "ChannelOp | None":
        return self.registry.channel_op(self.gm, node)

    @staticmethod
    def shape(node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        shape = getattr(meta, "shape", None)
        return tuple(shape) if shape is not None else None

    def rank(self, node) -> int:
        return len(self.shape(node) or ())

    def is_constant(self, node: fx.Node) -> bool:
        """A parameter, buffer or a tensor computed from them alone (not from the model's input)."""
        return node.op == "get_attr" or node.name in self.layout.parameter_dims

    def channel_axis(self, node: fx.Node) -> int:
        """The dimension holding the node's channels: 1 unless the layout says otherwise."""
        dims = self.layout.parameter_dims
        return dims[node.name] if node.name in dims else self.layout.axes.get(node.name, 1)

    def channels(self, node) -> int | None:
        """Channel count of a data tensor of rank >= 2, else None (parameters and sizes included)."""
        if not isinstance(node, fx.Node) or self.is_constant(node):
            return None
        shape = self.shape(node)
        axis = self.channel_axis(node)
        return shape[axis] if shape is not None and len(shape) >= 2 and axis < len(shape) else None

    def piece_channels(self, split: fx.Node) -> list[int]:
        """Channel counts of a split's pieces, along the split dimension."""
        dim = _split_dim(split, self.rank(split.args[0]))
        return [m.shape[dim] for m in split.meta["tensor_meta"]]

    def splits_channels(self, split: fx.Node) -> bool:
        """Whether a split cuts along its input's channel axis."""
        return _split_dim(split, self.rank(split.args[0])) == self.channel_axis(split.args[0])

    def describe(self, node: fx.Node) -> str:
        return describe(self.gm, node)


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """A node for messages: its name and what it calls."""
    if node.op == "call_module":
        return f"{node.name} ({type(gm.get_submodule(node.target)).__name__} {node.target})"
    return f"{node.name} ({getattr(node.target, '__name__', node.target)})"


class ChannelOp:
    """How one kind of node relates and cuts channels; subclass it for a layer of your own."""

    def relate(self, rel: "Relations", node: fx.Node) -> None:
        raise NotImplementedError

    def check(self, cut: "Cut", node: fx.Node) -> str | None:
        """Why the removal cannot be applied to this node, or None."""
        return None

    def cut(self, cut: "Cut", node: fx.Node) -> None:
        """Edit the node (in the graph being rewritten) for the removed channels."""


class PassThrough(ChannelOp):
    """Output channel c is input channel c (BatchNorm, activations, pooling, dropout...).

    `tensors` names the module's parameters and buffers indexed by channel along dim 0 (BatchNorm:
    weight, bias, running_mean, running_var); `count` the attribute holding the channel count.
    """

    def __init__(self, tensors: tuple[str, ...] = (), count: str | None = None):
        self.tensors, self.count = tensors, count

    def relate(self, rel, node):
        source = _first_tensor(rel, node)
        if source is None or rel.channels(source) != rel.channels(node):
            rel.refuse(node, f"{rel.describe(node)} changes the number of channels")
        else:
            rel.same(node, source)

    def cut(self, cut, node):
        removed = cut.removed(node)
        if not removed or node.op != "call_module":
            return
        module = cut.module(node)
        for name in self.tensors:
            if getattr(module, name, None) is not None and getattr(module, name).dim() > 0 \
                    and getattr(module, name).shape[0] > 1:
                cut.slice_tensor(f"{node.target}.{name}", 0, cut.kept(node))
        if self.count and getattr(module, self.count, 1) > 1:
            setattr(module, self.count, len(cut.kept(node)))


class Refuse(ChannelOp):
    """An op whose channels cannot be followed (it moves channels into space, or mixes them)."""

    def __init__(self, why: str):
        self.why = why

    def relate(self, rel, node):
        rel.refuse(node, f"{rel.describe(node)} {self.why}")


class Ignore(ChannelOp):
    """An op that reads only a tensor's size or type (`x.size(0)`, `x.shape`, `x.dim()`)."""

    def relate(self, rel, node):
        if rel.channels(node) is not None:
            rel.refuse(node, f"{rel.describe(node)} is not expected to return a tensor")


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

    def check(self, cut, node):
        if not cut.splits_channels(node):
            return None
        if any(size == 0 for size in self._new_sizes(cut, node)):
            return f"{node.name} would leave a piece of its split without channels"
        return None

    def cut(self, cut, node):
        if not cut.splits_channels(node) or not cut.removed(node.args[0]):
            return
        sizes = self._new_sizes(cut, node)
        cut.replace_call(node, torch.split, (node.args[0], sizes, cut.channel_axis(node.args[0])))

    @staticmethod
    def _new_sizes(cut, node) -> list[int]:
        sizes = cut.piece_channels(node)
        removed = set(cut.removed(node.args[0]))
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        return [sum(1 for c in range(o, o + s) if c not in removed) for o, s in zip(offsets, sizes)]


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

    def cut(self, cut, node):
        source = node.args[0]
        if not cut.removed(source) or source.op in ("call_function", "call_method") \
                and isinstance(cut.handler(source), (Split, Unbind)):
            return
        start = self._channel_slice(cut, node).indices(cut.channels(source))[0]
        kept = cut.kept(source)
        new_start = sum(c < start for c in kept)
        index = list(self._index(node))
        index += [slice(None)] * (cut.channel_axis(source) + 1 - len(index))
        index[cut.channel_axis(source)] = slice(new_start, new_start + len(cut.kept(node)))
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


class Reshape(ChannelOp):
    """view / reshape / flatten. The channel axis stays whole where the reshape keeps it as one
    dimension (a window partition of a channels-last map, tokens to a grid). Channels merged with
    the dimensions after them (flattened into a Linear) map one channel to a run of features, and
    features unflattened into channels and space map a run back to one channel. Channels split into
    heads (`(B, N, 3C) -> (B, N, 3, H, D)`, `(B, 3C, H, W) -> (B, H, 3D, HW)`, a channel shuffle's
    `(B, G, C/G, H, W)`) run along the split's last dimension, feature d of every head one channel
    (so every head keeps as many), and heads merged back map feature f to channel f % D. Any other
    reshape is refused."""

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

    def cut(self, cut, node):
        if node.target in ("flatten", torch.flatten) or node.op == "call_module":
            return
        _resize_size_argument(cut, node)


class Expand(ChannelOp):
    """expand / repeat-free broadcasting of a tensor to a larger shape with its channels kept."""

    def relate(self, rel, node):
        source = node.args[0]
        axis = rel.channel_axis(source)
        if rel.rank(node) != rel.rank(source) or rel.shape(node)[axis] != rel.channels(source):
            rel.refuse(node, f"{rel.describe(node)} broadcasts across the channel dimension")
        else:
            rel.same(node, source)

    def cut(self, cut, node):
        _resize_size_argument(cut, node)


class Permute(ChannelOp):
    """permute / transpose: the channels move to another axis (channels-last blocks, tokens)."""

    def relate(self, rel, node):
        source = node.args[0]
        rank, axis = rel.rank(source), rel.channel_axis(source)
        rel.set_axis(node, self.order(node, rank).index(axis))
        rel.same(node, source)

    @staticmethod
    def order(node: fx.Node, rank: int) -> list[int]:
        """The source dimension each output dimension takes."""
        if node.target in ("transpose", torch.transpose):
            a, b = (d % rank for d in node.args[1:3])
            order = list(range(rank))
            order[a], order[b] = b, a
            return order
        dims = node.args[1:] if node.op == "call_method" else (node.args[1],) if len(node.args) > 1 \
            else (node.kwargs["dims"],)
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return [d % rank for d in dims]


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


class MatMul(ChannelOp):
    """matmul / @ in attention: `q @ k.transpose(-2, -1)` meets q's and k's channels along the
    contracted dimension (channel d of q with channel d of k) and makes scores without channels;
    `scores @ v` keeps v's channels along the last axis. Any other product is refused."""

    def relate(self, rel, node):
        a, b = node.args[:2]
        if not all(isinstance(t, fx.Node) and rel.rank(t) >= 2 for t in (a, b)):
            rel.refuse(node, f"{rel.describe(node)} multiplies a tensor that is not a matrix batch")
        elif rel.channels(a) is None and rel.channel_axis(b) == rel.rank(b) - 1 and rel.rank(node) == rel.rank(b):
            rel.set_axis(node, rel.rank(node) - 1)
            rel.same(node, b)
        elif rel.channel_axis(a) == rel.rank(a) - 1 and rel.channel_axis(b) == rel.rank(b) - 2 \
                and rel.channels(a) == rel.channels(b) and not rel.is_constant(b):
            rel.same(b, a)
            rel.free.add(node)
        else:
            rel.refuse(node, f"{rel.describe(node)} multiplies matrices across the channels")


class ScaledDotProductAttention(ChannelOp):
    """F.scaled_dot_product_attention with q, k and v's features along the last axis: channel d
    of q meets channel d of k, the output's channels are v's. A cut that removes q's features
    passes the scale of the full width, so the scores stay those of masking."""

    def relate(self, rel, node):
        q, k, v = node.args[:3]
        if any(rel.channels(t) is None or rel.channel_axis(t) != rel.rank(t) - 1 for t in (q, k, v)) \
                or rel.channels(q) != rel.channels(k):
            rel.refuse(node, f"{rel.describe(node)} takes q, k, v without their features along the last axis")
            return
        rel.same(k, q)
        rel.set_axis(node, rel.rank(node) - 1)
        rel.same(node, v)

    def cut(self, cut, node):
        q = node.args[0]
        if cut.removed(q) and ops.argument(node, 6, "scale") is None:
            node.kwargs = {**node.kwargs, "scale": cut.shape(q)[-1] ** -0.5}


class Pad(ChannelOp):
    """F.pad of dimensions other than the channels' (a channels-last map padded to whole windows)."""

    def relate(self, rel, node):
        source, pad = node.args[0], ops.argument(node, 1, "pad")
        at = 2 * (rel.rank(source) - 1 - rel.channel_axis(source))
        if not isinstance(pad, (tuple, list)) or any(pad[at:at + 2]):
            rel.refuse(node, f"{rel.describe(node)} pads the channels")
        else:
            rel.same(node, source)


class Convolution(ChannelOp):
    """nn.ConvNd and F.convNd with a parameter weight. groups=1: fresh output channels, input
    channels dropped from the weight. Depthwise (groups = in_channels): output channels follow
    their input channel and whole groups are removed. Other groups: each group must lose as many
    input channels, and as many output channels, as every other."""

    def relate(self, rel, node):
        weight = _weight(rel.gm, node)
        if weight is None:
            rel.refuse(node, f"{rel.describe(node)} takes a weight that is not a parameter")
            return
        source, groups = node.args[0], _conv_groups(rel.gm, node)
        if rel.channel_axis(source) != 1:
            rel.refuse(node, f"{rel.describe(node)} reads a tensor whose channels are not along dimension 1")
            return
        c_in, c_out = rel.channels(source), weight.shape[0]
        if groups == 1:
            rel.fresh(node)
            rel.reads(node, source)
        elif groups == c_in:
            per = c_out // c_in
            rel.same(node, source, out_index=range(c_out), in_index=[o // per for o in range(c_out)])
        else:
            rel.fresh(node)
            rel.reads(node, source)
            rel.even(source, groups)
            rel.even(node, groups)

    def check(self, cut, node):
        groups = _conv_groups(cut.gm, node)
        if groups == 1:
            return None
        kept_in, kept_out = self._kept_per_group(cut, node, groups)
        alive = [k for k in range(groups) if kept_in[k] or kept_out[k]]
        if any(not kept_in[k] or not kept_out[k] for k in alive) \
                or len({len(kept_in[k]) for k in alive}) > 1 or len({len(kept_out[k]) for k in alive}) > 1:
            counts = ", ".join(f"{len(kept_in[k])}/{len(kept_out[k])}" for k in range(groups))
            return (f"{cut.describe(node)} has {groups} groups; the removal would leave them uneven "
                    f"(kept input/output channels per group: {counts}); remove as many channels from each group")
        return None

    def cut(self, cut, node):
        if not cut.removed(node.args[0]) and not cut.removed(node):
            return
        groups = _conv_groups(cut.gm, node)
        kept_in, kept_out = self._kept_per_group(cut, node, groups)
        per_in = cut.channels(node.args[0]) // groups
        alive = [k for k in range(groups) if kept_out[k]]
        rows = [o for k in alive for o in kept_out[k]]
        columns = [[c - k * per_in for c in kept_in[k]] for k in alive for _ in kept_out[k]]
        cut.resize_weighted(node, rows, columns, groups=len(alive))

    @staticmethod
    def _kept_per_group(cut, node, groups):
        c_in, c_out = cut.channels(node.args[0]), cut.channels(node)
        removed_in, removed_out = set(cut.removed(node.args[0])), set(cut.removed(node))
        per_in, per_out = c_in // groups, c_out // groups
        kept_in = [[c for c in range(k * per_in, (k + 1) * per_in) if c not in removed_in] for k in range(groups)]
        kept_out = [[o for o in range(k * per_out, (k + 1) * per_out) if o not in removed_out] for k in range(groups)]
        return kept_in, kept_out


class _WeightedLayer(ChannelOp):
    """Fresh output channels; input channels dropped from the weight's columns."""

    def refusal(self, rel: "Relations", node: fx.Node) -> str | None:
        return None

    def relate(self, rel, node):
        reason = self.refusal(rel, node)
        if reason:
            rel.refuse(node, f"{rel.describe(node)} {reason}")
        else:
            rel.fresh(node)
            rel.reads(node, node.args[0])

    def cut(self, cut, node):
        if cut.removed(node.args[0]) or cut.removed(node):
            cut.resize_weighted(node, cut.kept(node), cut.kept(node.args[0]))


class TransposedConvolution(_WeightedLayer):
    """nn.ConvTransposeNd with groups=1."""

    def refusal(self, rel, node):
        return "is a grouped transposed convolution" if rel.gm.get_submodule(node.target).groups != 1 else None


class Linear(_WeightedLayer):
    """nn.Linear / F.linear on the last dimension: `[batch, features]`, tokens `[batch, tokens,
    features]` or a channels-last map `[batch, height, width, channels]`. A linear layer over
    another dimension than the channels' (MLP-Mixer's token mixing) keeps each channel apart:
    channel c is channel c, and its weight does not change."""

    def refusal(self, rel, node):
        return "takes a weight that is not a parameter" if _weight(rel.gm, node) is None else None

    def relate(self, rel, node):
        source = node.args[0]
        if rel.channel_axis(source) != rel.rank(source) - 1 and self.refusal(rel, node) is None:
            rel.same(node, source)                    # mixes tokens, not channels
            return
        rel.set_axis(node, rel.rank(node) - 1)
        super().relate(rel, node)

    def cut(self, cut, node):
        if cut.channel_axis(node.args[0]) == len(cut.shape(node.args[0])) - 1:
            super().cut(cut, node)


class ChannelNorm(PassThrough):
    """A norm whose statistics span the channels: nn.LayerNorm / nn.RMSNorm / F.layer_norm /
    F.rms_norm over the channels alone (normalized_shape == (C,), channels last), or a one-group
    GroupNorm (channels along dim 1). Channel c is channel c, the affine weight and bias are
    sliced with them; the statistics then run over the kept channels only (the pruning reference,
    `transforms.masked_norm`, leaves masked channels out of them)."""

    def __init__(self):
        super().__init__(("weight", "bias"))

    def relate(self, rel, node):
        source = node.args[0]
        if self._groups(rel.gm, node) is not None:
            if self._groups(rel.gm, node) != 1 or rel.channel_axis(source) != 1:
                rel.refuse(node, f"{rel.describe(node)} normalises across groups of channels")
                return
            super().relate(rel, node)
            for arg in node.all_input_nodes[1:]:
                rel.couple_parameter(node, arg, 0)
            return
        shape = tuple(self.normalized_shape(rel.gm, node))
        if rel.channel_axis(source) != rel.rank(source) - 1 or shape != (rel.channels(source),):
            rel.refuse(node, f"{rel.describe(node)} normalises over {shape}, more than the channels")
            return
        super().relate(rel, node)
        for arg in node.all_input_nodes[1:]:
            rel.couple_parameter(node, arg, 0)

    def cut(self, cut, node):
        if not cut.removed(node):
            return
        super().cut(cut, node)
        kept = (len(cut.kept(node)),)
        if self._groups(cut.gm, node) is not None:
            if node.op == "call_module":
                cut.module(node).num_channels = kept[0]
        elif node.op == "call_module":
            cut.module(node).normalized_shape = kept
        else:
            node.args = (node.args[0], kept, *node.args[2:]) if len(node.args) > 1 \
                else node.args
            if "normalized_shape" in node.kwargs:
                node.kwargs = {**node.kwargs, "normalized_shape": kept}

    @staticmethod
    def _groups(gm: fx.GraphModule, node: fx.Node) -> int | None:
        """A GroupNorm's group count, None for a layer or RMS norm."""
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            return module.num_groups if isinstance(module, nn.GroupNorm) else None
        return ops.argument(node, 1, "num_groups") if node.target is F.group_norm else None

    @staticmethod
    def normalized_shape(gm: fx.GraphModule, node: fx.Node) -> tuple:
        if node.op == "call_module":
            return tuple(gm.get_submodule(node.target).normalized_shape)
        return tuple(ops.argument(node, 1, "normalized_shape"))


class FunctionalBatchNorm(PassThrough):
    """F.batch_norm(x, running_mean, running_var, weight, bias, ...) with parameter/buffer arguments."""

    def relate(self, rel, node):
        super().relate(rel, node)
        for arg in node.all_input_nodes[1:]:
            if arg.op == "get_attr":
                rel.couple_parameter(node, arg, 0)
            else:
                rel.refuse(node, f"{rel.describe(node)} takes statistics that are not parameters or buffers")


# --------------------------------------------------------------------------- the default handlers (graphmorph.graph.registry)

_BATCH_NORM = PassThrough(("weight", "bias", "running_mean", "running_var"), "num_features")
_PASS = PassThrough()
DEFAULT_MODULES: dict[type, ChannelOp] = {
    **{t: Convolution() for t in ops.CONV_MODULES},
    **{t: TransposedConvolution() for t in ops.CONV_TRANSPOSE_MODULES},
    nn.Linear: Linear(),
    **{t: _BATCH_NORM for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)},
    **{t: PassThrough(("weight", "bias", "running_mean", "running_var"), "num_features")
       for t in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)},
    nn.PReLU: PassThrough(("weight",), "num_parameters"),
    **{t: _PASS for t in (*ops.ZERO_PRESERVING_MODULES, *ops.ACTIVATION_MODULES, nn.Upsample, nn.AlphaDropout)},
    nn.Flatten: Reshape(),
    nn.Softmax: Refuse("normalises across channels"),
    nn.Softmax2d: Refuse("normalises across channels"),
    nn.GroupNorm: ChannelNorm(),
    nn.LayerNorm: ChannelNorm(),
    nn.RMSNorm: ChannelNorm(),
    nn.PixelShuffle: Refuse("moves channels into space"),
    nn.PixelUnshuffle: Refuse("moves space into channels"),
    nn.ChannelShuffle: Refuse("permutes channels across groups"),
    nn.MultiheadAttention: Refuse("ties its input width to its heads' (embed_dim), so its channels are kept; "
                                  "attention written as a qkv Linear and scaled_dot_product_attention prunes"),
}
DEFAULT_FUNCTIONS: dict[Callable, ChannelOp] = {
    **{f: Convolution() for f in ops.CONV_FUNCTIONS},
    F.linear: Linear(),
    F.batch_norm: FunctionalBatchNorm(),
    **{f: _PASS for f in (*ops.ZERO_PRESERVING_FUNCTIONS, *ops.ACTIVATION_FUNCTIONS, F.interpolate,
                          F.hardtanh, F.dropout1d, F.dropout3d, torch.clone)},
    F.softmax: Refuse("normalises across a dimension"),
    torch.softmax: Refuse("normalises across a dimension"),
    **{f: Elementwise() for f in (*ops.ELEMENTWISE_BINARY_FUNCTIONS, torch.addcmul)},
    **{f: Concat() for f in ops.CAT_FUNCTIONS},
    torch.split: Split(),
    torch.chunk: Split(),
    operator.getitem: GetItem(),
    torch.flatten: Reshape(),
    torch.reshape: Reshape(),
    torch.mean: Reduce(),
    torch.sum: Reduce(),
    torch.amax: Reduce(),
    torch.norm: Reduce(dim_at=2),
    torch.linalg.vector_norm: Reduce(dim_at=2),
    getattr: Ignore(),
    F.pixel_shuffle: Refuse("moves channels into space"),
    F.channel_shuffle: Refuse("permutes channels across groups"),
    torch.transpose: Permute(),
    torch.permute: Permute(),
    F.layer_norm: ChannelNorm(),
    F.rms_norm: ChannelNorm(),
    F.group_norm: ChannelNorm(),
    torch.roll: Shift(),
    torch.unbind: Unbind(),
    F.pad: Pad(),
    torch.matmul: MatMul(),
    operator.matmul: MatMul(),
    F.scaled_dot_product_attention: ScaledDotProductAttention(),
}
DEFAULT_METHODS: dict[str, ChannelOp] = {
    **{m: _PASS for m in (*ops.ZERO_PRESERVING_METHODS, *ops.ACTIVATION_METHODS, "clone", "float", "sigmoid_")},
    "softmax": Refuse("normalises across a dimension"),
    **{m: Elementwise() for m in ops.ELEMENTWISE_BINARY_METHODS},
    "split": Split(),
    "chunk": Split(),
    "view": Reshape(),
    "reshape": Reshape(),
    "view_as": Reshape(),
    "reshape_as": Reshape(),
    "flatten": Reshape(),
    "mean": Reduce(),
    "sum": Reduce(),
    "amax": Reduce(),
    "norm": Reduce(dim_at=2),
    **{m: Ignore() for m in ("size", "dim")},
    "transpose": Permute(),
    "permute": Permute(),
    "expand": Expand(),
    "roll": Shift(),
    "unbind": Unbind(),
    "matmul": MatMul(),
}


def is_channel_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A layer norm, RMS norm or GroupNorm, module or functional (the ops `ChannelNorm` handles)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm))
    return node.op == "call_function" and node.target in (F.layer_norm, F.rms_norm, F.group_norm)


def output_weight(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The weight of a convolution or linear node with its output channels first, else None."""
    module = ops.module_of(gm, node)
    if isinstance(module, ops.CONV_TRANSPOSE_MODULES):
        return module.weight.transpose(0, 1)
    return _weight(gm, node) if ops.is_conv(gm, node) or ops.is_linear(gm, node) else None


# --------------------------------------------------------------------------- helpers


def _run_length(dims: tuple[int, ...], total: int) -> int | None:
    """How many (two or more) of the first `dims` multiply to `total`, else None."""
    return next((m for m in range(2, len(dims) + 1) if math.prod(dims[:m]) == total), None)


def _resize_size_argument(cut, node: fx.Node) -> None:
    """Set a view/reshape/expand's explicit size at the node's channel axis to the kept channels where
    it loses channels, or where the size is read from the shape of a tensor that does (`C` of
    `B, N, C = x.shape` in `reshape(B, N, C)`, which may be another width than the node's)."""
    sizes = list(node.args[1:])
    nested = len(sizes) == 1 and isinstance(sizes[0], (tuple, list))
    sizes = list(sizes[0]) if nested else sizes
    axis = cut.channel_axis(node)
    if axis >= len(sizes):
        return
    size = sizes[axis]
    if (size != -1 and cut.removed(node)) or (isinstance(size, fx.Node) and _reads_cut_shape(cut, size)):
        sizes[axis] = cut.shape(node)[axis] - len(cut.removed(node))
        node.args = (node.args[0], tuple(sizes)) if nested else (node.args[0], *sizes)


def _reads_cut_shape(cut, size: fx.Node) -> bool:
    """Whether a size argument is computed from the shape of a tensor that loses channels."""
    stack, seen = [size], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if cut.shape(current) is not None:
            if cut.removed(current):
                return True
        else:
            stack.extend(current.all_input_nodes)
    return False


def _first_tensor(rel, node: fx.Node) -> fx.Node | None:
    return next((a for a in node.all_input_nodes if rel.channels(a) is not None), None)


def _split_dim(node: fx.Node, rank: int) -> int:
    return ops.argument(node, 2, "dim", 0) % rank


def _weight(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The weight of a conv/linear module node, or the parameter an F.conv2d/F.linear node reads."""
    if node.op == "call_module":
        return gm.get_submodule(node.target).weight
    arg = ops.layer_weight(node)
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        return ops.attribute(gm, arg.target)
    return None


def _conv_groups(gm: fx.GraphModule, node: fx.Node) -> int:
    if node.op == "call_module":
        return gm.get_submodule(node.target).groups
    return ops.argument(node, 6, "groups", 1)
