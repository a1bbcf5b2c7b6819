"""Capture any fx-traceable model as a GraphModule whose nodes know their shapes."""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
import traceback
import warnings
from typing import Iterable

import torch
from torch import fx, nn

from graphmorph.errors import CaptureError, first_line
from graphmorph.graph.ops import device_of
from graphmorph.graph.lifting import export_program, lift
from graphmorph.graph.quiet import quiet_torch_export
from graphmorph.graph.shapes import Inputs, annotate_shapes, as_inputs, evaluating, kept_buffers

INPUT_SPEC_KEY = "graphmorph.input_spec"
INPUT_RANGE_KEY = "graphmorph.input_range"   # (low, high) of each integer example input (token ids), else None
MODEL_NAME_KEY = "graphmorph.model_name"
AUTO_LEAVES_KEY = "graphmorph.auto_leaves"
STRUCTURE_KEY = "graphmorph.structure"   # what `model.graphmorph_structure()` declared, kept current by rewrites
_TORCH_DIR = os.path.dirname(torch.__file__)
_GRAPHMORPH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def capture(
    model: nn.Module,
    example_input: torch.Tensor | Inputs,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    untraceable: str = "refuse",
    method: str = "auto",
    example_kwargs: dict[str, torch.Tensor] | None = None,
) -> fx.GraphModule:
    """Capture `model` as a GraphModule and annotate every node with its shape for `example_input`.

    `method="fx"` traces symbolically; `method="export"` captures through `torch.export`
    (non-strict) and lifts the ATen graph back to the user's modules and torch functions
    (`graphmorph.graph.lifting`): what reaches today's Hugging Face transformers and models with
    Python control flow. `"auto"` (the default) traces, and exports where tracing fails or where
    `example_kwargs` (keyword tensors such as an attention mask) are given. A captured export
    takes its inputs positionally in the order `example_input` then `example_kwargs` (keywords
    work too) and returns what the model returns (a transformers `ModelOutput` stays one); its
    batch size, and the sequence length of integer inputs, are free. A transformers model's
    `config.use_cache` is turned off in the captured copy (a cache is not a tensor torch.export
    can return).

    The model is deep-copied first: the returned GraphModule owns its parameters, and nothing the
    caller holds is changed. `leaf_modules` lists module classes or qualified names that fx should
    record as single calls instead of tracing through (the fix for untraceable submodules).
    With `untraceable="leaf"`, a submodule class whose forward fx cannot trace (timm's Conv2dSame,
    MobileViT blocks) is made a leaf and tracing retried; the classes made leaves are listed in
    `gm.meta["graphmorph.auto_leaves"]` and in a warning. A custom `torch.autograd.Function` (a
    straight-through estimator) is kept whole, one call node, so its own backward still trains
    the captured model (tracing through it would keep the forward and lose the backward).
    Raises CaptureError naming the module
    path, the cause and the fix when tracing fails, and ShapeError when the example input does
    not fit the model.
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"capture expects a torch.nn.Module, got {type(model).__name__}")
    if untraceable not in ("refuse", "leaf"):
        raise CaptureError(f"untraceable must be 'refuse' or 'leaf', got {untraceable!r}")
    if method not in ("auto", "fx", "export"):
        raise CaptureError(f"method must be 'auto', 'fx' or 'export', got {method!r}")
    inputs = as_inputs(example_input)
    leaves = _split_leaves(leaf_modules)
    kwargs = dict(example_kwargs or {})
    if not all(isinstance(v, torch.Tensor) for v in kwargs.values()):
        raise CaptureError("example_kwargs must map argument names to tensors (an attention mask, token "
                           "type ids); pass other settings to the model's constructor or config")
    if method == "export" or (method == "auto" and kwargs):
        gm = _capture_exported(model, inputs, kwargs)
    else:
        try:
            gm = _capture_traced(model, inputs, leaves, untraceable)
        except CaptureError as traced:
            if method == "fx":
                raise
            try:
                gm = _capture_exported(model, inputs, kwargs)
            except CaptureError as exported:
                raise CaptureError(f"neither front-end captures {type(model).__name__}: fx: {traced} | "
                                   f"torch.export: {exported}") from exported
    _record_model(gm, model, (*inputs, *kwargs.values()))
    annotate_shapes(gm, (*inputs, *kwargs.values()))
    return gm


def _capture_exported(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                      kwargs: dict[str, torch.Tensor]) -> fx.GraphModule:
    """Capture through torch.export, lifted (see graphmorph.graph.lifting), checked against the
    exported program on the example input."""
    root = copy.deepcopy(model)
    config = getattr(root, "config", None)
    if getattr(config, "use_cache", False):
        config.use_cache = False
    # exported in eval mode: a dropout module is lifted back to one and trains as one; a dropout
    # the export baked in train mode would drop in eval mode too
    training = root.training
    root.eval()
    try:
        with quiet_torch_export():
            exported = export_program(root, inputs, kwargs).module()
    except Exception as err:
        line = _user_line(err)
        raise CaptureError(f"torch.export cannot capture {type(model).__name__}"
                           f"{f' at {line}' if line else ''}: {type(err).__name__}: {first_line(err)}") from err
    gm = lift(exported, root)
    _check_lifted(exported, gm, inputs, kwargs)
    return gm.train(training)


def _check_lifted(exported: fx.GraphModule, gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...],
                  kwargs: dict[str, torch.Tensor]) -> None:
    """The lifted graph computes exactly what the exported one does on the example input (taking
    the keyword inputs by position)."""
    with torch.no_grad(), evaluating(gm), kept_buffers(gm):  # an exported module refuses eval()
        expected = torch.utils._pytree.tree_leaves(exported(*inputs, **kwargs))
        try:
            found = torch.utils._pytree.tree_leaves(gm(*inputs, *kwargs.values()))
        except Exception as err:
            raise CaptureError(f"graphmorph's lift of the exported graph fails on the example input "
                               f"({type(err).__name__}: {first_line(err)}); please report this model "
                               f"(capture with method='fx' if it traces)") from err
    same = len(expected) == len(found) and all(
        torch.equal(a, b) for a, b in zip(expected, found) if isinstance(a, torch.Tensor))
    if not same:
        raise CaptureError("graphmorph's lift of the exported graph does not reproduce it on the example "
                           "input; please report this model (capture with method='fx' if it traces)")


def _record_model(gm: fx.GraphModule, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    gm.meta[INPUT_SPEC_KEY] = tuple((tuple(t.shape), t.dtype) for t in inputs)
    gm.meta[INPUT_RANGE_KEY] = tuple(
        None if t.is_floating_point() or t.is_complex() or t.numel() == 0 else (int(t.min()), int(t.max()))
        for t in inputs)
    gm.meta[MODEL_NAME_KEY] = type(model).__name__
    declared = getattr(model, "graphmorph_structure", None)
    if callable(declared):  # fx keeps only the leaf modules: a model's own structure would be lost
        gm.meta[STRUCTURE_KEY] = declared()


def _capture_traced(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                    leaves: tuple[tuple[type, ...], frozenset[str]], untraceable: str) -> fx.GraphModule:
    leaf_types, leaf_names = leaves
    made_leaves: list[type] = []
    while True:
        root = copy.deepcopy(model)
        tracer = _Tracer(leaf_types + tuple(made_leaves), leaf_names)
        try:
            with _autograd_functions_kept_whole():
                graph = tracer.trace(root)
            break
        except Exception as err:
            failed = _failed_module_type(root, err)
            if untraceable == "refuse" or failed is None or failed in made_leaves:
                raise CaptureError(_trace_failure_message(model, err)) from err
            made_leaves.append(failed)
    gm = fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
    if made_leaves:
        gm.meta[AUTO_LEAVES_KEY] = [cls.__name__ for cls in made_leaves]
        warnings.warn(f"fx cannot trace {', '.join(gm.meta[AUTO_LEAVES_KEY])}: captured as leaf modules "
                      "(rewrites treat each call as one opaque layer)", stacklevel=3)
    return gm


def _failed_module_type(root: nn.Module, err: Exception) -> type | None:
    """The class of the innermost submodule whose forward raised `err` while tracing, if any."""
    path = getattr(err, "_graphmorph_module", ("", ""))[0]
    return type(root.get_submodule(path)) if path else None


def model_name(gm: fx.GraphModule) -> str:
    """The class name of the model `gm` was captured from (kept across rewrites)."""
    return gm.meta.get(MODEL_NAME_KEY, type(gm).__name__)


def example_inputs(gm: fx.GraphModule) -> tuple[torch.Tensor, ...]:
    """Zero tensors with the shapes and dtypes of the example input `gm` was captured with, on the
    device of its parameters."""
    spec = gm.meta.get(INPUT_SPEC_KEY)
    if spec is None:
        raise CaptureError(
            "this GraphModule was not made by graphmorph.capture, so its example input is unknown; "
            "capture the model with graphmorph.capture(model, example_input)"
        )
    device = device_of(gm)
    return tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype in spec)


class _Tracer(fx.Tracer):
    """An fx tracer with user-chosen leaves that remembers where tracing failed."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str]):
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self._leaf_types) or module_qualified_name in self._leaf_names:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as err:
            if not hasattr(err, "_graphmorph_module"):  # the innermost module is the first to see it
                err._graphmorph_module = (self.path_of_module(m), type(m).__name__)
            raise


