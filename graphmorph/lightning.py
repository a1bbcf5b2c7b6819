"""AutoGrow and pruning in a PyTorch Lightning fit (`pip install "graphmorph[lightning]"`).

    module = MyLightningModule()                      # keeps its network in `module.net`
    grow = AutoGrowCallback(example_input, monitor="val_acc", K=3, J=30, tau=0.05, init="gau")
    lightning.Trainer(max_epochs=300, callbacks=[grow]).fit(module, train_loader, val_loader)

At setup the callback captures `module.net` and puts the captured net in its place; after each
validation it reports the logged accuracy to `graphmorph.AutoGrow`, and when the net grows it
swaps `module.net` for the grown net and rebuilds the trainer's optimizers (surviving parameters
keep their state, and schedulers follow). When the search is done it stops the fit.

`PruneCallback(example_input, targets=(0.7, 0.5), steps=2, finetune_epochs=4)` drives
`graphmorph.Prune` the same way: it prunes before the first epoch and whenever a step's fine-tuning
epochs are done, swaps the pruned net in, and stops the fit after the last target's fine-tuning;
`points` lists each target reached with the monitored metric after its fine-tuning. Both resume
from a Lightning checkpoint given as `resume_from` (and to `fit(ckpt_path=...)`).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from graphmorph.errors import ConfigError, first_line
from graphmorph.search.grower import AutoGrow, Change
from graphmorph.search.pruner import Point, Prune

try:
    import lightning.pytorch as pl
except ImportError as err:   # the optional extra is not installed
    raise ImportError('graphmorph.lightning needs PyTorch Lightning: pip install "graphmorph[lightning]"') from err

__all__ = ["AutoGrowCallback", "PruneCallback"]


class AutoGrowCallback(pl.Callback):
    """Drive `graphmorph.AutoGrow` from a Lightning fit.

    example_input: a batch the net takes (for capture). attribute: the LightningModule attribute
    holding the network. monitor: the logged validation accuracy, multiplied by `scale` to give
    percent (100 for a fraction in [0, 1], as torchmetrics logs it; 1 for percent). resume_from: the
    Lightning checkpoint a resumed fit loads (`fit(ckpt_path=...)` too), so the callback can grow
    the net to the saved architecture before Lightning loads its weights. Other keywords go to
    `AutoGrow` (policy, K, J, tau, init, ...).
    """

    def __init__(self, example_input: torch.Tensor, *, attribute: str = "net", monitor: str = "val_acc",
                 scale: float = 100.0, resume_from: str | Path | None = None, **settings: Any):
        self.example_input, self.attribute, self.monitor, self.scale = example_input, attribute, monitor, scale
        self.resume_from, self.settings = resume_from, settings
        self.grower: AutoGrow | None = None

    @property
    def state_key(self) -> str:
        return f"AutoGrowCallback[{self.attribute}]"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.grower is not None:
            return
        if trainer.world_size > 1:
            raise ConfigError("AutoGrowCallback swaps the network between epochs, which a multi-process strategy "
                              "cannot follow; fit on one device, or run `graphmorph autogrow` under torchrun")
        if not hasattr(pl_module, self.attribute):
            raise ConfigError(f"{type(pl_module).__name__} has no attribute {self.attribute!r} holding the network: "
                              "pass AutoGrowCallback(..., attribute=NAME)")
        self.grower = AutoGrow(getattr(pl_module, self.attribute), self.example_input, **self.settings)
        if self.resume_from is not None:
            self.grower.load_state_dict(_saved_state(self.resume_from, self.state_key))
        setattr(pl_module, self.attribute, self.grower.model.to(pl_module.device))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the epoch's metrics are final (as EarlyStopping), one `epoch_end` of the search."""
        if trainer.sanity_checking or self.grower.done:
            return
        if self.monitor not in trainer.callback_metrics:
            raise ConfigError(f"AutoGrowCallback monitors {self.monitor!r}, which the module did not log; logged: "
                              f"{', '.join(sorted(trainer.callback_metrics)) or 'nothing'} (log it in "
                              "validation_step with self.log, or pass monitor=NAME)")
        change = self.grower.epoch_end(float(trainer.callback_metrics[self.monitor]) * self.scale)
        if change.grew:
            self._adopt(trainer, pl_module, change)
        if self.grower.done:
            trainer.should_stop = True

    def _adopt(self, trainer: pl.Trainer, pl_module: pl.LightningModule, change: Change) -> None:
        _swap(trainer, pl_module, self.attribute, change.model, change.optimizer)

    def state_dict(self) -> dict[str, Any]:
        return self.grower.state_dict() if self.grower is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning restores this after the weights; the architecture came from `resume_from`."""
        if state_dict and self.grower is not None and self.grower.state_dict()["state"] != state_dict["state"]:
            raise ConfigError("the checkpoint's search state differs from the one loaded from resume_from: pass the "
                              "same checkpoint to AutoGrowCallback(resume_from=...) and fit(ckpt_path=...)")

def _saved_state(path: str | Path, key: str) -> dict[str, Any]:
    """A callback's state (`key`) in the Lightning checkpoint at `path`, read with
    `weights_only=True`: tensors and plain containers only, so a crafted checkpoint runs no code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"resume_from={str(path)!r}: there is no such file") from None
    except Exception as err:  # torch's UnpicklingError for anything beyond weights
        raise ConfigError(f"resume_from={str(path)!r} holds more than tensors and plain data, or is not a "
                          f"checkpoint; graphmorph reads checkpoints with weights_only=True and runs no code from "
                          f"them ({first_line(err)})") from None
    saved = checkpoint.get("callbacks", {}).get(key)
    if not saved:
        raise ConfigError(f"{path} holds no {key} state: it was not saved by a fit with this callback")
    return saved


