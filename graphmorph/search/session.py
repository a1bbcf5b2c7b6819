"""The skeleton both searches share: start a new run or resume one, the data and trainer, the RNGs,
a checkpoint after every unit of work, divergence messages, and the loop. An algorithm supplies
its config type, its state, `step()` (one unit: an epoch, an iteration, a trained net) and what it
saves besides.

The checkpoint holds everything, the rewrite history included; the log and rewrites.json are
derived from it, written after it and again on resume, so no kill leaves them behind it. A
resumed run holds its directory's lock, and imports no factory its saved settings name unless
the user names it too (`allow_code`).

Under torchrun every rank runs the loop on its share of each batch (`graphmorph.run.distributed`);
rank 0 alone writes the run directory.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Collection

import torch

from graphmorph.errors import ConfigError
from graphmorph.run.data import Dataset, data_factory, load
from graphmorph.run.distributed import World, joined
from graphmorph.run.history_file import history_document
from graphmorph.run.imports import require_named
from graphmorph.run.report import write_rewrites
from graphmorph.run.reproduce import reproduction_record
from graphmorph.run.rundir import CHECKPOINT, RunDirectory
from graphmorph.run.threads import ThreadPolicy
from graphmorph.run.train import Trainer, TrainingDiverged, pick_device

__all__ = ["SearchSession"]


class SearchSession:
    """One run of a search. Subclasses set `kind` (the run directory's kind), `title` (the
    algorithm's name in messages), `config_type` (with `from_dict` and `validate`) and
    `rewrite_rng_key` (the checkpoint key of the RNG their rewrites draw from), set `source` (the
    model the rewrites apply to), and implement `step`, `done`, `finish`, `saved` / `load`, `where`,
    `log_rows`, `rewrites`, and optionally `begin` and `resolved_config`."""

    kind: ClassVar[str]
    title: ClassVar[str]
    config_type: ClassVar[type]
    rewrite_rng_key: ClassVar[str]

    def __init__(self, config, world: World, progress: Callable[[str], None], data: Dataset | None = None):
        self.config, self.world, self.progress = config, world, progress
        self.directory: RunDirectory | None = None  # set once the run directory exists
        self.data = data or load(config.data, config.val_fraction, config.fraction, config.seed)
        self.trainer = Trainer(pick_device(config.device, world), config.batch_size, self.data.augment, world=world)
        d = self.data
        self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y = self.trainer.place_data(
            d.train_x, d.train_y, d.val_x, d.val_y, d.test_x, d.test_y)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.rewrite_rng = torch.Generator().manual_seed(config.seed + 1)
        self.checkpointed = False
        self.allow_code: Collection[str] = ()     # factories the user named, for files the run reads

    @classmethod
    def run(cls, config, run_dir: str | Path, resume: bool = False,
            progress: Callable[[str], None] = print, allow_code: Collection[str] = ()) -> dict[str, Any]:
        """Run (or resume) the search in `run_dir`; returns the result also written to `run_dir/result.json`.
        A resumed run imports a model or data factory its saved settings name only if it is in `allow_code`."""
        with joined() as world, contextlib.ExitStack() as held:
            progress = world.main_only(progress)
            if resume:
                directory = world.from_main(lambda: RunDirectory.existing(run_dir, cls.kind))
                if world.is_main:
                    held.enter_context(directory.locked())
                checkpoint = world.from_main(directory.load_checkpoint)
                config = cls.config_type.from_dict(checkpoint["config"])
                for spec in cls.named_code(config):
                    require_named(spec, allow_code, f"{directory.path / CHECKPOINT}'s settings", ConfigError)
                threads = held.enter_context(
                    ThreadPolicy.restored(checkpoint.get("threads"), config.threads, progress).held())
                session = cls._started(config, world, progress, threads, allow_code)
                session.restore(checkpoint)
                session.directory = directory
                world.from_main(session.write_derived)  # the checkpoint may be ahead of the log it left
                progress(f"resuming {run_dir} {session.where()} on {threads.threads} thread(s)")
            else:
                config.validate()
                world.check_same(f"{cls.title} settings", dataclasses.asdict(config))
                world.from_main(lambda: RunDirectory.ensure_new(run_dir))
                threads = held.enter_context(ThreadPolicy(config.threads, say=progress).held())
                # data and model first: a failed start leaves no folder
                session = cls._started(config, world, progress, threads, allow_code)
                session.begin()
                session.trainer.settle_threads(session.gm, session.train_x, session.train_y)
                session.directory = world.from_main(
                    lambda: RunDirectory.create(run_dir, {"kind": cls.kind, **session.resolved_config(),
                                                          "reproduce": session.reproduction()},
                                                session.checkpoint_payload()))
                if world.is_main:
                    held.enter_context(session.directory.locked())
                session.checkpointed = True  # an interrupt in the first unit can resume from the start
                world.from_main(session.write_derived)
            return session.loop()

    @classmethod
    def _started(cls, config, world: World, progress: Callable[[str], None], threads: ThreadPolicy,
                 allow_code: Collection[str]) -> "SearchSession":
        """A session (data loaded, model built) whose trainer follows `threads`."""
        threads.watching = not world.distributed
        session = cls(config, world, progress)
        session.trainer.threads = threads
        session.allow_code = allow_code
        return session

    def reproduction(self) -> dict[str, Any]:
        """config.json's record of what a rerun needs: seed, threads, versions, device."""
        return reproduction_record(self.config.seed, self.trainer.threads, self.trainer.device, self.world.size)

    @classmethod
    def named_code(cls, config) -> list[str]:
        """The factories (model, data) a run's settings name: code its resume would import."""
        model = getattr(config, "model", None)
        return [spec for spec in (model, data_factory(config.data)) if spec]

    # ---- what an algorithm supplies

    def begin(self) -> None:
        """A new run's first decisions, before its directory exists."""

    def resolved_config(self) -> dict[str, Any]:
        """config.json: the settings, and any defaults resolved from them."""
        return dataclasses.asdict(self.config)

    def where(self) -> str:
        """Where a resumed run stands, for the resume message."""
        raise NotImplementedError

    def done(self) -> bool:
        raise NotImplementedError

    def step(self) -> str:
        """One unit of work; returns its progress line."""
        raise NotImplementedError

    def saved(self) -> dict[str, Any]:
        """What the checkpoint holds besides config, state and RNGs (model weights, ...)."""
        raise NotImplementedError

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the model and state from a checkpoint."""
        raise NotImplementedError

    def log_rows(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def rewrites(self) -> list[dict[str, Any]]:
        """The rewrite history of the net the checkpoint holds, on the model `source` builds."""
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        raise NotImplementedError

    # ---- the skeleton

    def loop(self) -> dict[str, Any]:
        while not self.done():
            self.advance()
        return self.finish()

    def advance(self) -> None:
        """One step, its log row stamped with the thread count it started at, checkpointed, then
        its progress line."""
        threads = self.trainer.threads.threads if self.trainer.threads is not None else None
        line = self.step()
        rows = self.log_rows()
        if rows and "threads" not in rows[-1] and threads is not None:
            rows[-1]["threads"] = threads
        self.checkpoint()
        if line:
            self.progress(line)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.load(checkpoint)
        torch.set_rng_state(checkpoint["rng"])
        self.shuffle.set_state(checkpoint["shuffle_rng"])
        self.rewrite_rng.set_state(checkpoint[self.rewrite_rng_key])
        self.checkpointed = True
        self.world.check_replicas(self.gm, "restoring the checkpoint")

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything a resume needs, and the history the checkpoint's weights fit."""
        return {"config": dataclasses.asdict(self.config), "state": dataclasses.asdict(self.state), **self.saved(),
                "history": history_document(self.source, self.rewrites()), "normalization": self.data.normalization,
                "threads": self.trainer.threads.record() if self.trainer.threads is not None else None,
                "rng": torch.get_rng_state(), "shuffle_rng": self.shuffle.get_state(),
                self.rewrite_rng_key: self.rewrite_rng.get_state()}

    def checkpoint(self) -> None:
        """Save everything a resume needs, atomically, then what derives from it (rank 0, once the
        directory exists)."""
        if self.directory is None or not self.world.is_main:
            return
        self.directory.save_checkpoint(self.checkpoint_payload())
        self.checkpointed = True
        self.write_derived()

    def write_derived(self) -> None:
        """The log and rewrites.json, from the state the checkpoint holds."""
        self.directory.write_log(self.log_rows())
        write_rewrites(self.directory, self.source, self.rewrites())

    def diverged(self, err: TrainingDiverged, where: str) -> TrainingDiverged:
        """The error for training that diverged `where`, saying what the run directory keeps."""
        if self.directory is None:
            kept = "nothing was written"
        elif self.checkpointed:
            kept = f"the last good checkpoint ({self.where()}) is kept in {self.directory.path}"
        else:
            kept = f"{self.directory.path} holds no checkpoint"
        return TrainingDiverged(f"{err} {where}; {kept}: lower --lr and start a new run")
