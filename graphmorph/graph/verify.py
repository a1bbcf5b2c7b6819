"""The one verification every rewrite and every test runs, the rewrite contract's checker.

Structural: `graph.lint()`, shape propagation on the example input, output shape unchanged,
parameter delta equal to what the rewrite says it added, no dangling submodules. Semantic, when the
rewrite promises it: the new graph computes the same function as the old one, compared in float64
in each requested mode (train mode on the same batch uses batch statistics in both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import fx

from graphmorph.graph.capture import INPUT_RANGE_KEY, INPUT_SPEC_KEY, example_inputs
from graphmorph.errors import RewriteError, first_line
from graphmorph.graph.channel_ops.protocols import describe
from graphmorph.graph.float64 import Float64Failure, float64_output
from graphmorph.graph.shapes import Inputs, annotate_shapes, as_inputs, has_shapes, with_shapes

__all__ = ["VerifyReport", "verify", "output_differences", "parameter_count", "verification_inputs",
           "annotate_rewritten", "finish_rewrite", "output_shape"]

FLOAT64_ATOL = 1e-10


@dataclass(frozen=True)
class VerifyReport:
    """What was checked and the largest float64 output difference per mode compared."""

    param_delta: int
    max_abs_diff: dict[str, float]


def verification_inputs(gm: fx.GraphModule, example_input=None) -> tuple[torch.Tensor, ...]:
    """The caller's input, else seeded random data shaped like the captured input (batch >= 2 so
    that train-mode BatchNorm has statistics), on the model's device."""
    if example_input is not None:
        return as_inputs(example_input)
    if INPUT_SPEC_KEY not in gm.meta:
        raise RewriteError("this graph was not made by graphmorph.capture: pass example_input=...")
    generator = torch.Generator().manual_seed(0)
    ranges = gm.meta.get(INPUT_RANGE_KEY) or (None,) * len(gm.meta[INPUT_SPEC_KEY])
    return tuple(_random_like(t, span, generator) for t, span in zip(example_inputs(gm), ranges))


def _random_like(t: torch.Tensor, span: tuple[int, int] | None, generator: torch.Generator) -> torch.Tensor:
    """Seeded random data shaped like `t` with batch >= 2: normal for floats, integers drawn within
    the example input's range (token ids stay inside the vocabulary, a mask stays 0/1)."""
    shape = (max(2, t.shape[0]), *t.shape[1:]) if t.dim() else ()
    if span is None:
        return torch.randn(shape, generator=generator, dtype=t.dtype).to(t.device)
    low, high = span
    return torch.randint(low, high + 1, shape, generator=generator).to(t.dtype).to(t.device)


def annotate_rewritten(gm: fx.GraphModule, work: fx.GraphModule, inputs: Inputs, rewrite: str) -> bool:
    """Propagate shapes through `work`, rewritten from `gm`, once: for the input `gm` was captured
    with (giving `gm` its shapes too if it lacks them), else for `inputs`. Returns True when it was
    captured: both graphs' stored shapes are then for the same input, and `verify(..., source=gm)`
    need not propagate either again."""
    captured = INPUT_SPEC_KEY in work.meta
    if captured and not has_shapes(gm):
        annotate_shapes(gm, example_inputs(gm))
    try:
        annotate_shapes(work, example_inputs(work) if captured else inputs)
    except Exception as err:
        raise RewriteError(f"{rewrite} produced a graph that no longer runs: {first_line(err)}") from err
    return captured


def finish_rewrite(gm: fx.GraphModule, work: fx.GraphModule, inputs: Inputs, rewrite: str,
                   reference: Callable[[], fx.GraphModule] | None, annotated: bool | None = None,
                   **checks) -> None:
    """Leave shapes in the rewritten graph `work`, propagated once (not again when `annotated`,
    what `annotate_rewritten` returned, is given), and, when `reference` is given,
    `verify(reference(), work, inputs, **checks)` against the graph it builds."""
    if annotated is None:
        annotated = annotate_rewritten(gm, work, inputs, rewrite)
    if reference is not None:  # uncaptured: verify propagates `inputs` again, the same input as above
        verify(reference(), work, inputs, rewrite=rewrite, source=gm if annotated else None, **checks)


