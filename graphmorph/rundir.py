"""A run directory: config, per-epoch history, checkpoints and results, written atomically.

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

__all__ = ["RunError", "RunDirectory", "save_atomically"]

CHECKPOINT = "checkpoint.pt"


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
    def existing(cls, path: str | Path) -> "RunDirectory":
        run = cls(path)
        if not (run.path / CHECKPOINT).is_file():
            raise RunError(f"{run.path} holds no {CHECKPOINT} to resume from")
        return run

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(text)
        os.replace(temporary, target)
        return target

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, default=str) + "\n")

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """history.json and history.csv, one row per epoch."""
        self.write_json("history.json", rows)
        if rows:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            self.write_text("history.csv", buffer.getvalue())

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        save_atomically(payload, self.path / CHECKPOINT)

    def load_checkpoint(self) -> dict[str, Any]:
        try:
            return torch.load(self.path / CHECKPOINT, weights_only=True)
        except Exception as err:
            raise RunError(f"{self.path / CHECKPOINT} cannot be read: {err}") from err
