"""What a search did, as typed events: stored as data in each log row (`"events"`) and turned into
text only for display (the row's `"event"` line and the progress output)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Event", "event", "Grew", "Stopped", "DepthCapped", "WidthCapped", "BudgetSpent", "Found", "PrunedBranches", "PrunedSkips",
           "AddedCell", "EVENTS", "register_events", "event_fields", "read_events"]


@dataclass(frozen=True)
class Event:
    """A typed event; `template` formats its fields (tuples joined with ", ") for display."""

    kind: ClassVar[str]
    template: ClassVar[str]

    def text(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return self.template.format(**{k: ", ".join(v) if isinstance(v, tuple) else v for k, v in fields.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: _listed(getattr(self, f.name)) for f in dataclasses.fields(self)}}


def event(name: str, kind: str, template: str, module: str = __name__, **fields: type) -> type[Event]:
    """A frozen Event dataclass named `name` (defined in `module`) with `fields` (name: type), in
    order; a search lists its events in its registration (`graphmorph.search.algorithms`)."""
    return dataclasses.make_dataclass(name, list(fields.items()), bases=(Event,), frozen=True,
                                      namespace={"kind": kind, "template": template, "__module__": module})


Grew = event("Grew", "grew", "grew stage {stage} -> {arch}", stage=int, arch=str)
Stopped = event("Stopped", "stopped", "stopped stage {stage}", stage=int)  # growth did not pay within J epochs
WidthCapped = event("WidthCapped", "width_capped", "stage {stage} reached the width cap ({width} channels)",
                    stage=int, width=int)
DepthCapped = event("DepthCapped", "depth_capped", "stage {stage} reached the depth cap {cap}", stage=int, cap=int)
BudgetSpent = event("BudgetSpent", "budget_spent", "growth budget spent")
Found = event("Found", "found", "found {arch}; fine-tuning {finetune_epochs} epochs", arch=str, finetune_epochs=int)
PrunedBranches = event("PrunedBranches", "pruned_branches", "stage{stage}: pruned {branches}", stage=int,
                        branches=tuple)  # "cellK.branch" names
PrunedSkips = event("PrunedSkips", "pruned_skips", "stage{stage}: pruned {count} skip(s)", stage=int, count=int)
AddedCell = event("AddedCell", "added_cell", "stage{stage}: added {cell}", stage=int, cell=str)

EVENTS: dict[str, type[Event]] = {}   # by kind: these, and the events every registered search lists


def register_events(*classes: type[Event]) -> None:
    """Make `classes` readable from log rows; a kind names one class."""
    for cls in classes:
        if EVENTS.get(cls.kind, cls) is not cls:
            raise ValueError(f"event kind {cls.kind!r} is registered already, by {EVENTS[cls.kind].__name__}")
        EVENTS[cls.kind] = cls


def event_fields(events: list[Event]) -> dict[str, Any]:
    """A log row's fields for `events`: the data (`events`) and its display line (`event`)."""
    return {"event": "; ".join(e.text() for e in events), "events": [e.to_dict() for e in events]}


def read_events(row: dict[str, Any]) -> list[Event]:
    """The typed events of a log row (an empty list for a row written before events were stored)."""
    return [EVENTS[d["kind"]](**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "kind"})
            for d in row.get("events", [])]


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


register_events(Grew, Stopped, DepthCapped, WidthCapped, BudgetSpent, Found, PrunedBranches, PrunedSkips, AddedCell)
