"""Analyses a rewrite asks of its source graph more than once (its check, then its edit), computed
once while `transforms.apply` holds that graph unchanged: `with unchanged(gm): ...`. Outside such
a block, or for any other graph (a copy being edited), every call computes afresh."""
from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar
from typing import Callable, Iterator, TypeVar

from torch import fx

__all__ = ["unchanged", "memoized"]

F = TypeVar("F", bound=Callable)
_HELD: ContextVar[tuple[fx.GraphModule, dict] | None] = ContextVar("graphmorph_unchanged", default=None)


@contextlib.contextmanager
def unchanged(gm: fx.GraphModule) -> Iterator[None]:
    """Within the block, memoized analyses of `gm` (which nothing may edit meanwhile) run once;
    a block inside another for the same graph shares its results."""
    held = _HELD.get()
    if held is not None and held[0] is gm:
        yield
        return
    token = _HELD.set((gm, {}))
    try:
        yield
    finally:
        _HELD.reset(token)


def memoized(analysis: F) -> F:
    """`analysis(gm, *options)`, remembered per options while `gm` is held by `unchanged`; a list
    result is returned as a fresh copy, so callers cannot change what is remembered."""
    @functools.wraps(analysis)
    def remembered(gm, *options):
        held = _HELD.get()
        if held is None or held[0] is not gm:
            return analysis(gm, *options)
        key = (analysis.__qualname__, *map(id, options))
        if key not in held[1]:
            held[1][key] = analysis(gm, *options)
        result = held[1][key]
        return list(result) if isinstance(result, list) else result
    return remembered
