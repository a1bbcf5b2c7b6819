"""Copies of models and graphs for rewrites and checks, fast on graphs with thousands of blocks."""
from __future__ import annotations

import contextlib
import copy
import gc
import warnings
from typing import Callable, Iterator, TypeVar

from torch import fx, nn

from graphmorph.graph.capture import model_name

__all__ = ["clone", "deep_copy", "gc_paused", "copied_meta"]

M = TypeVar("M", bound=nn.Module)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: copying a model allocates ~60 objects per module,
    and the full collections that triggers made copies of large graphs superlinear."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def deep_copy(module: M) -> M:
    """copy.deepcopy with the collector paused (and without torch 2.13's deprecation warning on
    copying the tree specs an exported capture holds)."""
    with gc_paused(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", _TREESPEC_WARNING, FutureWarning)
        return copy.deepcopy(module)


_TREESPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def clone(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of a captured GraphModule for a rewrite to edit: its own modules and parameters, its
    own graph (node meta copied shallowly: rewrites replace meta values, never mutate them), its
    meta and its model's class name. Several times faster than copy.deepcopy on large graphs."""
    memo: dict[int, object] = {}  # one memo, so modules shared between paths stay shared
    root = nn.Module()
    with gc_paused():  # copying allocates ~60 objects per module; full collections made it superlinear
        for name, child in gm.named_children():
            root.add_module(name, copy.deepcopy(child, memo))
        for name, param in gm.named_parameters(recurse=False):
            root.register_parameter(name, copy.deepcopy(param, memo))
        for name, buffer in gm.named_buffers(recurse=False):
            root.register_buffer(name, copy.deepcopy(buffer, memo))
        graph = copy.deepcopy(gm.graph)
    result = fx.GraphModule(root, graph, class_name=model_name(gm))
    result.meta = copy.deepcopy(gm.meta)
    result.train(gm.training)
    return result


def copied_meta(meta: dict, rename: Callable[[str], str]) -> dict:
    """A copied node's meta without its shapes, the module paths in its stack passed through `rename`."""
    copied = {k: v for k, v in meta.items() if k not in ("tensor_meta", "type")}
    stack = meta.get("nn_module_stack")
    if stack:
        copied["nn_module_stack"] = type(stack)(
            (rename(key), (rename(path), cls)) for key, (path, cls) in stack.items()
        )
    return copied
