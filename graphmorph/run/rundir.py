"""A run directory: config, per-epoch log, checkpoints and results, written atomically.

Every file is written to a temporary name and renamed into place, so an interrupted run never
leaves a half-written checkpoint; a run directory that exists is never overwritten.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from graphmorph.errors import GraphmorphError

__all__ = ["RunError", "RunDirectory", "save_atomically", "load_saved", "CHECKPOINT", "LOG"]

CHECKPOINT = "checkpoint.pt"
LOG = "log.json"


def save_atomically(payload: Any, target: Path) -> Path:
    """`torch.save` to a temporary name beside `target`, renamed into place: never half-written."""
    temporary = target.with_name(f".{target.name}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, target)
    return target


class RunError(GraphmorphError, ValueError):
    """A run directory is missing, already exists, or holds no usable checkpoint."""


class RunDirectory:
    """The files of one run under `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def ensure_new(cls, path: str | Path) -> None:
        """Refuse a path that exists: a run directory is never overwritten."""
        if Path(path).exists():
            raise RunError(f"run directory {path} already exists; continue it with --resume {path} "
                           "or choose another --run-dir")

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any]) -> "RunDirectory":
        """A new run directory at `path` holding the run's settings as config.json."""
        cls.ensure_new(path)
        run = cls(path)
        run.path.mkdir(parents=True)
        run.write_json("config.json", config)
        return run

    @classmethod
    def existing(cls, path: str | Path, kind: str) -> "RunDirectory":
        """The run directory at `path` of a `kind` ("autogrow" or "nac") run, with a checkpoint."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"there is no run directory {run.path}")
        found = run.kind()
        if found is not None and found != kind:
            raise RunError(f"{run.path} is a {found} run, not a {kind} run: graphmorph {found} --resume {run.path}")
        if not (run.path / CHECKPOINT).is_file():
            raise RunError(f"{run.path} holds no {CHECKPOINT} to resume from: the run stopped before its first "
                           "checkpoint; start it again in a new --run-dir")
        return run

    def kind(self) -> str | None:
        """"nac" or "autogrow" (AutoGrow and `graphmorph train`), from config.json; None without one."""
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return "nac" if isinstance(config, dict) and "base" in config else "autogrow"

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(text)
        os.replace(temporary, target)
        return target

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, default=str) + "\n")

    def write_log(self, rows: list[dict[str, Any]]) -> None:
        """log.json and log.csv, one row per epoch (AutoGrow) or iteration (NAC): named apart from
        rewrites.json, the rewrite history that `graphmorph replay` takes. The CSV has the scalar
        columns (a row's typed `events` are in the JSON; its `event` line is in both)."""
        self.write_json(LOG, rows)
        if rows:
            buffer = io.StringIO()
            columns = [k for k, v in rows[0].items() if not isinstance(v, (list, dict))]
            writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            self.write_text("log.csv", buffer.getvalue())

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        save_atomically(payload, self.path / CHECKPOINT)

    def load_checkpoint(self) -> dict[str, Any]:
        return load_saved(self.path / CHECKPOINT, RunError, map_location=None)


def load_saved(path: Path, error: type[GraphmorphError], map_location: str | None = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a file that is missing, or that torch cannot read
    (truncated, overwritten, not a torch file), raises `error` saying so in one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise error(f"there is no file {path}") from None
    except Exception as err:
        raise error(f"{path} is corrupt or is not a file graphmorph wrote: torch cannot read it "
                    f"({type(err).__name__})") from None