def _swap(trainer: pl.Trainer, pl_module: pl.LightningModule, attribute: str, model: torch.nn.Module,
          rebuild) -> None:
    """Put `model` in the module's `attribute` and every optimizer (and its schedulers) on its parameters."""
    setattr(pl_module, attribute, model.to(pl_module.device))
    rebuilt = {id(old): rebuild(old) for old in trainer.optimizers}
    for config in trainer.lr_scheduler_configs:
        config.scheduler.optimizer = rebuilt[id(config.scheduler.optimizer)]
    trainer.optimizers = list(rebuilt.values())


class PruneCallback(pl.Callback):
    """Drive `graphmorph.Prune` from a Lightning fit.

    example_input: a batch the net takes. attribute: the LightningModule attribute holding the
    network. monitor: a logged metric recorded with each point after its fine-tuning (optional).
    resume_from: the Lightning checkpoint a resumed fit loads (`fit(ckpt_path=...)` too), so the
    callback can prune the net to the saved architecture before Lightning loads its weights. Other
    keywords go to `Prune` (targets, measure, schedule, steps, finetune_epochs, criterion, method,
    evaluate, data, tolerance). One device.
    """

    def __init__(self, example_input: torch.Tensor, *, attribute: str = "net", monitor: str | None = None,
                 resume_from: str | Path | None = None, **settings: Any):
        self.example_input, self.attribute, self.monitor, self.settings = example_input, attribute, monitor, settings
        self.resume_from = resume_from
        self.pruner: Prune | None = None
        self.points: list[tuple[Point, float | None]] = []
        self._until, self._pending = 0, None     # the epoch the step's fine-tuning ends before; its point

    @property
    def state_key(self) -> str:
        return f"PruneCallback[{self.attribute}]"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.pruner is not None:
            return
        if trainer.world_size > 1:
            raise ConfigError("PruneCallback swaps the network between epochs, which a multi-process strategy "
                              "cannot follow; fit on one device")
        if not hasattr(pl_module, self.attribute):
            raise ConfigError(f"{type(pl_module).__name__} has no attribute {self.attribute!r} holding the network: "
                              "pass PruneCallback(..., attribute=NAME)")
        self.pruner = Prune(getattr(pl_module, self.attribute), self.example_input, **self.settings)
        if self.resume_from is not None:
            self._restore(_saved_state(self.resume_from, self.state_key))
        setattr(pl_module, self.attribute, self.pruner.model.to(pl_module.device))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune when the last step's fine-tuning is done (steps without fine-tuning follow at once)."""
        while trainer.current_epoch >= self._until and not self.pruner.done:
            step = self.pruner.step()
            _swap(trainer, pl_module, self.attribute, step.model, step.optimizer)
            self._until, self._pending = trainer.current_epoch + step.finetune_epochs, step.point
            if not step.finetune_epochs:
                self._reach(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self._until:
            self._reach(trainer)
            if self.pruner.done:
                trainer.should_stop = True

    def _reach(self, trainer: pl.Trainer) -> None:
        if self._pending is not None:
            metric = trainer.callback_metrics.get(self.monitor) if self.monitor else None
            self.points.append((self._pending, None if metric is None else float(metric)))
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        if self.pruner is None:
            return {}
        return {"pruner": self.pruner.state_dict(), "until": self._until,
                "pending": asdict(self._pending) if self._pending else None,
                "points": [(asdict(point), metric) for point, metric in self.points]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning restores this after the weights; the architecture came from `resume_from`."""
        if state_dict and self.pruner is not None and self.state_dict() != state_dict:
            raise ConfigError("the checkpoint's pruning state differs from the one loaded from resume_from: pass "
                              "the same checkpoint to PruneCallback(resume_from=...) and fit(ckpt_path=...)")

    def _restore(self, saved: dict[str, Any]) -> None:
        self.pruner.load_state_dict(saved["pruner"])
        self._until = saved["until"]
        self._pending = Point(**saved["pending"]) if saved["pending"] else None
        self.points = [(Point(**point), metric) for point, metric in saved["points"]]
