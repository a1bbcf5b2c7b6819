"""One registry of what graphmorph knows about ops, used by every analysis and rewrite: how channels
pass through an op (a `ChannelOp`, for channel groups, pruning, widening and skip pruning), how to
make a fresh layer of a module type with other input channels or stride 1 (a `LayerSurgery`, for
growth), and the *facts* other analyses ask (`FACTS`): whether f(0) == 0 (block analysis, growth),
whether it is an activation or does no multiply-accumulates (FLOP counting), whether it only
moves elements or is idempotent (growth), whether it draws random masks (train-mode verification).

`Registry.default()` is the one every call uses unless given another; extend a copy for your own
layers and pass it where the analysis runs:

    registry = Registry.default().copy().register(MyAct, PassThrough(), facts={"activation", "zero_preserving"})
    transforms.prune_filters(gm, 0.3, registry=registry)
    graphmorph.count_flops(gm, registry=registry)
"""
from __future__ import annotations

import operator
from typing import Callable, Iterable, Literal, Union, get_args

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphmorph.graph import ops
from graphmorph.graph.channel_ops import (ChannelNorm, ChannelOp, Concat, Convolution, Elementwise, Embedding, Expand, GroupedMatMul,
                                          FunctionalBatchNorm, GetItem, Ignore, Linear, MatMul, Pad, PassThrough,
                                          Permute, Reduce, Refuse, Reshape, ScaledDotProductAttention, Shift, Split,
                                          Unsqueeze,
                                          TransposedConvolution, Unbind)
from graphmorph.graph.layers import DEFAULT_LAYERS, LayerSurgery

__all__ = ["Registry", "Key", "Fact", "FACTS", "DEFAULT_MODULES", "DEFAULT_FUNCTIONS", "DEFAULT_METHODS",
           "DEFAULT_FACTS", "UNARY_ELEMENTWISE", "analysis_registry"]

Key = Union[type, Callable, str]
Fact = Literal["zero_preserving", "activation", "layout", "stochastic", "no_macs", "idempotent", "value_preserving"]
FACTS: tuple[str, ...] = get_args(Fact)
"""zero_preserving: one input, f(0) == 0 elementwise (a zero branch stays zero through it);
activation: an elementwise nonlinearity, one operation per element; layout: moves elements and
computes nothing (permute, reshape); stochastic: draws random masks in train mode (dropout, drop
path); no_macs: no multiply-accumulates whatever the shapes; idempotent: f(f(x)) == f(x) (ReLU);
value_preserving: every output element is an element of the (first) input, so a tensor filled with
one value stays filled with it (views, casts, indexing)."""


class _Table:
    """Values by module class (matched through base classes), function, method name, qualified
    name ("package.module.Name") of a class or function of a package graphmorph does not import,
    or an ATen or custom op's schema name ("transformers::grouped_mm_fallback")."""

    def __init__(self, entries: dict | None = None):
        self.entries: dict[Key, object] = dict(entries or {})

    def find(self, gm: fx.GraphModule, node: fx.Node):
        if node.op == "call_method":
            return self.entries.get(node.target)
        found = None
        if node.op == "call_module":
            found = next((self.entries[c] for c in type(gm.get_submodule(node.target)).__mro__ if c in self.entries),
                         None)
        elif node.op == "call_function":
            found = self.entries.get(node.target)
        if found is None and node.op in ("call_module", "call_function"):
            found = next((self.entries[n] for n in ops.qualified_names(gm, node) if n in self.entries), None)
        if found is None and node.op == "call_function":
            found = self.entries.get(ops.op_name(node))   # an ATen or custom op by its schema name
        return found


