"""What a search did, as typed events: stored as data in each log row (`"events"`) and turned into
text only for display (the row's `"event"` line and the progress output)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Event", "Grew", "Stopped", "DepthCapped", "BudgetSpent", "Found", "PrunedBranches", "PrunedSkips",
           "AddedCell", "EVENTS", "event_fields", "read_events"]


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str]

    def text(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: _listed(getattr(self, f.name)) for f in dataclasses.fields(self)}}


@dataclass(frozen=True)
class Grew(Event):
    kind: ClassVar[str] = "grew"
    stage: int
    arch: str

    def text(self) -> str:
        return f"grew stage {self.stage} -> {self.arch}"


@dataclass(frozen=True)
class Stopped(Event):
    """A stage stopped growing: its last growth did not raise validation accuracy by tau within J epochs."""
    kind: ClassVar[str] = "stopped"
    stage: int

    def text(self) -> str:
        return f"stopped stage {self.stage}"


@dataclass(frozen=True)
class DepthCapped(Event):
    kind: ClassVar[str] = "depth_capped"
    stage: int
    cap: int

    def text(self) -> str:
        return f"stage {self.stage} reached the depth cap {self.cap}"


@dataclass(frozen=True)
class BudgetSpent(Event):
    kind: ClassVar[str] = "budget_spent"

    def text(self) -> str:
        return "growth budget spent"


@dataclass(frozen=True)
class Found(Event):
    kind: ClassVar[str] = "found"
    arch: str
    finetune_epochs: int

    def text(self) -> str:
        return f"found {self.arch}; fine-tuning {self.finetune_epochs} epochs"


@dataclass(frozen=True)
class PrunedBranches(Event):
    kind: ClassVar[str] = "pruned_branches"
    stage: int
    branches: tuple[str, ...]          # "cellK.branch"

    def text(self) -> str:
        return f"stage{self.stage}: pruned " + ", ".join(self.branches)


@dataclass(frozen=True)
class PrunedSkips(Event):
    kind: ClassVar[str] = "pruned_skips"
    stage: int
    count: int

    def text(self) -> str:
        return f"stage{self.stage}: pruned {self.count} skip(s)"


@dataclass(frozen=True)
class AddedCell(Event):
    kind: ClassVar[str] = "added_cell"
    stage: int
    cell: str

    def text(self) -> str:
        return f"stage{self.stage}: added {self.cell}"


EVENTS = {cls.kind: cls for cls in (Grew, Stopped, DepthCapped, BudgetSpent, Found, PrunedBranches, PrunedSkips,
                                    AddedCell)}


def event_fields(events: list[Event]) -> dict[str, Any]:
    """A log row's fields for `events`: the data (`events`) and its display line (`event`)."""
    return {"event": "; ".join(e.text() for e in events), "events": [e.to_dict() for e in events]}


def read_events(row: dict[str, Any]) -> list[Event]:
    """The typed events of a log row (an empty list for a row written before events were stored)."""
    return [EVENTS[d["kind"]](**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "kind"})
            for d in row.get("events", [])]


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
