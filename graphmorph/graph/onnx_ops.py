"""ONNX translations of ops torch's exporter has none for: experts' grouped matrix products
(`torch._grouped_mm`, and the fallback transformers registers as `transformers::grouped_mm_fallback`),
written as one product per expert over its rows, so a mixture-of-experts model exports."""
from __future__ import annotations

import torch

__all__ = ["translation_table"]


def translation_table() -> dict:
    """The exporter's `custom_translation_table` for the ops of this module that are loaded."""
    table = {torch.ops.aten._grouped_mm.default: _grouped_mm}
    custom = getattr(torch.ops, "transformers", None)
    if custom is not None and hasattr(custom, "grouped_mm_fallback"):
        table[custom.grouped_mm_fallback.default] = _grouped_mm
    return table


def _grouped_mm(x, weight, offs, bias=None, out_dtype=None):
    """x `[rows, in]` sorted by expert, weight `[experts, in, out]`, offs each expert's end row:
    expert e's rows times its weight, rows past the last expert's end zero (as the fallback leaves
    them). The experts' count is the weight's static first dimension."""
    from onnxscript import INT64
    from onnxscript import opset18 as op

    if offs is None or bias is not None or len(x.shape) != 2 or len(weight.shape) != 3:
        raise NotImplementedError("graphmorph exports the grouped product of experts (2-D rows, 3-D weights, "
                                  "offsets, no bias) only")
    ends = op.Cast(offs, to=INT64.dtype)
    axis = op.Constant(value_ints=[0])
    start, products = axis, []
    for expert in range(weight.shape[0]):
        end = op.Slice(ends, op.Constant(value_ints=[expert]), op.Constant(value_ints=[expert + 1]))
        rows = op.Slice(x, start, end, axis)
        products.append(op.MatMul(rows, op.Gather(weight, op.Constant(value_int=expert), axis=0)))
        start = end
    rest = op.Slice(x, start, op.Shape(x, start=0, end=1), axis)
    zero = op.CastLike(op.Constant(value_float=0.0), x)
    products.append(op.Mul(op.MatMul(rest, op.Gather(weight, op.Constant(value_int=0), axis=0)), zero))
    return op.Concat(*products, axis=0)
