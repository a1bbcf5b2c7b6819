"""The rewrite protocol: every rewrite is a frozen dataclass registered by name, and one driver,
`apply`, runs the contract for all of them (each rewrite's declared check, then `graphmorph.graph.verify`).

A rewrite's fields are everything needed to apply it again (a resolved block name, a seed, a list
of channels), so its record in the history is `{"rewrite": name, **fields}` and `replay` finds
the class by name and rebuilds it from the record. It declares two steps:
- `check(gm)`: why it cannot apply to `gm`, or None (asked alone, without editing anything;
  `refusal(gm)` also turns a RewriteError the check raises into its reason);
- `edit(step)`: change `step.work`, a private copy of the source graph, and return an `Edit`
  that says what was added or removed and the semantic contract to verify.

`apply` clones, checks, edits, recompiles, verifies (lint, shapes, parameter delta, dangling
modules, and the function against the declared reference in the declared modes) and records.
Adding a rewrite is one module: a dataclass with `name`, `check` and `edit`, decorated with
`@register`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import fx

from graphmorph.graph.capture import STRUCTURE_KEY
from graphmorph.graph.copying import clone
from graphmorph.errors import Refusal, RewriteError, as_refusal
from graphmorph.graph.history import record_rewrite
from graphmorph.graph.memo import unchanged
from graphmorph.graph.registry import Registry
from graphmorph.graph.shapes import Inputs
from graphmorph.graph.verify import FLOAT64_ATOL, finish_rewrite, verification_inputs

__all__ = ["Rewrite", "Edit", "Step", "REWRITES", "register", "apply", "rewrite_of", "rewrite_class", "NOT_RECORDED"]

NOT_RECORDED = {"recorded": False}
"""Field metadata for a run-time option that does not belong in the history (`field(metadata=NOT_RECORDED)`)."""


@dataclass(frozen=True)
class Edit:
    """What an edit did: the parameters it added (negative: removed), and the contract `apply`
    verifies. `reference` builds the graph the result must compute the same function as, in
    `preserves` modes within `atol` (float64); None checks the structure only. `shapes_propagated`
    says the edit already propagated shapes through the new graph (`annotate_rewritten`).
    `notes` are facts the edit found out, added to the history record (e.g. the new block's name)."""

    param_delta: int
    reference: Callable[[], fx.GraphModule] | None
    preserves: tuple[str, ...] = ("eval", "train")
    atol: float = FLOAT64_ATOL
    shapes_propagated: bool | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    """One application in progress: the untouched source graph, its private copy to edit, the
    verification inputs, and the calibration data a rewrite may need (AdamInit)."""

    source: fx.GraphModule
    work: fx.GraphModule
    inputs: Inputs
    data: Any = None


@dataclass(frozen=True)
class Rewrite:
    """Base of every registered rewrite (subclasses are frozen dataclasses). `registry` is the op
    registry its analyses use (default: `Registry.default()`); it is not recorded."""

    name: ClassVar[str]
    keeps_structure: ClassVar[bool] = False  # True: the model's declared structure (capture's STRUCTURE_KEY)
    # still holds after this rewrite, or its edit updates it; otherwise `apply` drops it as unknown
    registry: Registry | None = field(default=None, kw_only=True, compare=False, repr=False, metadata=NOT_RECORDED)

    @property
    def op_registry(self) -> Registry:
        return self.registry or Registry.default()

    def check(self, gm: fx.GraphModule) -> Refusal | str | None:
        """Why this rewrite cannot apply to `gm`, or None when it can: a `Refusal` naming the nodes
        that cause it, or its text alone (raising RewriteError is the same as returning it)."""
        return None

    def refusal(self, gm: fx.GraphModule) -> Refusal | None:
        """`check`'s answer as a Refusal, whether returned or raised."""
        try:
            return as_refusal(self.check(gm))
        except RewriteError as err:
            return err.refusal

    def edit(self, step: Step) -> Edit:
        raise NotImplementedError

    def describe(self) -> str:
        """How error messages name this application of the rewrite."""
        return self.name

    def record(self) -> dict[str, Any]:
        """The history record: the rewrite's name and its recorded fields, JSON-ready."""
        recorded = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                    if f.metadata.get("recorded", True)}
        return {"rewrite": self.name, **recorded}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Rewrite":
        """The rewrite a history record describes (keys that are not fields are notes, ignored)."""
        values = {}
        for f in dataclasses.fields(cls):
            if not f.metadata.get("recorded", True):
                continue
            if f.name in record:
                values[f.name] = _tupled(record[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RewriteError(f"{cls.name} record lacks {f.name!r}: {record}")
        return cls(**values)


REWRITES: dict[str, type[Rewrite]] = {}
"""Every registered rewrite class by name: what `replay` can apply."""


def register(cls: type[Rewrite]) -> type[Rewrite]:
    """Class decorator: make `cls` (a Rewrite dataclass with a unique `name`) replayable."""
    if not dataclasses.is_dataclass(cls) or not issubclass(cls, Rewrite):
        raise TypeError(f"{cls.__name__} must be a dataclass subclassing transforms.Rewrite")
    if REWRITES.get(cls.name, cls) is not cls:
        raise ValueError(f"a rewrite named {cls.name!r} is already registered ({REWRITES[cls.name].__qualname__})")
    REWRITES[cls.name] = cls
    return cls


def rewrite_class(record: dict[str, Any], where: str = "the record") -> type[Rewrite]:
    """The registered class a history record names; RewriteError for an unknown name."""
    cls = REWRITES.get(record.get("rewrite"))
    if cls is None:
        raise RewriteError(f"{where} has unknown rewrite {record.get('rewrite')!r}; known: {', '.join(sorted(REWRITES))}")
    return cls


def rewrite_of(record: dict[str, Any]) -> Rewrite:
    """The registered rewrite a history record describes; RewriteError for an unknown name or a missing field."""
    return rewrite_class(record).from_record(record)


def apply(gm: fx.GraphModule, rewrite: Rewrite, *, example_input: torch.Tensor | Inputs | None = None,
          data: Any = None, verify: bool = True) -> fx.GraphModule:
    """A new GraphModule: `rewrite` applied to a copy of `gm` (left untouched), verified against its
    declared contract on `example_input` (default: seeded random data shaped like the captured
    input; `verify=False` skips the semantic comparison, not the shapes) and recorded in the new
    graph's history. RewriteError with the reason when the rewrite cannot apply."""
    if not isinstance(gm, fx.GraphModule):
        raise RewriteError(f"{rewrite.name} works on a captured GraphModule, got {type(gm).__name__}: "
                           "use graphmorph.capture(model, example_input) first")
    with unchanged(gm):  # the check's analyses of `gm` serve the edit too
        reason = rewrite.refusal(gm)
        if reason:
            raise RewriteError(str(reason), reason)
        step = Step(gm, clone(gm), verification_inputs(gm, example_input), data)
        if not rewrite.keeps_structure:
            step.work.meta.pop(STRUCTURE_KEY, None)
        edit = rewrite.edit(step)
    step.work.recompile()
    finish_rewrite(gm, step.work, step.inputs, rewrite.describe(), edit.reference if verify else None,
                   annotated=edit.shapes_propagated, param_delta=edit.param_delta, preserves=edit.preserves,
                   atol=edit.atol)
    record_rewrite(step.work, {**rewrite.record(), **edit.notes})
    return step.work


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _tupled(value: Any) -> Any:
    """A record's lists as tuples, so a rebuilt rewrite compares equal to the one recorded."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
