"""Seeded randomness that leaves the caller's random state as it was."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int, like: nn.Module | None = None) -> Iterator[None]:
    """Run a block with the global RNGs seeded, restoring them afterwards (CUDA too when `like`
    has parameters there)."""
    devices = sorted({p.device.index or 0 for p in (like.parameters() if like else ()) if p.is_cuda})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
