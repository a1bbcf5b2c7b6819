"""The handlers every family builds on: channels passed through unchanged, refused with a reason,
or not read at all."""
from __future__ import annotations

from torch import fx

from graphmorph.graph.channel_ops.protocols import ChannelOp

__all__ = ["PassThrough", "Refuse", "Ignore"]


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

    def resize(self, edit, node):
        if not edit.changed(node) or node.op != "call_module":
            return
        module = edit.module(node)
        for name in self.tensors:
            if getattr(module, name, None) is not None and getattr(module, name).dim() > 0 \
                    and getattr(module, name).shape[0] > 1:
                edit.select_tensor(f"{node.target}.{name}", 0, edit.index(node))
        if self.count and getattr(module, self.count, 1) > 1:
            setattr(module, self.count, len(edit.index(node)))


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


def _first_tensor(rel, node: fx.Node) -> fx.Node | None:
    return next((a for a in node.all_input_nodes if rel.channels(a) is not None), None)