class Registry:
    """Channel handlers, facts and layer surgery of ops, by module class (matched through base
    classes), function, method name or qualified name."""

    def __init__(self, channels: dict[Key, ChannelOp], facts: dict[Key, frozenset[str]],
                 layers: dict[type, LayerSurgery]):
        self._channels, self._facts, self._layers = _Table(channels), _Table(facts), dict(layers)
        self._heads: Registry | None = None

    @staticmethod
    def default() -> "Registry":
        """The registry every analysis uses when given none (registering on it affects them all)."""
        return _DEFAULT

    def copy(self) -> "Registry":
        """An independent registry with the same entries."""
        return Registry(self._channels.entries, self._facts.entries, self._layers)

    def with_heads(self) -> "Registry":
        """This registry with attention heads as the channels of q, k, v and the attention output
        (`Reshape(heads=True)`, `ScaledDotProductAttention(heads=True)`): a cut removes whole heads,
        and with grouped-query attention a key/value head with its query heads. The same object
        each time until this registry changes (analyses are memoised per registry)."""
        if self._heads is None:
            heads = self.copy()
            reshape, attention = Reshape(heads=True), ScaledDotProductAttention(heads=True)
            for key, handler in self._channels.entries.items():
                if type(handler) is Reshape:
                    heads._channels.entries[key] = reshape
                elif type(handler) is ScaledDotProductAttention:
                    heads._channels.entries[key] = attention
            self._heads = heads
        return self._heads

    def register(self, key: Key, channels: ChannelOp | None = None, *, layer: LayerSurgery | None = None,
                 facts: Iterable[Fact] | None = None) -> "Registry":
        """Teach this registry an op: `key` is a module class, a function, a method name, or the
        qualified name ("package.module.Name", with dots) of a class or function of a package you
        would rather not import here;
        `channels` how channels pass through it (`PassThrough(("weight", "bias"))` for a layer that
        keeps them, `Refuse("mixes channels")` for one never to prune through); `layer` how growth
        resizes it (module classes only); `facts` what else is true of it (a set of `FACTS`,
        replacing what the registry held). Returns the registry, so calls chain."""
        if channels is None and layer is None and facts is None:
            raise TypeError("register needs channels=<ChannelOp>, layer=<LayerSurgery> or facts={...}")
        self._heads = None
        if channels is not None:
            if not isinstance(channels, ChannelOp):
                raise TypeError(f"channels must be a graphmorph.graph.channel_ops.ChannelOp, "
                                f"got {type(channels).__name__}")
            self._channels.entries[key] = channels
        if layer is not None:
            if not (isinstance(key, type) and issubclass(key, nn.Module)) or not isinstance(layer, LayerSurgery):
                raise TypeError("layer= takes a LayerSurgery for an nn.Module class")
            self._layers[key] = layer
        if facts is not None:
            facts = frozenset([facts] if isinstance(facts, str) else facts)
            unknown = facts - set(FACTS)
            if unknown:
                raise TypeError(f"unknown facts {sorted(unknown)}; known: {', '.join(FACTS)}")
            self._facts.entries[key] = facts
        return self

    def channel_op(self, gm: fx.GraphModule, node: fx.Node) -> ChannelOp | None:
        """The handler of a call_module / call_function / call_method node, or None if unknown."""
        return self._channels.find(gm, node)

    def facts(self, gm: fx.GraphModule, node: fx.Node) -> frozenset[str]:
        """What the registry knows to be true of a node's op (empty for an op it does not know)."""
        return self._facts.find(gm, node) or frozenset()

    def has(self, gm: fx.GraphModule, node: fx.Node, fact: Fact) -> bool:
        """Whether `fact` holds for the node's op."""
        return fact in self.facts(gm, node)

    def knows_module(self, module: nn.Module) -> bool:
        """Whether an entry names the class that defines `module`'s forward: captures through
        torch.export keep such a module as one call. A subclass with a forward of its own (timm's
        weight-standardised convolutions) is not known by its base class."""
        mro = type(module).__mro__
        owner = next(c for c in mro if "forward" in vars(c))
        keys = {k for k in (*self._channels.entries, *self._facts.entries, *self._layers) if isinstance(k, (type, str))}
        known = [c for c in mro if c in keys or f"{c.__module__}.{c.__qualname__}" in keys]
        return any(owner in c.__mro__ for c in known)   # the forward is the known class's own or inherited

    def layer_surgery(self, module: nn.Module) -> LayerSurgery | None:
        """How growth resizes `module`'s type (or its nearest registered base class), or None."""
        return next((self._layers[c] for c in type(module).__mro__ if c in self._layers), None)


