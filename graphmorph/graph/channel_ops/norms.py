"""Handlers of normalisations over channels: layer, RMS and one-group group norms, and functional
batch norm with its statistics."""
from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn

from graphmorph.graph import ops
from graphmorph.graph.channel_ops.base import PassThrough

__all__ = ["ChannelNorm", "FunctionalBatchNorm", "is_channel_norm"]


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

    def check(self, edit, node):
        if edit.grows and edit.changed(node):
            return f"{edit.describe(node)} normalises over the channels: new channels would change its statistics"
        return None

    def resize(self, edit, node):
        if not edit.changed(node):
            return
        super().resize(edit, node)
        kept = (len(edit.index(node)),)
        if self._groups(edit.gm, node) is not None:
            if node.op == "call_module":
                edit.module(node).num_channels = kept[0]
        elif node.op == "call_module":
            edit.module(node).normalized_shape = kept
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


def is_channel_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A layer norm, RMS norm or GroupNorm, module or functional (the ops `ChannelNorm` handles)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm))
    return node.op == "call_function" and node.target in (F.layer_norm, F.rms_norm, F.group_norm)
