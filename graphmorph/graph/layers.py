"""Layer surgery for growth: what a layer's input channels are and how to make a fresh layer of the
same kind with other input channels, other output channels (a gate's) or with stride 1. The
defaults here are what `graphmorph.graph.registry.Registry` starts from; users register their own
layers there.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["LayerSurgery", "fresh_copy", "DEFAULT_LAYERS"]


@dataclass(frozen=True)
class LayerSurgery:
    """How to read and change one kind of layer. Each returns a new, freshly initialised module
    (on the default device and dtype: callers move it next to the layer it replaces)."""

    in_channels: Callable[[nn.Module], int]
    with_in_channels: Callable[[nn.Module, int], nn.Module]
    with_unit_stride: Callable[[nn.Module], nn.Module] | None = None
    with_out_channels: Callable[[nn.Module, int], nn.Module] | None = None


def fresh_copy(module: nn.Module) -> nn.Module:
    """Same class and hyper-parameters, parameters and statistics drawn afresh (PyTorch's default
    initialisation, `reset_parameters`). Seed with `graphmorph.graph.rng.seeded` for reproducible draws."""
    clone = copy.deepcopy(module)
    for m in clone.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone


def _conv_with(m: nn.modules.conv._ConvNd, in_channels: int, stride=None) -> nn.Module:
    depthwise = m.groups == m.in_channels == m.out_channels
    if m.groups != 1 and not depthwise:
        raise ValueError(f"{type(m).__name__} with groups={m.groups} cannot change its input channels alone")
    return type(m)(  # a depthwise convolution stays depthwise: as many outputs and groups as inputs
        in_channels, in_channels if depthwise else m.out_channels, m.kernel_size,
        stride=m.stride if stride is None else stride, padding=m.padding, dilation=m.dilation,
        groups=in_channels if depthwise else 1, bias=m.bias is not None, padding_mode=m.padding_mode,
    )


def _conv_out(m: nn.modules.conv._ConvNd, out_channels: int) -> nn.Module:
    if m.groups != 1:
        raise ValueError(f"{type(m).__name__} with groups={m.groups} cannot change its output channels alone")
    return type(m)(m.in_channels, out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                   dilation=m.dilation, bias=m.bias is not None, padding_mode=m.padding_mode)


def _conv_unit_stride(m: nn.modules.conv._ConvNd) -> nn.Module:
    clone = fresh_copy(m)
    clone.stride = (1,) * len(m.stride)
    return clone


def _norm_with(m: nn.modules.batchnorm._NormBase, channels: int) -> nn.Module:
    """The norm over `channels`, its other settings (and a subclass's own, timm's fused activation)
    kept, its parameters and statistics fresh."""
    clone = copy.deepcopy(m)
    clone.num_features = channels
    for name in ("weight", "bias"):
        if getattr(clone, name, None) is not None:
            setattr(clone, name, nn.Parameter(torch.empty(channels)))
    for name in ("running_mean", "running_var"):
        if getattr(clone, name, None) is not None:
            clone.register_buffer(name, torch.empty(channels))
    clone.reset_parameters()
    return clone


def _group_norm_with(m: nn.GroupNorm, channels: int) -> nn.Module:
    return nn.GroupNorm(m.num_groups, channels, eps=m.eps, affine=m.affine)


def _linear_with(m: nn.Linear, features: int) -> nn.Module:
    return nn.Linear(features, m.out_features, bias=m.bias is not None)


def _linear_out(m: nn.Linear, features: int) -> nn.Module:
    return nn.Linear(m.in_features, features, bias=m.bias is not None)


_CONV = LayerSurgery(lambda m: m.in_channels, _conv_with, _conv_unit_stride, _conv_out)
_NORM = LayerSurgery(lambda m: m.num_features, _norm_with)
DEFAULT_LAYERS: dict[type[nn.Module], LayerSurgery] = {
    **{conv: _CONV for conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    **{norm: _NORM for norm in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                                nn.InstanceNorm3d)},
    nn.GroupNorm: LayerSurgery(lambda m: m.num_channels, _group_norm_with),
    nn.Linear: LayerSurgery(lambda m: m.in_features, _linear_with, with_out_channels=_linear_out),
}