def analysis_registry(registry: Registry | None, heads: bool) -> Registry | None:
    """The registry a channel rewrite analyses with: `registry` (None: the default), in its
    `with_heads()` form when the rewrite's units are attention heads."""
    return (registry or Registry.default()).with_heads() if heads else registry


# --------------------------------------------------------------------------- the default facts

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Tanh)
_ACTIVATION_FUNCTIONS = (F.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, F.hardswish, torch.relu, torch.tanh)
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
_LAYOUT_FUNCTIONS = (torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.reshape, torch.flatten)
_LAYOUT_METHODS = ("permute", "transpose", "swapaxes", "swapdims", "reshape", "view", "flatten", "reshape_as", "view_as")
# casts: the identity within a dtype, idempotent across dtypes, zero kept zero
_CASTS = ("to", "float", "double", "half", "bfloat16", "type_as", torch.ops.aten.type_as.default)
# ops whose output elements are their (first) input's, moved or repeated
_COPYING = (torch.unsqueeze, torch.squeeze, "unsqueeze", "squeeze", "expand", "expand_as", "contiguous", torch.clone,
            "clone", operator.getitem, torch.roll, "roll", torch.ops.aten.index.Tensor)
# unary elementwise torch functions (the same name in torch and in ATen): channel c stays channel c
UNARY_ELEMENTWISE = ("rsqrt", "sqrt", "exp", "log", "erf", "abs", "cos", "sin", "reciprocal")
# stochastic depth of packages graphmorph does not import: it zeroes whole samples in train mode
# (so f(0) == 0, channels pass through) and is the identity in eval mode
STOCHASTIC_DEPTH_NAMES = (
    "torchvision.ops.stochastic_depth.stochastic_depth", "torchvision.ops.stochastic_depth.StochasticDepth",
    "timm.layers.drop.DropPath", "timm.layers.drop.drop_path", "timm.models.layers.drop.DropPath",
)


def _facts(*groups: tuple[Iterable[Key], set[str]]) -> dict[Key, frozenset[str]]:
    table: dict[Key, set[str]] = {}
    for keys, facts in groups:
        for key in keys:
            table.setdefault(key, set()).update(facts)
    return {key: frozenset(facts) for key, facts in table.items()}


_ZERO, _ACT, _NO_MACS, _SAME = "zero_preserving", "activation", "no_macs", "value_preserving"
DEFAULT_FACTS: dict[Key, frozenset[str]] = _facts(
    ((*_ACTIVATION_MODULES, *_ACTIVATION_FUNCTIONS, "relu", "relu_", "tanh"), {_ZERO, _ACT}),
    ((nn.Sigmoid, nn.Hardsigmoid, nn.Softmax, F.sigmoid, torch.sigmoid, F.hardsigmoid, F.softmax, torch.softmax,
      "sigmoid", "softmax"), {_ACT}),
    ((nn.ReLU, nn.ReLU6, F.relu, torch.relu, "relu", "relu_", nn.Identity), {"idempotent"}),
    ((nn.Identity, "contiguous", *ops.POOL_MODULES, *ops.POOL_FUNCTIONS), {_ZERO}),
    ((*_DROPOUT_MODULES, *_DROPOUT_FUNCTIONS, *STOCHASTIC_DEPTH_NAMES), {_ZERO, "stochastic"}),
    ((*_LAYOUT_FUNCTIONS, *_LAYOUT_METHODS), {_ZERO, "layout", _NO_MACS, _SAME}),
    (_CASTS, {_ZERO, "idempotent", _NO_MACS, _SAME}),
    (_COPYING, {_ZERO, _NO_MACS, _SAME}),
    ((torch.mean, torch.sum, "mean", "sum"), {_ZERO}),
    ((operator.getitem, torch.roll, "roll"), {_ZERO, _NO_MACS}),
    ((nn.Identity, nn.Flatten, nn.Unflatten, nn.Embedding, F.embedding, *_DROPOUT_MODULES, *_DROPOUT_FUNCTIONS, getattr, torch.squeeze,
      torch.unsqueeze, torch.chunk, torch.split, torch.mean, torch.sum, F.pad, *ops.CAT_FUNCTIONS,
      "contiguous", "size", "chunk", "split", "unbind", "squeeze", "unsqueeze", "expand", "mean", "sum", "dim",
      "float", "to", "type_as"), {_NO_MACS}),
)