@contextlib.contextmanager
def _autograd_functions_kept_whole():
    """While tracing, `SomeFunction.apply(proxy, ...)` records one call of that Function."""
    original = inspect.getattr_static(torch.autograd.Function, "apply")

    def apply(cls, *args, **kwargs):
        proxies: list[fx.Proxy] = []
        fx.node.map_aggregate((args, kwargs), lambda a: proxies.append(a) if isinstance(a, fx.Proxy) else None)
        if not proxies:
            return original.__func__(cls, *args, **kwargs)
        return proxies[0].tracer.create_proxy("call_function", autograd_function_call(cls), args, kwargs)

    torch.autograd.Function.apply = classmethod(apply)
    try:
        yield
    finally:
        torch.autograd.Function.apply = original


@functools.cache
def autograd_function_call(function: type[torch.autograd.Function]):
    """A plain function calling `function.apply`: the target of the call node that keeps it whole."""
    def call(*args, **kwargs):
        return function.apply(*args, **kwargs)

    call.__name__ = call.__qualname__ = f"{function.__name__}_apply"
    call.__module__ = __name__
    call.autograd_function = function
    return call


def _split_leaves(leaf_modules) -> tuple[tuple[type, ...], frozenset[str]]:
    types, names = [], []
    for leaf in leaf_modules:
        if isinstance(leaf, type) and issubclass(leaf, nn.Module):
            types.append(leaf)
        elif isinstance(leaf, str):
            names.append(leaf)
        else:
            raise CaptureError(
                f"leaf_modules entries must be nn.Module classes or qualified module names, got {leaf!r}"
            )
    return tuple(types), frozenset(names)


