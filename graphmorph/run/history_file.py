"""The versioned JSON document (`rewrites.json`) that ships a graph's rewrite history
(`graphmorph.graph.history`) with the model it applies to.

Version 1 of the document:

    {"format": "graphmorph.history", "version": 1,
     "model": {"model": "Basic3ResNet-1-1-1" | "package.module:factory", "input_shape": [C, H, W],
               "num_classes": N, "widths": [...] | null, "seed": S},
     "rewrites": [{"rewrite": "grow", ...}, ...]}

Each rewrite record holds its name and the arguments (including any seed) that `transforms.replay`
needs to apply it again: the fields of the rewrite's dataclass (`transforms.REWRITES`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection

from graphmorph.errors import GraphmorphError
from graphmorph.models.size import check_count
from graphmorph.run.sources import ModelSource

FORMAT = "graphmorph.history"
VERSION = 1

__all__ = ["FORMAT", "VERSION", "HistoryError", "history_document", "parse_history", "read_history"]


class HistoryError(GraphmorphError, ValueError):
    """A history document is unreadable, of an unknown version, or does not fit the model."""


def history_document(source: ModelSource, rewrites: list[dict[str, Any]]) -> dict[str, Any]:
    """The versioned document for `rewrites` applied to the model `source` builds."""
    return {"format": FORMAT, "version": VERSION, "model": source.to_dict(), "rewrites": list(rewrites)}


def parse_history(document: Any, where: str = "the history",
                  allow_code: Collection[str] = ()) -> tuple[ModelSource, list[dict[str, Any]]]:
    """The model source and rewrite records of a history document; HistoryError naming what is wrong.
    A model factory the document names builds only if it is in `allow_code` (a history is data)."""
    if isinstance(document, list) and document and all(
            isinstance(row, dict) and ("epoch" in row or "iteration" in row) for row in document):
        raise HistoryError(f"{where} is a run's log (one row per epoch or iteration), not its rewrite history: "
                           "replay the rewrites.json beside it")
    if isinstance(document, list):
        raise HistoryError(f"{where} is a bare list of rewrites, from graphmorph before history version 1; "
                           f"wrap it as {{\"format\": \"{FORMAT}\", \"version\": 1, \"model\": {{...}}, "
                           "\"rewrites\": [...]}")
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise HistoryError(f"{where} is not a graphmorph history: expected a JSON object with "
                           f"\"format\": \"{FORMAT}\"")
    version = document.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise HistoryError(f"{where} has history version {version!r}; this graphmorph reads version {VERSION}"
                           + ("; upgrade graphmorph to read it" if newer else ""))
    rewrites = document.get("rewrites")
    if not isinstance(rewrites, list) or not all(isinstance(r, dict) and "rewrite" in r for r in rewrites):
        raise HistoryError(f"{where}: \"rewrites\" must be a list of records, each with a \"rewrite\" name")
    check_count(where, len(rewrites), "rewrite records", HistoryError)
    try:
        source = ModelSource.from_dict(document.get("model") or {}, where, allow_code)
    except GraphmorphError as err:
        raise HistoryError(f"{where}: {err}") from None
    return source, rewrites


def read_history(path: str | Path, allow_code: Collection[str] = ()) -> tuple[ModelSource, list[dict[str, Any]]]:
    """`parse_history` of the JSON file at `path`."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as err:
        raise HistoryError(f"cannot read {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise HistoryError(f"{path} is not JSON: {err}") from None
    return parse_history(document, str(path), allow_code)
