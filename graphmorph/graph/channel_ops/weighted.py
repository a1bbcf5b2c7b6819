"""Handlers of layers with weights: convolutions (grouped and depthwise), transposed convolutions and
linear layers, which make fresh channels and read the ones they can drop."""
from __future__ import annotations

import torch
from torch import fx

from graphmorph.graph import ops
from graphmorph.graph.channel_ops.protocols import ChannelOp, Relating

__all__ = ["Convolution", "TransposedConvolution", "Linear", "GroupedMatMul", "Embedding", "output_weight"]


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

    def check(self, edit, node):
        groups = _conv_groups(edit.gm, node)
        if groups == 1 or groups == edit.channels(node.args[0]) or not (edit.changed(node.args[0]) or edit.changed(node)):
            return None
        ins, outs = self._per_group(edit, node, groups)
        alive = [k for k in range(groups) if ins[k] or outs[k]]
        order = [edit.index(node.args[0]), edit.index(node)]
        contiguous = all(_runs_in_order(index, per) for index, per in
                         zip(order, (edit.channels(node.args[0]) // groups, edit.channels(node) // groups)))
        if any(not ins[k] or not outs[k] for k in alive) or not contiguous \
                or len({len(ins[k]) for k in alive}) > 1 or len({len(outs[k]) for k in alive}) > 1:
            counts = ", ".join(f"{len(ins[k])}/{len(outs[k])}" for k in range(groups))
            edit_, kept, fix = ("widening", "", "add as many channels to") if edit.grows \
                else ("removal", "kept ", "remove as many channels from")
            return (f"{edit.describe(node)} has {groups} groups; the {edit_} would leave them uneven "
                    f"({kept}input/output channels per group: {counts}); {fix} each group")
        return None

    def resize(self, edit, node):
        source = node.args[0]
        if not edit.changed(source) and not edit.changed(node):
            return
        groups = _conv_groups(edit.gm, node)
        if groups > 1 and groups == edit.channels(source):          # depthwise: one group per input channel
            inputs = edit.index(source)
            edit.resize_weighted(node, edit.index(node), [[0]] * len(edit.index(node)), groups=len(inputs))
            return
        ins, outs = self._per_group(edit, node, groups)
        per_in = edit.channels(source) // groups
        alive = [k for k in range(groups) if outs[k]]
        rows = [o for k in alive for o in outs[k]]
        columns = [[c - k * per_in for c in ins[k]] for k in alive for _ in outs[k]]
        edit.resize_weighted(node, rows, columns, groups=len(alive))

    @staticmethod
    def _per_group(edit, node, groups):
        """The new input and output channels of each group, as old indices."""
        per_in, per_out = edit.channels(node.args[0]) // groups, edit.channels(node) // groups
        ins = [[c for c in edit.index(node.args[0]) if c // per_in == k] for k in range(groups)]
        outs = [[o for o in edit.index(node) if o // per_out == k] for k in range(groups)]
        return ins, outs


def _runs_in_order(index: list[int], per: int) -> bool:
    """Whether the channels of each group (`per` old channels each) stay together, in group order."""
    groups = [c // per for c in index]
    return groups == sorted(groups)


class _WeightedLayer(ChannelOp):
    """Fresh output channels; input channels dropped from the weight's columns."""

    def refusal(self, rel: Relating, node: fx.Node) -> str | None:
        return None

    def relate(self, rel, node):
        reason = self.refusal(rel, node)
        if reason:
            rel.refuse(node, f"{rel.describe(node)} {reason}")
        else:
            rel.fresh(node)
            rel.reads(node, node.args[0])

    def resize(self, edit, node):
        if edit.changed(node.args[0]) or edit.changed(node):
            edit.resize_weighted(node, edit.index(node), edit.index(node.args[0]))


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

    def resize(self, edit, node):
        if edit.channel_axis(node.args[0]) == len(edit.shape(node.args[0])) - 1:
            super().resize(edit, node)


class GroupedMatMul(ChannelOp):
    """Experts' grouped product `grouped_mm(x, w, offsets)`: x `[tokens, in]` sorted by expert, w
    `[experts, in, out]` a parameter or a transposed view of one (Mixtral's `gate_up_proj.transpose(-2,
    -1)`). Fresh output channels, input channels dropped from every expert's weight: the same
    channels in each expert, so the fused weight stays one tensor."""

    def relate(self, rel, node):
        x, weight = node.args[:2]
        if rel.channel_axis(x) != rel.rank(x) - 1 or expert_weight(rel.gm, node) is None:
            rel.refuse(node, f"{rel.describe(node)} takes a weight that is not an experts' parameter, or tokens "
                             "without their features along the last axis")
            return
        rel.set_axis(node, rel.rank(node) - 1)
        rel.fresh(node)
        rel.reads(node, x)

    def resize(self, edit, node):
        if edit.changed(node.args[0]) or edit.changed(node):
            edit.resize_weighted(node, edit.index(node), edit.index(node.args[0]), stored=expert_weight(edit.gm, node))


def expert_weight(gm: fx.GraphModule, node: fx.Node) -> tuple[str, int, int] | None:
    """(parameter path, its output dimension, its input dimension) of a grouped product's weight
    operand: a 3-D parameter, or a transpose of its last two dimensions; else None."""
    weight = node.args[1] if len(node.args) > 1 else None
    swapped = False
    if isinstance(weight, fx.Node) and weight.target in (torch.transpose, "transpose") \
            and sorted(d % 3 for d in weight.args[1:3]) == [1, 2]:
        weight, swapped = weight.args[0], True
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr") or ops.attribute(gm, weight.target).dim() != 3:
        return None
    return (str(weight.target), 1, 2) if swapped else (str(weight.target), 2, 1)


class Embedding(ChannelOp):
    """nn.Embedding / F.embedding: token ids in, a vector per token along the last dimension out.
    That width is the model's hidden width, shared by every residual add and norm after it:
    graphmorph keeps it (and so a tied output layer's)."""

    makes_channels = True

    def relate(self, rel, node):
        rel.set_axis(node, rel.rank(node) - 1)
        rel.fresh(node)
        rel.refuse(node, f"{rel.describe(node)} sets the model's hidden width (every residual add and norm "
                         f"shares it, and a tied output layer reads its weight): it is kept", inputs=False)


def output_weight(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The weight of a convolution, linear or experts' grouped product node with its output
    channels first (then its input channels; an experts' weight `[out, in, experts]`), else None."""
    if ops.is_grouped_product(node):
        found = expert_weight(gm, node)
        if found is None:
            return None
        path, out_dim, in_dim = found
        return ops.attribute(gm, path).permute(out_dim, in_dim, 0)
    module = ops.module_of(gm, node)
    if ops.stores_weight_transposed(module):
        return module.weight.transpose(0, 1)
    return _weight(gm, node) if ops.is_conv(gm, node) or ops.is_linear(gm, node) else None


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