def _trace_failure_message(model: nn.Module, err: Exception) -> str:
    path, cls = getattr(err, "_graphmorph_module", ("", type(model).__name__))
    where = f"module '{path}' ({cls})" if path else f"the model's own forward ({cls})"
    cause = first_line(err)
    line = _user_line(err)
    at = f" at {line}" if line else ""
    if path:
        fix = (
            f"mark it as a leaf so fx records it as one call: "
            f"graphmorph.capture(model, x, leaf_modules=[{cls}]) or leaf_modules=['{path}']; "
            f"or decorate the untraceable function with torch.fx.wrap; "
            f"or graphmorph.capture(model, x, untraceable='leaf') to make every untraceable submodule a leaf"
        )
    else:
        fix = (
            "move the data-dependent code into a submodule and list it in leaf_modules, "
            "or decorate the untraceable function with torch.fx.wrap"
        )
    return f"cannot trace {where}{at}: {type(err).__name__}: {cause}. Fix: {fix}"


def _user_line(err: Exception) -> str | None:
    """file:line of the innermost frame outside torch, i.e. the user's code that failed."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith((_TORCH_DIR, _GRAPHMORPH_DIR))]
    if not frames:
        return None
    frame = frames[-1]
    return f"{os.path.basename(frame.filename)}:{frame.lineno}"
