"""The registry of search algorithms: one entry per algorithm, read by the command line, the run
directories, the report and `graphmorph`'s top level.

A search is one module that ends with `register_algorithm(Algorithm(...))`, and one line here
(`BUILT_IN`) naming that module. The entry says everything the rest of graphmorph needs: its
command and run-directory kind, its settings (a config dataclass with option metadata, validated
once by its `validate`), how to run or resume it, what a checkpoint follows (the unit), what it
prints before and after, its typed events, its public controller, and how `graphmorph report`
labels and marks its results.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from graphmorph.run.events import Event, register_events

__all__ = ["Algorithm", "ResultKind", "register_algorithm", "algorithms", "algorithm", "result_kinds", "report_rows",
           "BUILT_IN"]

# the modules that register the built-in searches, in the order the command line lists them
BUILT_IN = ("graphmorph.search.autogrow", "graphmorph.search.nac", "graphmorph.search.prune")


@dataclass(frozen=True)
class ResultKind:
    """How `graphmorph report` shows one kind of result (a result.json's "kind")."""

    label: str      # the legend's text
    marker: str     # a matplotlib marker


@dataclass(frozen=True)
class Algorithm:
    """One search: everything the command line, run directories, report and API need to know."""

    kind: str                                   # the command (`graphmorph <kind>`) and config.json's "kind"
    title: str                                  # the name in messages: "AutoGrow"
    config_type: type                           # a frozen dataclass: option metadata, from_dict, validate
    run: Callable[..., dict[str, Any]]          # run(config, run_dir, resume=, progress=, allow_code=)
    help: str                                   # one line for `graphmorph --help`
    description: str                            # the command's --help text
    unit: str                                   # what each checkpoint follows: "epoch"
    net: Callable[[Any], str]                   # the net a config starts from, for the run directory's name
    plan: Callable[[Any], str]                  # the line printed before a new run starts
    summary: Callable[[dict[str, Any], Any], list[str]]   # the lines printed for a finished run's result
    results: dict[str, ResultKind]              # the result kinds its runs write
    events: tuple[type[Event], ...] = ()
    controller: tuple[str, str] | None = None   # (public name, module): graphmorph.<name> for the user's loop
    report_rows: Callable[[dict[str, Any]], list[dict[str, Any]]] = field(default=lambda result: [result])


_REGISTRY: dict[str, Algorithm] = {}
_loaded = False


def register_algorithm(entry: Algorithm) -> Algorithm:
    """Add a search to the registry (its events to those logs can hold); returns the entry."""
    if entry.kind in _REGISTRY and _REGISTRY[entry.kind] is not entry:
        raise ValueError(f"a search named {entry.kind!r} is registered already")
    _REGISTRY[entry.kind] = entry
    register_events(*entry.events)
    return entry


def algorithms() -> dict[str, Algorithm]:
    """Every registered search by kind, the built-in ones first (importing their modules once)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILT_IN:
            importlib.import_module(module)
    return dict(_REGISTRY)


def algorithm(kind: str) -> Algorithm:
    found = algorithms()
    if kind not in found:
        raise KeyError(f"no search named {kind!r}; known: {', '.join(found)}")
    return found[kind]


def result_kinds() -> dict[str, ResultKind]:
    """Every result kind any search writes, with its label and marker."""
    return {kind: shown for entry in algorithms().values() for kind, shown in entry.results.items()}


def report_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows `graphmorph report` shows for finished runs' results: each expanded by the search
    that wrote it (a prune run: one row per point); a result of a kind no search writes is kept as is."""
    writers = {kind: entry for entry in algorithms().values() for kind in entry.results}
    return [row for result in results
            for row in (writers[result["kind"]].report_rows(result) if result["kind"] in writers else [result])]
