"""How large a net `build` would make, known before it is built (on the meta device, where a
tensor has a shape and no memory), and the limits past which it refuses: an architecture string
or a history asking for a billion blocks, or a billion classes, is one clear error, not minutes
of silence or an allocator's traceback.

    with graphmorph.models.size_limits(None, None):   # the command line's --allow-large
        model = graphmorph.models.build("Basic3ResNet-2000-1-1")
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import nn

from graphmorph.errors import ArchError
from graphmorph.graph.verify import parameter_count

__all__ = ["MAX_PARAMETERS", "MAX_LAYERS", "size_limits", "check_size", "check_count", "meta_parameters"]

MAX_PARAMETERS = 100_000_000   # 400 MB of float32 weights, before gradients and optimizer state
MAX_LAYERS = 2_000             # blocks of a seed net, branches of an EnvelopeNet: capture and rewrites grow with them

_LIMITS: ContextVar[tuple[int | None, int | None]] = ContextVar("graphmorph_size_limits",
                                                                default=(MAX_PARAMETERS, MAX_LAYERS))


@contextlib.contextmanager
def size_limits(max_parameters: int | None = MAX_PARAMETERS, max_layers: int | None = MAX_LAYERS) -> Iterator[None]:
    """Build under other limits inside the block; None lifts a limit."""
    token = _LIMITS.set((max_parameters, max_layers))
    try:
        yield
    finally:
        _LIMITS.reset(token)


def meta_parameters(make: Callable[[], nn.Module]) -> int:
    """The parameter count of the module `make` builds, built on the meta device (no memory)."""
    with torch.device("meta"):
        return parameter_count(make())


_LIFT = "pass --allow-large (in Python: with graphmorph.models.size_limits(None, None)) if you mean it"


def check_count(label: str, count: int, what: str, error: type[Exception] = ArchError) -> None:
    """Refuse `label` (`error`) when it holds more than the layer limit of `what` (blocks, rewrites)."""
    max_layers = _LIMITS.get()[1]
    if max_layers is not None and count > max_layers:
        raise error(f"{label} has {count:,} {what}, over the limit of {max_layers:,}; {_LIFT}")


def check_size(label: str, layers: int, parameters: Callable[[], int]) -> None:
    """Refuse `label` (ArchError) past the layer limit, then past the parameter limit; `parameters`
    is only called once the layer count is within its limit."""
    check_count(label, layers, "blocks")
    max_parameters = _LIMITS.get()[0]
    if max_parameters is not None:
        count = parameters()
        if count > max_parameters:
            raise ArchError(f"{label} would have {count:,} parameters ({4 * count / 1e9:.1f} GB in float32), "
                            f"over the limit of {max_parameters:,}; {_LIFT}")