# --------------------------------------------------------------------------- the default handlers

_BATCH_NORM = PassThrough(("weight", "bias", "running_mean", "running_var"), "num_features")
_PASS = PassThrough()
DEFAULT_MODULES: dict[type, ChannelOp] = {
    **{t: Convolution() for t in ops.CONV_MODULES},
    **{t: TransposedConvolution() for t in ops.CONV_TRANSPOSE_MODULES},
    nn.Linear: Linear(),
    nn.Embedding: Embedding(),
    **{t: _BATCH_NORM for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)},
    **{t: PassThrough(("weight", "bias", "running_mean", "running_var"), "num_features")
       for t in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)},
    nn.PReLU: PassThrough(("weight",), "num_parameters"),
    **{t: _PASS for t in (*_ACTIVATION_MODULES, nn.Identity, *_DROPOUT_MODULES, *ops.POOL_MODULES, nn.Sigmoid,
                          nn.Hardsigmoid, nn.Upsample)},
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
    F.embedding: Embedding(),
    F.batch_norm: FunctionalBatchNorm(),
    **{f: _PASS for f in (*_ACTIVATION_FUNCTIONS, *_DROPOUT_FUNCTIONS, *ops.POOL_FUNCTIONS, F.sigmoid, torch.sigmoid,
                          F.hardsigmoid, F.interpolate, F.hardtanh, torch.clone, torch.pow, operator.neg, torch.neg,
                          *(getattr(torch, name) for name in UNARY_ELEMENTWISE))},
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
    torch.swapaxes: Permute(),
    torch.swapdims: Permute(),
    torch.permute: Permute(),
    torch.unsqueeze: Unsqueeze(),
    torch.squeeze: Unsqueeze(),
    F.layer_norm: ChannelNorm(),
    F.rms_norm: ChannelNorm(),
    F.group_norm: ChannelNorm(),
    torch.roll: Shift(),
    torch.unbind: Unbind(),
    F.pad: Pad(),
    torch.matmul: MatMul(),
    operator.matmul: MatMul(),
    torch.bmm: MatMul(),
    torch.baddbmm: MatMul(first=1),
    F.scaled_dot_product_attention: ScaledDotProductAttention(),
}
DEFAULT_METHODS: dict[str, ChannelOp] = {
    **{m: _PASS for m in ("relu", "relu_", "tanh", "sigmoid", "contiguous", "clone", "float", "sigmoid_", "to",
                          "neg")},
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
    "swapaxes": Permute(),
    "swapdims": Permute(),
    "permute": Permute(),
    "unsqueeze": Unsqueeze(),
    "squeeze": Unsqueeze(),
    "expand": Expand(),
    "roll": Shift(),
    "unbind": Unbind(),
    "matmul": MatMul(),
}


_DEFAULT = Registry({**DEFAULT_MODULES, **DEFAULT_FUNCTIONS, **DEFAULT_METHODS,
                     **{name: _PASS for name in STOCHASTIC_DEPTH_NAMES},
                     **{name: Linear() for name in (*ops.TRANSPOSED_LINEAR_NAMES, *ops.LINEAR_EQUIVALENT_NAMES)},
                     **{name: GroupedMatMul() for name in ops.GROUPED_MM_NAMES}},
                    DEFAULT_FACTS, DEFAULT_LAYERS)
