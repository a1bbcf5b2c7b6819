"""What a channel handler is (`ChannelOp`) and what it may ask and do: the shape questions every
handler asks of the captured graph (`TensorQuestions`, along the `ChannelLayout`), and, as
protocols, what the dependency analysis (`Relating`) and the surgery (`Editing`) offer it. The analysis and the surgery implement
these (`graphmorph.graph.channels`, `graphmorph.graph.channel_surgery`); the handlers depend on the
protocols alone, so imports run one way."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from torch import fx, nn

from graphmorph.errors import Refusal
from graphmorph.graph import ops

__all__ = ["ChannelOp", "ChannelLayout", "TensorQuestions", "describe", "HandlerSource", "Relating", "Editing"]


@dataclass(frozen=True)
class ChannelLayout:
    """Where channels run in each tensor: `axes` maps a node name to its channel axis where it is
    not 1 (channels-last blocks, tokens-then-features tensors); `parameter_dims` maps a constant
    node (a parameter or buffer, or a view of one) to the dimension indexed by the channels it meets."""

    axes: dict[str, int] = field(default_factory=dict)
    parameter_dims: dict[str, int] = field(default_factory=dict)


class HandlerSource(Protocol):
    """Where handlers are found (`graphmorph.Registry`)."""

    def channel_op(self, gm: fx.GraphModule, node: fx.Node) -> "ChannelOp | None": ...

class TensorQuestions:
    """Shape questions about the nodes of `self.gm` (shapes as captured, before any edit), and
    their handlers in `self.registry`."""

    gm: fx.GraphModule
    registry: HandlerSource
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


class Relating(Protocol):
    """What `ChannelOp.relate` may do, besides asking `TensorQuestions`: say how a node's channels
    relate to its inputs' (`graphmorph.graph.channels.Relations` implements it)."""

    gm: fx.GraphModule
    free: set[fx.Node]

    def handler(self, node: fx.Node) -> "ChannelOp | None": ...
    def shape(self, node) -> tuple[int, ...] | None: ...
    def rank(self, node) -> int: ...
    def is_constant(self, node: fx.Node) -> bool: ...
    def channel_axis(self, node: fx.Node) -> int: ...
    def channels(self, node) -> int | None: ...
    def piece_channels(self, split: fx.Node) -> list[int]: ...
    def splits_channels(self, split: fx.Node) -> bool: ...
    def describe(self, node: fx.Node) -> str: ...
    def set_axis(self, node: fx.Node, axis: int) -> None: ...
    def same(self, out: fx.Node, inp: fx.Node, out_index: Iterable[int] | None = None,
             in_index: Iterable[int] | None = None) -> None: ...
    def meets(self, a: fx.Node, b: fx.Node) -> None: ...
    def fresh(self, node: fx.Node) -> None: ...
    def reads(self, node: fx.Node, source: fx.Node) -> None: ...
    def refuse(self, node: fx.Node, reason: str, inputs: bool = True) -> None: ...
    def couple_parameter(self, node: fx.Node, constant: fx.Node, dim: int) -> None: ...
    def even(self, node: fx.Node, groups: int) -> None: ...

class Editing(Protocol):
    """What `ChannelOp.check` and `ChannelOp.resize` may ask and do once channels change: removed
    (`cut`) or copied (`widen`); `graphmorph.graph.channel_surgery.ChannelEdit` implements it."""

    gm: fx.GraphModule
    grows: bool

    def handler(self, node: fx.Node) -> "ChannelOp | None": ...
    def shape(self, node) -> tuple[int, ...] | None: ...
    def channel_axis(self, node: fx.Node) -> int: ...
    def channels(self, node) -> int | None: ...
    def piece_channels(self, split: fx.Node) -> list[int]: ...
    def splits_channels(self, split: fx.Node) -> bool: ...
    def describe(self, node: fx.Node) -> str: ...
    def changed(self, node) -> bool: ...
    def index(self, node: fx.Node) -> list[int]: ...
    def module(self, node: fx.Node) -> nn.Module: ...
    def select_tensor(self, path: str, dim: int, index: Sequence[int]) -> None: ...
    def resize_weighted(self, node: fx.Node, rows: list[int], columns: list[int] | list[list[int]],
                        groups: int | None = None, stored: tuple[str, int, int] | None = None) -> None: ...
    def replace_call(self, node: fx.Node, function: Callable, args: tuple) -> None: ...

def _split_dim(node: fx.Node, rank: int) -> int:
    return ops.argument(node, 2, "dim", 0) % rank


class ChannelOp:
    """How one kind of node relates and cuts channels; subclass it for a layer of your own."""

    makes_channels = False
    """True for an op whose output has channels although its inputs have none (an embedding of token
    ids); a convolution or linear layer is known to."""

    def relate(self, rel: "Relating", node: fx.Node) -> None:
        raise NotImplementedError

    def check(self, edit: "Editing", node: fx.Node) -> "Refusal | str | None":
        """Why the edit (a cut, or with `edit.grows` a widening) cannot be applied to this node, or None."""
        return None

    def resize(self, edit: "Editing", node: fx.Node) -> None:
        """Edit the node (in the graph being rewritten) for its tensors' new channels (`edit.index`)."""
