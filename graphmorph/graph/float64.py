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


def float64_output(model: nn.Module, inputs: tuple[torch.Tensor, ...], train: bool) -> Any:
    """`model(*inputs)` (float inputs already float64) in float64 throughout, from a fixed random
    state, in train or eval mode: float64 copies of its parameters and buffers swapped in (no module
    copy, so for a GraphModule no code generation, unless the model holds tensors that are neither
    parameters nor buffers) and its fixed dtypes promoted. The model's own state and mode are left
    as they were. Raises Float64Failure, naming the graph's node where it fails."""
    try:
        return _float64_output(model, inputs, train)
    except (RuntimeError, TypeError, ValueError) as err:
        node = _failing_node(model, inputs, train) if isinstance(model, fx.GraphModule) else None
        raise Float64Failure(node, err) from err


def _float64_output(model: nn.Module, inputs: tuple[torch.Tensor, ...], train: bool) -> Any:
    with torch.no_grad(), seeded(0, like=model), _PromotedDtypes():
        if _has_plain_tensors(model):
            return _float64_copy(model, train)(*inputs)
        # Always fresh tensors: `.double()` of a float64 tensor is the tensor itself, and train-mode
        # BatchNorm would then update the model's own running statistics in place.
        state = {name: t.to(torch.float64 if t.is_floating_point() else t.dtype, copy=True)
                 for name, t in (*model.named_parameters(), *model.named_buffers())}
        with kept_modes(model):
            model.train(train)
            return torch.func.functional_call(model, state, inputs)


class _PromotedDtypes(TorchDispatchMode):
    """Every float32, float16 and bfloat16 dtype an ATen op is given, read as float64."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        args, kwargs = torch.utils._pytree.tree_map(_float64_dtype, (args, kwargs or {}))
        return func(*args, **kwargs)


def _float64_dtype(value):
    return torch.float64 if isinstance(value, torch.dtype) and value in _PROMOTED else value


def _failing_node(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], train: bool) -> fx.Node | None:
    """Where the float64 run of `gm` fails: the run again on a float64 copy, node by node."""
    located = _Located(_float64_copy(gm, train))
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


class _Located(fx.Interpreter):
    """Runs a GraphModule node by node, remembering the node it ran last."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.node: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.node = n
        return super().run_node(n)


def _has_plain_tensors(model: nn.Module) -> bool:
    return any(isinstance(value, torch.Tensor) for m in model.modules() for value in vars(m).values())
