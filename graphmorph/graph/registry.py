"""One registry of what graphmorph knows about ops, used by every analysis and rewrite: how channels
pass through an op (a `ChannelOp`, for channel groups, pruning and skip pruning) and how to make a
fresh layer of a module type with other input channels or stride 1 (a `LayerSurgery`, for growth).

`Registry.default()` is the one every call uses unless given another; extend a copy for your own
layers and pass it where the analysis runs:

    registry = Registry.default().copy().register(MyNorm, PassThrough(("weight", "bias")))
    transforms.prune_filters(gm, 0.3, registry=registry)
"""
from __future__ import annotations

import operator
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphmorph.graph import ops
from graphmorph.graph.channel_ops import (ChannelNorm, ChannelOp, Concat, Convolution, Elementwise, Expand,
                                          FunctionalBatchNorm, GetItem, Ignore, Linear, MatMul, Pad, PassThrough,
                                          Permute, Reduce, Refuse, Reshape, ScaledDotProductAttention, Shift, Split,
                                          TransposedConvolution, Unbind)
from graphmorph.graph.layers import DEFAULT_LAYERS, LayerSurgery

__all__ = ["Registry", "Key", "DEFAULT_MODULES", "DEFAULT_FUNCTIONS", "DEFAULT_METHODS"]

Key = Union[type, Callable, str]


class Registry:
    """Channel handlers by module class (matched through base classes), function or method name,
    and layer surgery by module class."""

    def __init__(self, modules: dict[type, ChannelOp], functions: dict[Callable, ChannelOp],
                 methods: dict[str, ChannelOp], layers: dict[type, LayerSurgery], named: dict[str, ChannelOp]):
        self._modules, self._functions, self._methods, self._layers = modules, functions, methods, layers
        self._named = named  # by qualified name, for ops of packages graphmorph does not import

    @staticmethod
    def default() -> "Registry":
        """The registry every analysis uses when given none (registering on it affects them all)."""
        return _DEFAULT

    def copy(self) -> "Registry":
        """An independent registry with the same entries."""
        return Registry(dict(self._modules), dict(self._functions), dict(self._methods), dict(self._layers),
                        dict(self._named))

    def register(self, key: Key, channels: ChannelOp | None = None, *, layer: LayerSurgery | None = None) -> "Registry":
        """Teach this registry an op: `key` is a module class, a function, a method name, or the
        qualified name ("package.module.Name", with dots) of a class or function of a package you
        would rather not import here;
        `channels` how channels pass through it (`PassThrough(("weight", "bias"))` for a layer that
        keeps them, `Refuse("mixes channels")` for one never to prune through); `layer` how growth
        resizes it (module classes only). Returns the registry, so calls chain."""
        if channels is None and layer is None:
            raise TypeError("register needs channels=<ChannelOp> or layer=<LayerSurgery>")
        if channels is not None:
            if not isinstance(channels, ChannelOp):
                raise TypeError(f"channels must be a graphmorph.graph.channel_ops.ChannelOp, "
                                f"got {type(channels).__name__}")
            if isinstance(key, str):
                table = self._named if "." in key else self._methods
            else:
                table = self._modules if isinstance(key, type) else self._functions
            table[key] = channels
        if layer is not None:
            if not (isinstance(key, type) and issubclass(key, nn.Module)) or not isinstance(layer, LayerSurgery):
                raise TypeError("layer= takes a LayerSurgery for an nn.Module class")
            self._layers[key] = layer
        return self

    def channel_op(self, gm: fx.GraphModule, node: fx.Node) -> ChannelOp | None:
        """The handler of a call_module / call_function / call_method node, or None if unknown."""
        if node.op == "call_method":
            return self._methods.get(node.target)
        found = None
        if node.op == "call_module":
            found = _by_class(self._modules, type(gm.get_submodule(node.target)))
        elif node.op == "call_function":
            found = self._functions.get(node.target)
        return found or next((self._named[n] for n in ops.qualified_names(gm, node) if n in self._named), None)

    def layer_surgery(self, module: nn.Module) -> LayerSurgery | None:
        """How growth resizes `module`'s type (or its nearest registered base class), or None."""
        return _by_class(self._layers, type(module))


def _by_class(table: dict, cls: type):
    return next((table[c] for c in cls.__mro__ if c in table), None)


# --------------------------------------------------------------------------- the default handlers

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


_DEFAULT = Registry(DEFAULT_MODULES, DEFAULT_FUNCTIONS, DEFAULT_METHODS, DEFAULT_LAYERS,
                    {name: PassThrough() for name in ops.STOCHASTIC_DEPTH_NAMES})
