"""Shape propagation that leaves the model as it found it (mode, buffers, gradients)."""
from __future__ import annotations

import math

import contextlib
import copy
from typing import Iterator, Sequence

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from graphmorph.errors import ShapeError, first_line

Inputs = Sequence[torch.Tensor]


def as_inputs(example_input: torch.Tensor | Inputs) -> tuple[torch.Tensor, ...]:
    """Normalise one tensor or a sequence of tensors to a tuple of tensors."""
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ShapeError(
            f"example_input must be a tensor or a sequence of tensors, got {type(example_input).__name__}"
        )
    return inputs


@contextlib.contextmanager
def kept_modes(module: nn.Module) -> Iterator[nn.Module]:
    """Restore every submodule's train/eval mode on exit, whatever the block did to them."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and disable autograd; restore each module's mode on exit."""
    with kept_modes(module), torch.no_grad():
        module.eval()
        yield module


@contextlib.contextmanager
def kept_buffers(module: nn.Module) -> Iterator[nn.Module]:
    """Restore every buffer's values on exit (running statistics a run may update in place)."""
    # an expanded buffer (transformers' position ids) shares memory between elements: nothing can
    # write to it in place, and copying into it would fail
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers() if not _overlaps(buffer)]
    try:
        yield module
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _overlaps(tensor: torch.Tensor) -> bool:
    """Whether some elements of `tensor` share memory (a stride-0 expansion)."""
    return any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape))


def annotate_shapes(gm: fx.GraphModule, example_input: torch.Tensor | Inputs,
                    flops: dict[str, int] | None = None) -> None:
    """Store `tensor_meta` (shape, dtype) for `example_input` in every node's meta, in place.

    Runs in eval mode without gradients, and puts every buffer back as it was, so BatchNorm
    statistics are untouched (even by a `F.batch_norm(..., training=True)` that fx traced from a
    module in train mode, which eval mode does not reach). With `flops` (a
    dict), also fills it with what `torch.utils.flop_counter.FlopCounterMode` counts for each node
    by name, whatever the node hides (a leaf module, a wrapped function); that run records autograd
    (never used for a backward pass) so that fused attention fast paths are not taken. Raises
    ShapeError naming the node and module where the input stopped fitting the model.
    """
    inputs = as_inputs(example_input)
    with evaluating(gm), kept_buffers(gm):
        try:
            _ShapeRecorder(gm, flops).run(*inputs)
        except _NodeFailure as failure:
            node, cause = failure.node, failure.cause
            shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
            raise ShapeError(
                f"example input of shape {shapes} does not fit the model at node '{node.name}' "
                f"({_describe(node)}): {first_line(cause)}"
            ) from cause


def with_shapes(gm: fx.GraphModule, example_input: torch.Tensor | Inputs,
                flops: dict[str, int] | None = None) -> fx.GraphModule:
    """A twin of `gm` (same modules, copied graph, same node names) annotated for `example_input`
    (and, with `flops`, measured: see `annotate_shapes`).

    Lets a caller ask about another input size without touching the shapes stored in `gm`.
    """
    twin = fx.GraphModule(gm, copy.deepcopy(gm.graph), class_name=type(gm).__name__)
    annotate_shapes(twin, example_input, flops)
    return twin


def has_shapes(gm: fx.GraphModule) -> bool:
    """True when every node carries the shape-propagation result."""
    return all("type" in n.meta for n in gm.graph.nodes if n.op != "output")


class _NodeFailure(Exception):
    """Carries the node that failed and the original error out of the interpreter."""

    def __init__(self, node: fx.Node, cause: Exception):
        super().__init__(node.name)
        self.node, self.cause = node, cause


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of scaled dot-product attention: scores (q k^T) and their product with v, per query."""
    *batch, queries, width = query_shape
    return 2 * math.prod(batch) * queries * key_shape[-2] * (width + value_shape[-1])


# FlopCounterMode counts the CUDA attention kernels but not the CPU one that scaled_dot_product_attention
# (and MultiheadAttention through it) runs on: without this its FLOPs would be left out on the CPU only
_CPU_ATTENTION = {op: _attention_flops for op in (getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu",
                                                          None),) if op is not None}


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and records what torch.fx's ShapeProp records, without printing on failure;
    with a `flops` dict, each node's FlopCounterMode count too."""

    def __init__(self, gm: fx.GraphModule, flops: dict[str, int] | None = None):
        super().__init__(gm)
        self.flops = flops

    def run(self, *args):
        if self.flops is None:
            return super().run(*args)
        from torch.utils.flop_counter import FlopCounterMode

        # autograd on: with it off, eval-mode MultiheadAttention and TransformerEncoderLayer take a
        # fused fast path that FlopCounterMode does not count
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as self.counter:
            return super().run(*args)

    def run_node(self, n: fx.Node):
        before = self.counter.get_total_flops() if self.flops is not None else 0
        try:
            result = super().run_node(n)
        except _NodeFailure:
            raise
        except Exception as err:
            raise _NodeFailure(n, err) from err
        found_tensor = False

        def extract(obj):
            nonlocal found_tensor
            if isinstance(obj, torch.Tensor):
                found_tensor = True
                return _extract_tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, extract)
        if found_tensor:
            n.meta["tensor_meta"] = meta
        else:
            n.meta.pop("tensor_meta", None)
        n.meta["type"] = type(result)
        if self.flops is not None:
            self.flops[n.name] = self.counter.get_total_flops() - before
        return result


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    return f"{node.op} {getattr(node.target, '__name__', node.target)}"

