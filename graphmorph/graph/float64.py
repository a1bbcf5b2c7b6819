"""A model run in float64 for verification: the math compared, not the rounding.

Verification runs both models with float64 copies of their parameters and buffers. Many models fix
their precision in their code: a norm computes in `hidden_states.to(torch.float32)`, a mask is
`torch.full(..., dtype=torch.float32)`, a bfloat16 model casts back with `.to(torch.bfloat16)`. A
captured graph keeps those dtypes as literals, and an eager model applies them, so a plain float64
run mixes dtypes and stops, or rounds to float32 where the other model does not. The run here
promotes every float32, float16 and bfloat16 dtype that reaches an ATen op (a cast, a created
tensor, an accumulation dtype) to float64, in the eager model and the graph alike, so the whole
computation is float64. The models themselves are not touched: the graph handed back keeps the
dtypes the model computes in, its half-precision upcasts included.
"""
from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

from graphmorph.errors import first_line
from graphmorph.graph.copying import deep_copy
from graphmorph.graph.rng import seeded
from graphmorph.graph.shapes import kept_modes

__all__ = ["float64_output", "Float64Failure"]

_PROMOTED = frozenset({torch.float32, torch.float16, torch.bfloat16})


class Float64Failure(RuntimeError):
    """The float64 run failed, at `node` of the graph where that is known (else None)."""

    def __init__(self, node: fx.Node | None, cause: BaseException):
        super().__init__(first_line(cause))
        self.node = node


def float64_output(model: nn.Module, inputs: tuple[torch.Tensor, ...], train: bool, rng_by_node: bool = False) -> Any:
    """`model(*inputs)` (float inputs already float64) in float64 throughout, from a fixed random
    state, in train or eval mode: float64 copies of its parameters and buffers swapped in (no module
    copy, so for a GraphModule no code generation, unless the model holds tensors that are neither
    parameters nor buffers) and its fixed dtypes promoted. With `rng_by_node` (a GraphModule), each
    node draws its randomness from a seed of its own name, so a node keeps its dropout mask when a
    rewrite adds random ops before it. The model's own state and mode are left as they were.
    Raises Float64Failure, naming the graph's node where it fails."""
    by_node = rng_by_node and train and isinstance(model, fx.GraphModule)
    try:
        return _float64_output(model, inputs, train, by_node)
    except (RuntimeError, TypeError, ValueError) as err:
        node = _failing_node(model, inputs, train, by_node) if isinstance(model, fx.GraphModule) else None
        raise Float64Failure(node, err) from err


def _float64_output(model: nn.Module, inputs: tuple[torch.Tensor, ...], train: bool, by_node: bool) -> Any:
    with torch.no_grad(), seeded(0, like=model), _PromotedDtypes():
        if _has_plain_tensors(model):
            twin = _float64_copy(model, train)
            return _Interpreter(twin, by_node).run(*inputs) if by_node else twin(*inputs)
        # Always fresh tensors: `.double()` of a float64 tensor is the tensor itself, and train-mode
        # BatchNorm would then update the model's own running statistics in place.
        state = {name: t.to(torch.float64 if t.is_floating_point() else t.dtype, copy=True)
                 for name, t in (*model.named_parameters(), *model.named_buffers())}
        with kept_modes(model):
            model.train(train)
            if by_node:
                return torch.func.functional_call(_RunByNode(model), {f"gm.{k}": v for k, v in state.items()}, inputs)
            return torch.func.functional_call(model, state, inputs)


class _PromotedDtypes(TorchDispatchMode):
    """Every float32, float16 and bfloat16 dtype an ATen op is given, read as float64; the ops with
    no float64 kernel computed by their definition."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        args, kwargs = torch.utils._pytree.tree_map(_float64_dtype, (args, kwargs or {}))
        return _FLOAT64_KERNELS.get(func, func)(*args, **kwargs)


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None, bias=None, out_dtype=None):
    """torch._grouped_mm for experts (a: tokens x in, sorted by expert; b: experts x in x out; offs:
    each expert's end row), which has no float64 kernel: one matrix product per expert."""
    if a.dim() != 2 or b.dim() != 3 or offs is None or bias is not None:
        return torch.ops.aten._grouped_mm.default(a, b, offs, bias, out_dtype)   # refuses float64, with its reason
    out = a.new_zeros(a.shape[0], b.shape[2])
    start = 0
    for expert, end in enumerate(offs.tolist()):
        out[start:end] = a[start:end] @ b[expert]
        start = end
    return out


_FLOAT64_KERNELS = {torch.ops.aten._grouped_mm.default: _grouped_mm}


def _float64_dtype(value):
    return torch.float64 if isinstance(value, torch.dtype) and value in _PROMOTED else value


def _failing_node(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], train: bool, by_node: bool) -> fx.Node | None:
    """Where the float64 run of `gm` fails: the run again on a float64 copy, node by node."""
    located = _Interpreter(_float64_copy(gm, train), by_node)
    try:
        with torch.no_grad(), seeded(0, like=gm), _PromotedDtypes():
            located.run(*inputs)
    except Exception:  # noqa: BLE001 - the failure is known; only its place is wanted
        return located.node
    return None


def _float64_copy(model: nn.Module, train: bool) -> nn.Module:
    twin = deep_copy(model).double()
    twin.train(train)
    return twin


class _RunByNode(nn.Module):
    """A GraphModule run node by node, each node's randomness seeded by its name."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, *inputs):
        return _Interpreter(self.gm, by_node=True).run(*inputs)


class _Interpreter(fx.Interpreter):
    """Runs a GraphModule node by node, remembering the node it ran last; with `by_node`, the
    global RNG seeded by each node's name before it runs."""

    def __init__(self, gm: fx.GraphModule, by_node: bool):
        super().__init__(gm)
        self.by_node = by_node
        self.node: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.node = n
        if self.by_node and n.op.startswith("call_"):
            torch.manual_seed(zlib.crc32(n.name.encode()))
        return super().run_node(n)


def _has_plain_tensors(model: nn.Module) -> bool:
    return any(isinstance(value, torch.Tensor) for m in model.modules() for value in vars(m).values())