def parameter_count(module: torch.nn.Module) -> int:
    """The number of parameter elements of `module` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def verify(
    before: fx.GraphModule,
    after: fx.GraphModule,
    example_input: torch.Tensor | Inputs,
    param_delta: int,
    preserves: Iterable[str] = (),
    atol: float = FLOAT64_ATOL,
    rewrite: str = "rewrite",
    source: fx.GraphModule | None = None,
) -> VerifyReport:
    """Check `after` against `before`; raise RewriteError naming what failed.

    `param_delta` is the number of parameters the rewrite added (negative when it removed some);
    `preserves` lists the modes ("eval", "train") in which outputs must agree within `atol`.
    Leaves fresh shapes for `example_input` in `after`'s node.meta; unless `source` (the graph
    the rewrite started from) is given, in which case `after`'s and `source`'s stored shapes are
    for the same input (see `annotate_rewritten`) and are trusted, so no shapes are propagated.
    """
    inputs = as_inputs(example_input)
    try:
        after.graph.lint()
    except RuntimeError as err:
        raise RewriteError(f"{rewrite} produced an invalid graph: {first_line(err)}") from err
    if source is None:
        try:
            annotate_shapes(after, inputs)
        except Exception as err:
            raise RewriteError(f"{rewrite} produced a graph that no longer runs: {first_line(err)}") from err
    old_shape = output_shape(source if source is not None else with_shapes(before, inputs))
    new_shape = output_shape(after)
    if old_shape != new_shape:
        raise RewriteError(f"{rewrite} changed the output shape from {old_shape} to {new_shape}")
    delta = parameter_count(after) - parameter_count(before)
    if delta != param_delta:
        raise RewriteError(f"{rewrite} changed the parameter count by {delta}, expected {param_delta}")
    dangling = _dangling_modules(after)
    if dangling:
        raise RewriteError(f"{rewrite} left submodules no node uses: {', '.join(dangling)}")
    diffs = output_differences(before, after, inputs, tuple(preserves), scaled=True)
    for mode in preserves:
        if not diffs[mode] <= atol:
            raise RewriteError(
                f"{rewrite} should preserve the function in {mode} mode but changed the output by "
                f"{diffs[mode]:.3g} of its scale (float64, atol {atol:g} x max(1, max |output|))"
            )
    return VerifyReport(delta, diffs)


def output_differences(
    before: torch.nn.Module,
    after: torch.nn.Module,
    example_input: torch.Tensor | Inputs,
    modes: tuple[str, ...] = ("eval", "train"),
    scaled: bool = False,
) -> dict[str, float]:
    """Largest |after(x) - before(x)| in float64 per mode ("eval", "train"), on float64 copies;
    with `scaled`, divided by max(1, max |before(x)|), so deep nets whose outputs run to 1e13
    are held to float64 round-off rather than to an absolute bound they cannot meet.

    Both models run from the same random state, so dropout draws the same masks in train mode;
    two GraphModules run node by node in train mode, each node seeded by its name, so a dropout
    keeps its mask when a rewrite adds random ops before it (a grown block's own dropout).
    The models themselves are left untouched (train mode updates only the copies' statistics).
    """
    unknown = set(modes) - {"eval", "train"}
    if unknown:
        raise ValueError(f"modes must be 'eval' or 'train', got {sorted(unknown)}")
    if not modes:
        return {}
    inputs = tuple(t.double() if t.is_floating_point() else t for t in as_inputs(example_input))
    by_node = all(isinstance(model, fx.GraphModule) for model in (before, after))
    diffs = {}
    for mode in sorted(modes):
        try:
            outputs = [_flat(float64_output(model, inputs, mode == "train", by_node)) for model in (before, after)]
        except Float64Failure as failure:
            raise RewriteError(_float64_refusal(failure)) from failure
        scale = max(1.0, float(outputs[0].abs().max())) if scaled else 1.0
        diffs[mode] = float((outputs[1] - outputs[0]).abs().max()) / scale
    return diffs


def _flat(output) -> torch.Tensor:
    """Every floating tensor of an output (a tensor, a tuple, a transformers ModelOutput) as one
    float64 vector."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    return torch.cat([t.reshape(-1).double() for t in leaves]) if leaves else torch.zeros(0, dtype=torch.float64)


def _float64_refusal(failure: Float64Failure) -> str:
    """Why the models cannot be compared in float64, where, and what the user can do."""
    node = failure.node
    where = f" at node {describe(node.graph.owning_module, node)}" if node is not None else ""
    return (f"cannot verify the rewrite: the model does not run in float64{where}: {failure}. Verification computes "
            "every float dtype in float64 (casts and created tensors included), and this op refuses it; pass "
            "verify=False to apply the rewrite unchecked")


def output_shape(gm: fx.GraphModule) -> tuple:
    """The shape of `gm`'s output (a tuple of shapes for several outputs), from its shape annotations."""
    meta = next(n for n in reversed(gm.graph.nodes) if n.op == "output").meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else tuple(tuple(m.shape) for m in meta)


def _dangling_modules(gm: fx.GraphModule) -> list[str]:
    """Modules holding parameters or buffers of their own that no call_module/get_attr node uses,
    nor a called module (a leaf such as nn.MultiheadAttention uses its children itself)."""
    used: set[str] = set()
    called: set[str] = set()
    for n in gm.graph.nodes:
        if n.op in ("call_module", "get_attr"):
            parts = str(n.target).split(".")
            used.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        if n.op == "call_module":
            called.add(str(n.target))

    def inside_a_called_module(name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:k]) in called for k in range(1, len(parts)))

    return [
        name for name, module in gm.named_modules()
        if name and name not in used and not inside_a_called_module(name)
        and (next(module.parameters(recurse=False), None) is not None
             or next(module.buffers(recurse=False), None) is not None)
    ]
