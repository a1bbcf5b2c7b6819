"""Where a model comes from: a graphmorph architecture string or a user's `package.module:factory`,
with the input it takes and the seed it is built under, so a rewrite history can be replayed on a
fresh copy of it.

A factory is any callable returning an `nn.Module`; it is called with `num_classes=` and
`in_channels=` when its signature takes them, else with no arguments. Its module is imported
with the current directory on `sys.path`, as `python -m` would (`graphmorph.run.imports`). A
source read from a file (`from_dict`) builds a factory only when the user named it too.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import torch
from torch import fx, nn

from graphmorph.graph.capture import capture
from graphmorph.errors import GraphmorphError
from graphmorph.models import build
from graphmorph.run.imports import import_callable, is_factory, require_named
from graphmorph.graph.verify import output_shape

__all__ = ["ModelError", "ModelSource", "load_factory", "is_factory"]


class ModelError(GraphmorphError, ValueError):
    """A user's model factory cannot be imported or called, or its model does not fit the data."""


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by `package.module:factory` (`factory` may be dotted: `module:Class.make`)."""
    return import_callable(spec, "--model", ModelError)


def _call_factory(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    factory = load_factory(spec)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        parameters = {}
    offered = {"num_classes": num_classes, "in_channels": in_channels}
    kwargs = {name: value for name, value in offered.items() if name in parameters}
    try:
        model = factory(**kwargs)
    except Exception as err:
        call = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ModelError(f"--model {spec!r}: calling it ({call}) raised {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec!r} returned a {type(model).__name__}; it must return a torch.nn.Module")
    return model


@dataclass(frozen=True)
class ModelSource:
    """A fresh model to build: what, for which input and classes, under which seed."""

    model: str                        # "Basic3ResNet-1-1-1", "EnvelopeNet-16/2-2-2/6" or "package.module:factory"
    input_shape: tuple[int, int, int]  # channels, height, width of one example
    num_classes: int
    widths: tuple[int, ...] | None = None  # seed nets only: per-stage channels
    seed: int = 0                     # torch.manual_seed before building: the same initial parameters
    # the file this description was read from, when the user did not name its factory: not built
    unnamed_in: str | None = field(default=None, compare=False, repr=False)

    def build(self) -> nn.Module:
        """The model, built under `seed`; a factory named only by a file is refused (ModelError)."""
        in_channels = self.input_shape[0]
        if is_factory(self.model) and self.unnamed_in is not None:
            require_named(self.model, (), self.unnamed_in, ModelError)
        torch.manual_seed(self.seed)
        if is_factory(self.model):
            return _call_factory(self.model, self.num_classes, in_channels)
        return build(self.model, num_classes=self.num_classes, in_channels=in_channels, widths=self.widths)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape)

    def capture(self) -> fx.GraphModule:
        """The model built and captured, checked to give one score per class."""
        gm = capture(self.build(), self.example_input())
        shape = output_shape(gm)
        if shape != (1, self.num_classes):
            raise ModelError(
                f"{self.model} gives outputs of shape {shape} for one {'x'.join(map(str, self.input_shape))} "
                f"input, but the data has {self.num_classes} classes: its output must be (batch, {self.num_classes})"
                + ("; let the factory take num_classes=" if is_factory(self.model) else "")
            )
        return gm

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "widths": list(self.widths) if self.widths else None, "seed": self.seed}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "the model description",
                  allow_code: Collection[str] = ()) -> "ModelSource":
        """The description read from the file `where`; a factory it names builds only if in `allow_code`."""
        try:
            model = str(values["model"])
            return cls(model=model, input_shape=tuple(int(v) for v in values["input_shape"]),
                       num_classes=int(values["num_classes"]),
                       widths=tuple(int(w) for w in values["widths"]) if values.get("widths") else None,
                       seed=int(values.get("seed", 0)),
                       unnamed_in=None if model in allow_code else where)
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"a model description needs model, input_shape (C, H, W) and num_classes: "
                             f"{values!r} ({type(err).__name__}: {err})") from None
