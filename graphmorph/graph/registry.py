"""One registry of what graphmorph knows about ops, used by every analysis and rewrite: how channels
pass through an op (a `ChannelOp`, for channel groups, pruning and skip pruning) and how to make a
fresh layer of a module type with other input channels or stride 1 (a `LayerSurgery`, for growth).

`Registry.default()` is the one every call uses unless given another; extend a copy for your own
layers and pass it where the analysis runs:

    registry = Registry.default().copy().register(MyNorm, PassThrough(("weight", "bias")))
    transforms.prune_filters(gm, 0.3, registry=registry)
"""
from __future__ import annotations

from typing import Callable, Union

from torch import fx, nn

from graphmorph.graph import ops
from graphmorph.graph.channel_ops import DEFAULT_FUNCTIONS, DEFAULT_METHODS, DEFAULT_MODULES, ChannelOp, PassThrough
from graphmorph.graph.layers import DEFAULT_LAYERS, LayerSurgery

__all__ = ["Registry", "Key"]

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


_DEFAULT = Registry(DEFAULT_MODULES, DEFAULT_FUNCTIONS, DEFAULT_METHODS, DEFAULT_LAYERS,
                    {name: PassThrough() for name in ops.STOCHASTIC_DEPTH_NAMES})
