"""The pruning reference for norms over channels: a layer norm, RMS norm or one-group GroupNorm
whose input has masked channels computes its statistics over the kept channels alone, which is
what the same norm does once those channels are pruned."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphmorph.graph import ops

__all__ = ["masked_norm", "mask_statistics"]


def mask_statistics(masked: fx.GraphModule, norm: fx.Node, mask: fx.Node) -> None:
    """Turn `norm` (module or functional) into `masked_norm` with the 0/1 channel `mask` node."""
    rank = len(norm.meta["tensor_meta"].shape)
    module = masked.get_submodule(norm.target) if norm.op == "call_module" else None
    group = isinstance(module, nn.GroupNorm) or norm.target is F.group_norm
    rms = isinstance(module, nn.RMSNorm) or norm.target is F.rms_norm
    if module is not None:
        with masked.graph.inserting_before(norm):
            weight, bias = (masked.graph.get_attr(f"{norm.target}.{part}") if getattr(module, part, None) is not None
                            else None for part in ("weight", "bias"))
        eps = module.eps
    else:
        weight = ops.argument(norm, 2, "weight")
        bias = None if rms else ops.argument(norm, 3, "bias")
        eps = ops.argument(norm, 3 if rms else 4, "eps", None if rms else 1e-5)
    dims = tuple(range(1, rank)) if group else (rank - 1,)
    norm.op, norm.target, norm.kwargs = "call_function", masked_norm, {}
    norm.args = (norm.args[0], mask, weight, bias, eps, rms, dims)


def masked_norm(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float | None, rms: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """Normalise `x` over `dims` with the mean and variance (or, with `rms`, the mean square) of the
    elements where `mask` (broadcast to `x`, 1 on kept channels) is 1; the per-channel `weight` and
    `bias` are shaped like the mask. `eps` None is the dtype's machine epsilon, as in RMS norm."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    mask = mask.to(x.dtype)
    count = mask.sum() * math.prod(x.shape[d] for d in dims) / math.prod(mask.shape[d] for d in dims)
    mean = torch.zeros_like(x) if rms else (x * mask).sum(dims, keepdim=True) / count
    variance = ((x - mean) * mask).pow(2).sum(dims, keepdim=True) / count
    out = (x - mean) / torch.sqrt(variance + eps)
    if weight is not None:
        out = out * weight.reshape(mask.shape)
    if bias is not None:
        out = out + bias.reshape(mask.shape)
    return out
