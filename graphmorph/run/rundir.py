"""A run directory: config, per-epoch log, checkpoints and results, written atomically.

Every file is written to a temporary name and renamed into place (`publish`), so an interrupted
run never leaves a half-written file. A new run directory is assembled under a temporary name
with its settings and first checkpoint and renamed into place whole, so a directory that exists
can always be resumed; one that exists is never overwritten, and one process at a time writes it
(`locked`). The checkpoint is the truth: the log and the rewrite history are derived from it and
written after it, and again on resume. A write that fails (a full disk) leaves the last
checkpoint as it was and raises `WriteError` naming the file and the free space.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from graphmorph.errors import GraphmorphError

__all__ = ["RunError", "WriteError", "RunDirectory", "save_atomically", "load_saved", "publish", "CHECKPOINT", "LOG"]

CHECKPOINT = "checkpoint.pt"
LOG = "log.json"
LOCK = ".lock"


class RunError(GraphmorphError, ValueError):
    """A run directory is missing, already exists, is in use, or holds no usable checkpoint."""


class WriteError(GraphmorphError, OSError):
    """A file could not be written (a full disk, no permission); what was there before is kept."""


def publish(temporary: Path, target: Path) -> None:
    """Rename the finished `temporary` onto `target` (the one step that makes a write visible)."""
    os.replace(temporary, target)


def _write_via_temporary(target: Path, write: Callable[[Path], None]) -> Path:
    """`write` a temporary file beside `target`, then publish it; on failure remove the temporary
    and raise WriteError (torch reports a full disk as a RuntimeError, "unexpected pos ...")."""
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        write(temporary)
        publish(temporary, target)
    except (OSError, RuntimeError) as err:
        temporary.unlink(missing_ok=True)
        raise WriteError(f"cannot write {target}: {_why(err, target)}") from None
    return target


def _why(err: BaseException, target: Path) -> str:
    """The cause of a failed write, with the free space on the disk where it failed."""
    reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
    try:
        return f"{reason} ({shutil.disk_usage(target.parent).free / 1e6:.1f} MB free on that disk)"
    except OSError:
        return reason


def save_atomically(payload: Any, target: Path) -> Path:
    """`torch.save` to a temporary name beside `target`, renamed into place: never half-written."""
    return _write_via_temporary(target, lambda temporary: torch.save(payload, temporary))


class RunDirectory:
    """The files of one run under `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def ensure_new(cls, path: str | Path) -> None:
        """Refuse a path that exists (a run directory is never overwritten), or one that cannot be
        created: below a file, or in a folder this process may not write."""
        if Path(path).exists():
            raise RunError(f"run directory {path} already exists; continue it with --resume {path} "
                           "or choose another --run-dir")
        parent = _existing_parent(Path(path).absolute().parent)
        if not parent.is_dir():
            raise RunError(f"cannot create the run directory {path}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"cannot create the run directory {path}: {parent} is not writable")

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any], checkpoint: dict[str, Any]) -> "RunDirectory":
        """A new run directory at `path` holding the run's settings (config.json) and its first
        checkpoint, assembled under a temporary name and renamed into place whole."""
        cls.ensure_new(path)
        path = Path(path)
        staging = cls(path.with_name(f".{path.name}.partial"))
        try:
            if staging.path.exists():  # left by a run killed while starting
                shutil.rmtree(staging.path)
            staging.path.mkdir(parents=True)
        except OSError as err:
            raise RunError(f"cannot create the run directory {path}: {_why(err, _existing_parent(path))}") from None
        staging.write_json("config.json", config)
        staging.save_checkpoint(checkpoint)
        try:
            publish(staging.path, path)
        except OSError:
            shutil.rmtree(staging.path, ignore_errors=True)
            cls.ensure_new(path)  # another process created it meanwhile
            raise
        return cls(path)

    @contextlib.contextmanager
    def locked(self) -> Iterator["RunDirectory"]:
        """Hold the directory for this process; RunError if another process holds it."""
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            yield self
            return
        with open(self.path / LOCK, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError(f"{self.path} is being written by another graphmorph process; wait for it to "
                               "finish or stop it, then resume") from None
            yield self

    @classmethod
    def existing(cls, path: str | Path, kind: str) -> "RunDirectory":
        """The run directory at `path` of a `kind` run (a registered search's), with a checkpoint."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"there is no run directory {run.path}")
        found = run.kind()
        if found is not None and found != kind:
            raise RunError(f"{run.path} is {_a(found)} run, not {_a(kind)} run: graphmorph {found} --resume {run.path}")
        if not (run.path / CHECKPOINT).is_file():
            raise RunError(f"{run.path} holds no {CHECKPOINT} to resume from: the run stopped before its first "
                           "checkpoint; start it again in a new --run-dir")
        return run

    def kind(self) -> str | None:
        """The search that wrote the run ("autogrow" for `graphmorph train` too), as config.json
        records it; None without one. Runs written before config.json recorded its kind are NAC's
        when their settings name a base net, else AutoGrow's."""
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(config, dict):
            return None
        return config.get("kind") or ("nac" if "base" in config else "autogrow")

    def write_text(self, name: str, text: str) -> Path:
        return _write_via_temporary(self.path / name, lambda temporary: temporary.write_text(text))

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


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


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
