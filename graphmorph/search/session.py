"""The skeleton both searches share: start a new run or resume one, the data and trainer, the RNGs,
a checkpoint after every unit of work, divergence messages, and the loop. An algorithm supplies
its config type, its state, `step()` (one unit: an epoch, an iteration, a trained net) and what it
saves besides.

Under torchrun every rank runs the loop on its share of each batch (`graphmorph.run.distributed`);
rank 0 alone writes the run directory.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from graphmorph.run.data import Dataset, load
from graphmorph.run.distributed import World, joined
from graphmorph.run.rundir import RunDirectory
from graphmorph.run.train import Trainer, TrainingDiverged, pick_device

__all__ = ["SearchSession"]


class SearchSession:
    """One run of a search. Subclasses set `kind` (the run directory's kind), `title` (the
    algorithm's name in messages), `config_type` (with `from_dict` and `validate`) and
    `rewrite_rng_key` (the checkpoint key of the RNG their rewrites draw from), and implement
    `step`, `done`, `finish`, `saved` / `load`, `where`, `log_rows`, and optionally `begin` and
    `resolved_config`."""

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

    @classmethod
    def run(cls, config, run_dir: str | Path, resume: bool = False,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
        """Run (or resume) the search in `run_dir`; returns the result also written to `run_dir/result.json`."""
        with joined() as world:
            progress = world.main_only(progress)
            if resume:
                checkpoint = world.from_main(lambda: RunDirectory.existing(run_dir, cls.kind).load_checkpoint())
                session = cls(cls.config_type.from_dict(checkpoint["config"]), world, progress)
                session.restore(checkpoint)
                session.directory = RunDirectory(run_dir)
                progress(f"resuming {run_dir} {session.where()}")
            else:
                config.validate()
                world.check_same(f"{cls.title} settings", dataclasses.asdict(config))
                world.from_main(lambda: RunDirectory.ensure_new(run_dir))
                session = cls(config, world, progress)  # data and model first: a failed start leaves no folder
                session.begin()
                session.directory = world.from_main(lambda: RunDirectory.create(run_dir, session.resolved_config()))
                session.checkpoint()  # an interrupt in the first unit can resume from the start
            return session.loop()

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

    def finish(self) -> dict[str, Any]:
        raise NotImplementedError

    # ---- the skeleton

    def loop(self) -> dict[str, Any]:
        while not self.done():
            self.advance()
        return self.finish()

    def advance(self) -> None:
        """One step, checkpointed, then its progress line."""
        line = self.step()
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

    def checkpoint(self) -> None:
        """Save everything a resume needs, atomically (rank 0, once the directory exists)."""
        if self.directory is None or not self.world.is_main:
            return
        self.directory.save_checkpoint({
            "config": dataclasses.asdict(self.config), "state": dataclasses.asdict(self.state), **self.saved(),
            "rng": torch.get_rng_state(), "shuffle_rng": self.shuffle.get_state(),
            self.rewrite_rng_key: self.rewrite_rng.get_state()})
        self.directory.write_log(self.log_rows())
        self.checkpointed = True

    def diverged(self, err: TrainingDiverged, where: str) -> TrainingDiverged:
        """The error for training that diverged `where`, saying what the run directory keeps."""
        if self.directory is None:
            kept = "nothing was written"
        elif self.checkpointed:
            kept = f"the last good checkpoint ({self.where()}) is kept in {self.directory.path}"
        else:
            kept = f"{self.directory.path} holds no checkpoint"
        return TrainingDiverged(f"{err} {where}; {kept}: lower --lr and start a new run")
