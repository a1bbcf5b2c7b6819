"""AutoGrow (paper Algorithm 1): grow stages round-robin until growth stops paying, then fine-tune.

Every epoch ends with an atomic checkpoint (model weights, rewrite history, optimizer state by
parameter name, search state, RNG states), so `resume` continues an interrupted run and, on the
CPU, reaches the same found net and history as an uninterrupted one.

Under torchrun every rank runs this loop on its share of each batch (`graphmorph.run.distributed`);
decisions come from all-reduced accuracies, rewrites are checked to leave identical replicas, and
rank 0 alone writes the run directory.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from torch import fx

from graphmorph.graph.analysis import find_blocks
from graphmorph.graph.capture import model_name
from graphmorph.run.data import Dataset
from graphmorph.run.distributed import World
from graphmorph.errors import ConfigError
from graphmorph.graph.history import history
from graphmorph.models import FAMILIES, arch_of, check_arch, envelope_arch, structure_label
from graphmorph.run.events import BudgetSpent, DepthCapped, Found, Grew, Stopped, WidthCapped, event_fields
from graphmorph.run.report import finish_run
from graphmorph.run.optim import optimizer_state, restore_optimizer
from graphmorph.run.sources import ModelSource, is_factory
from graphmorph.search.algorithms import Algorithm, ResultKind, register_algorithm
from graphmorph.search.budget import Budget, Estimate, baseline_epochs, estimate
from graphmorph.search.config import config_from_dict, require
from graphmorph.search.grower import GROW_DIMENSIONS, AutoGrow, Change, growth_checks, shape_text
from graphmorph.search.session import SearchSession
from graphmorph.search.options import (BATCH_SIZE, DATA, DEVICE, FRACTION, SEED, THREADS, VAL_FRACTION, option,
                                       positive, positive_float, shape, sizes)
from graphmorph.search.policies import POLICIES
from graphmorph.run.threads import threads_check
from graphmorph.run.train import TrainingDiverged
from transforms.initializers import GROWTH_INITS, INITS

__all__ = ["AutoGrowConfig", "ConfigError", "RunTimes", "run", "COMPILE_MODES"]

# When torch.compile runs: never; for the fine-tuning of the found net only (one compile); or after
# every growth as well (a compile per growth, measured in `compile_seconds`).
COMPILE_MODES = ("off", "finetune", "always")

@dataclass(frozen=True)
class AutoGrowConfig:
    """Every AutoGrow setting, with the paper's p-AutoGrow defaults; each option's help and unit
    is in its field's metadata (the command line is generated from them)."""

    seed_net: str = field(default="Basic3ResNet", metadata=option(
        "family (starts at 1 block per stage) or arch string", exclusive="start"))
    model: str | None = field(default=None, metadata=option(
        "grow your own model: package.module:factory, a callable returning an nn.Module (given num_classes= and "
        "in_channels= if it takes them)", metavar="MODULE:FACTORY", exclusive="start"))
    input_shape: tuple[int, ...] | None = field(default=None, metadata=option(
        "the input your model takes, checked against the data's", type=shape, metavar="C,H,W",
        default_text="the data's"))
    data: str = field(default="digits", metadata=DATA)
    fraction: float = field(default=1.0, metadata=FRACTION)        # dataset-size study
    val_fraction: float = field(default=0.1, metadata=VAL_FRACTION)
    policy: str = field(default="periodic", metadata=option("growing policy", choices=POLICIES))
    K: int = field(default=3, metadata=option("epochs between growth checks, also the growth period", type=int))
    J: int | None = field(default=None, metadata=option(
        "stopping window in epochs", type=int,
        default_text="the baseline schedule's epochs at top LR (from the training set's size) for periodic, K for convergent"))
    tau: float = field(default=0.05, metadata=option("accuracy gain that counts, percentage points", type=float))
    init: str = field(default="gau", metadata=option("initialiser of new blocks", choices=INITS))
    std: float = field(default=1.0, metadata=option("noise std of uni/gau", type=positive_float))
    lr: float | None = field(default=None, metadata=option(
        "growth LR", type=positive_float, default_text="0.1 residual, 0.01 plain"))
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = field(default=128, metadata=BATCH_SIZE)
    finetune_epochs: int | None = field(default=None, metadata=option(
        "fine-tuning epochs", type=int, default_text="the baseline schedule's epochs, from the training set's size"))
    max_depth: int = field(default=64, metadata=option("blocks per stage at most", type=positive))
    max_growth_epochs: int | None = field(default=None, metadata=option(
        "cap on the growth phase, epochs", type=positive, default_text="no cap"))
    widths: tuple[int, ...] | None = field(default=None, metadata=option(
        "per-stage widths, comma-separated", type=sizes, default_text="the family's"))
    seed: int = field(default=0, metadata=SEED)
    device: str = field(default="auto", metadata=DEVICE)
    threads: int | str = field(default="auto", metadata=THREADS)
    compile: str = field(default="off", metadata=option(
        "torch.compile the found net for fine-tuning (bare --compile), or also after every growth (always)",
        nargs="?", const="finetune", choices=COMPILE_MODES))
    grow: str = field(default="depth", metadata=option(
        "what a growth adds to a stage: a block (depth, the paper), a quarter more channels in each of its channel "
        "groups (width), or both", choices=GROW_DIMENSIONS))   # "none": graphmorph train
    max_width: float = field(default=4.0, metadata=option(
        "width growth: a stage stops at this multiple of its seed width", type=positive_float))
    test_every: int = field(default=1, metadata=option(
        "score the test set every N epochs, for plots; 0 scores the final net only", type=int, metavar="N"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AutoGrowConfig":
        if isinstance(values.get("compile"), bool):  # checkpoints before the compile modes
            values = {**values, "compile": "always" if values["compile"] else "off"}
        if isinstance(values.get("grow"), bool):     # checkpoints before width growth: True grew depth
            values = {**values, "grow": "depth" if values["grow"] else "none"}
        return config_from_dict(cls, values, "AutoGrow")

    def validate(self) -> None:
        require(growth_checks(self.policy, self.K, self.J, self.tau, self.init, self.std, self.max_depth,
                              self.finetune_epochs, "depth" if self.grow == "none" else self.grow, self.max_width) + [
            (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 2, f"batch size must be at least 2, got {self.batch_size}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            threads_check(self.threads),
            (self.test_every >= 0, f"test every must be >= 0 epochs, got {self.test_every}"),
            (self.compile in COMPILE_MODES, f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}"),
            (self.model is None or is_factory(self.model),
             f"--model must be package.module:factory, got {self.model!r} (an architecture goes in --seed-net)"),
            (self.model is None or self.widths is None,
             "widths apply to seed nets; a model factory sets its own widths"),
            (self.input_shape is None or (len(self.input_shape) == 3 and min(self.input_shape) >= 1),
             f"input shape must be three positive sizes C,H,W, got {self.input_shape}"),
        ])
        self.seed_arch()  # raises ArchError for a bad seed net

    def label(self) -> str:
        """What grows: the user's factory, or the seed net's architecture."""
        return self.model or self.seed_arch()

    def seed_arch(self) -> str:
        if self.seed_net in FAMILIES:
            return f"{self.seed_net}-" + "-".join("1" for _ in FAMILIES[self.seed_net].default_widths)
        check_arch(self.seed_net)
        return self.seed_net

    def budget(self, n_train: int) -> Budget:
        """J and the fine-tuning epochs: as given, or from the baseline schedule for `n_train`
        training images (`graphmorph.search.budget`); J is K for convergent growth."""
        baseline = baseline_epochs(n_train)
        J = self.J if self.J is not None else (self.K if self.policy == "convergent" else max(1, baseline // 2))
        finetune = baseline if self.finetune_epochs is None else self.finetune_epochs
        return Budget(n_train, baseline, J, finetune, self.max_growth_epochs)


@dataclass
class RunTimes:
    """Where the time went; saved in every checkpoint (the search state is the controller's)."""

    growth_seconds: float = 0.0
    finetune_seconds: float = 0.0
    rewrite_seconds: float = 0.0       # of growth_seconds: grow, its verification, the optimizer rebuild
    estimated_seconds: float | None = None   # the estimate printed before training


def run(config: AutoGrowConfig | None, run_dir: str | Path, resume: bool = False,
        progress: Callable[[str], None] = print, allow_code: Collection[str] = ()) -> dict[str, Any]:
    """Run (or resume) AutoGrow, or plain training when `config.grow` is "none"; returns the result
    that is also written to `run_dir/result.json`."""
    return _Session.run(config, run_dir, resume, progress, allow_code)


class _Session(SearchSession):
    """One run: the model, its optimizer and the search state; a step is one epoch."""

    kind, title, config_type, rewrite_rng_key = "autogrow", "AutoGrow", AutoGrowConfig, "grow_rng"

    def __init__(self, config: AutoGrowConfig, world: World, progress: Callable[[str], None]):
        super().__init__(config, world, progress)
        self.rows: list[dict[str, Any]] = []
        self.state = RunTimes()
        self.source = _model_source(config, self.data)
        self.gm = self.trainer.place_model(self.source.capture())  # seeds the global RNG with config.seed
        world.check_replicas(self.gm, "building the seed net")
        self.budget = config.budget(len(self.train_y))

    def begin(self) -> None:
        """The controller (a trial growth of each stage says which can grow), the budget and its
        estimate, and the optimizer."""
        self.grower = self._controller()
        for index, reason in self.grower.refusals.items():
            self.progress(f"stage {index} will not grow: {reason}")
        self.progress(self.budget.text())
        self.estimate = self._estimate()
        self.state.estimated_seconds = round(self.estimate.seconds, 1)
        self.progress(self.estimate.text())
        self.base_lr = self._base_lr()
        self.optimizer = self._sgd(self.gm.parameters())

    def _controller(self) -> AutoGrow:
        config, budget = self.config, self.budget
        return AutoGrow(self.gm, policy=config.policy, K=config.K, J=budget.J, tau=config.tau,
                        init=config.init, std=config.std, max_depth=config.max_depth,
                        max_growth_epochs=config.max_growth_epochs, finetune_epochs=budget.finetune_epochs,
                        stages=None if self.grows else [], grow=self.config.grow if self.grows else "depth",
                        max_width=config.max_width, data=self._adam_batches if GROWTH_INITS[config.init].needs_data else None,
                        generator=self.rewrite_rng, name=config.label())

    @property
    def grows(self) -> bool:
        """False for `graphmorph train`: the seed net trained as it is."""
        return self.config.grow != "none"

    def _estimate(self) -> Estimate:
        config = self.config
        scored = len(self.val_y) + (len(self.test_y) // config.test_every if config.test_every else 0)
        return estimate(self.gm, self.source.example_input().to(self.trainer.device), self.trainer, self.train_x,
                        self.train_y, scored, self.budget, config.K, self.grower.state.growing, config.max_depth)

    def resolved_config(self) -> dict[str, Any]:
        budget = self.budget
        return {**dataclasses.asdict(self.config), "resolved": {
            "seed_arch": self.config.label(), "J": budget.J, "finetune_epochs": budget.finetune_epochs,
            "baseline_epochs": budget.baseline_epochs, "n_train": budget.n_train,
            "estimated_seconds": self.state.estimated_seconds}}

    def where(self) -> str:
        return f"after epoch {self.grower.state.epoch}"

    def load(self, checkpoint: dict[str, Any]) -> None:
        self.grower = self._controller()
        self.grower.load_state_dict(checkpoint["grower"])
        self.gm = self.trainer.place_model(self.grower.model)
        self.gm.load_state_dict(checkpoint["model"])
        self.base_lr = self._base_lr()
        self.optimizer = restore_optimizer(torch.optim.SGD, self.gm, checkpoint["optimizer"])
        self.state = RunTimes(**checkpoint["state"])
        self.rows = checkpoint["rows"]

    def _base_lr(self) -> float:
        if self.config.lr is not None:
            return self.config.lr
        return 0.1 if any(b.residual for b in find_blocks(self.gm)) else 0.01

    def _sgd(self, params) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=self.base_lr, momentum=self.config.momentum,
                               weight_decay=self.config.weight_decay)

    def _adam_batches(self):
        size = self.config.batch_size
        return ((self.train_x[i: i + size], self.train_y[i: i + size]) for i in range(0, len(self.train_y), size))

    # ---- one epoch

    def done(self) -> bool:
        return self.grower.done

    def step(self) -> str:
        search = self.grower.state
        began = time.perf_counter()
        lr = self.grower.learning_rate(self.base_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        phase = search.phase if self.grows else "train"   # graphmorph train: no growth, no fine-tuning
        self.trainer.compile = self.config.compile == "always" or (
            self.config.compile == "finetune" and search.phase == "finetune")
        try:
            train_loss, train_acc = self.trainer.train_epoch(self.gm, self.optimizer, self.train_x, self.train_y,
                                                             self.shuffle, label=f"epoch {search.epoch + 1} ({phase})")
        except TrainingDiverged as err:
            raise self.diverged(err, f"in epoch {search.epoch + 1} ({arch_of(self.gm)}, lr {lr:g})") from None
        _, val_acc = self.trainer.evaluate(self.gm, self.val_x, self.val_y)
        epoch = search.epoch + 1
        scheduled = self.config.test_every and epoch % self.config.test_every == 0
        test_acc = self._test_score() if scheduled else None
        arch = arch_of(self.gm)
        decided = time.perf_counter()
        change = self.grower.epoch_end(val_acc)
        if change.grew:
            self._adopt(change)
            self.state.rewrite_seconds += time.perf_counter() - decided
        seconds = time.perf_counter() - began
        if phase == "grow":
            self.state.growth_seconds += seconds
        else:
            self.state.finetune_seconds += seconds
        row = {"epoch": epoch, "phase": phase, "arch": arch, "lr": lr, "train_loss": round(train_loss, 6),
               "train_acc": round(train_acc, 4), "val_acc": round(val_acc, 4),
               "val_best": round(max(search.val_accuracy), 4), "test_acc": test_acc,
               **event_fields(list(change.events)), "seconds": round(seconds, 3)}
        self.rows.append(row)
        return _progress_line(row)

    def _adopt(self, change: Change) -> None:
        """Train the grown net from now on, with the optimizer's state for the parameters it kept."""
        new = self.trainer.place_model(change.model)
        stage = next(event.stage for event in change.events if isinstance(event, Grew))
        self.world.check_replicas(new, f"growing stage {stage}")
        self.optimizer = change.optimizer(self.optimizer)
        self.gm = new

    def saved(self) -> dict[str, Any]:
        return {"grower": self.grower.state_dict(), "model": self.gm.state_dict(),
                "optimizer": optimizer_state(self.optimizer, self.gm), "rows": self.rows}

    def log_rows(self) -> list[dict[str, Any]]:
        return self.rows

    def rewrites(self) -> list[dict[str, Any]]:
        return history(self.gm)

    def _test_score(self) -> float:
        """Test accuracy (%) of the current net: for plots and the result, never for decisions."""
        return round(self.trainer.evaluate(self.gm, self.test_x, self.test_y)[1], 4)

    def finish(self) -> dict[str, Any]:
        if self.rows[-1]["test_acc"] is None:  # scored only every few epochs, or never during the run
            self.rows[-1]["test_acc"] = self._test_score()
            if self.world.is_main:
                self.directory.write_log(self.rows)
        result = {
            "kind": "autogrow" if self.grows else "train",
            "data": self.config.data,
            "seed_arch": self.config.label(),
            "found": self.grower.state.found or _name_of(self.gm),
            "test_acc": self.rows[-1]["test_acc"],
            "val_best": max(self.grower.state.val_accuracy),
            "epochs": self.grower.state.epoch,
            "growth_seconds": round(self.state.growth_seconds, 3),
            "finetune_seconds": round(self.state.finetune_seconds, 3),
            "rewrite_seconds": round(self.state.rewrite_seconds, 3),
            "estimated_seconds": self.state.estimated_seconds,
            "J": self.budget.J, "finetune_epochs": self.budget.finetune_epochs,
            "compile_seconds": [round(s, 3) for s in self.trainer.compile_seconds],
            "device": str(self.trainer.device),
            "world_size": self.world.size,
        }
        return self.world.from_main(lambda: finish_run(self.directory, self.gm, self.source, self.rows, result,
                                                       self.data.normalization))


def _model_source(config: AutoGrowConfig, data: Dataset) -> ModelSource:
    shape = data.input_shape
    if config.input_shape is not None and tuple(config.input_shape) != shape:
        raise ConfigError(f"input shape {shape_text(config.input_shape)} does not match the data: "
                          f"{config.data} has {shape_text(shape)} images; drop --input-shape or pick data "
                          "of that shape")
    return ModelSource(config.label(), shape, data.num_classes, widths=config.widths, seed=config.seed)


def _progress_line(row: dict[str, Any]) -> str:
    line = (f"epoch {row['epoch']:>4}  {row['phase']:<8} {row['arch']:<26} lr {row['lr']:<7.3g} "
            f"loss {row['train_loss']:.3f}  train {row['train_acc']:5.1f}%  val {row['val_acc']:5.1f}% "
            f"(best {row['val_best']:5.1f}%)")
    if row["test_acc"] is not None:
        line += f"  test {row['test_acc']:5.1f}%"
    return line + (f"  | {row['event']}" if row["event"] else "")


def _name_of(gm: fx.GraphModule) -> str:
    """The trained net's name: its architecture string, or for an EnvelopeNet (which the string
    cannot tell apart from pruned variants) the label of its structure."""
    if model_name(gm) == "EnvelopeNet":
        return structure_label(envelope_arch(gm))
    return arch_of(gm)


def _summary(result: dict[str, Any], where) -> list[str]:
    from graphmorph.graph.flops import si

    if result["kind"] == "train":
        verb, timing = "trained", f"training {result['finetune_seconds']:.1f} s"
    else:
        verb, timing = "found", f"growth {result['growth_seconds']:.1f} s, fine-tuning {result['finetune_seconds']:.1f} s"
    return [f"{verb} {result['found']}: test accuracy {result['test_acc']:.2f}%, {si(result['macs'])} MACs, "
            f"{si(result['params'])} parameters; {timing}; results in {where}"]


ALGORITHM = register_algorithm(Algorithm(
    kind="autogrow", title="AutoGrow", config_type=AutoGrowConfig, run=run,
    help="discover a network's depth with AutoGrow (the main job)",
    description="Grow a seed network stage by stage (AutoGrow, Algorithm 1) until growth stops raising validation "
                "accuracy, then fine-tune. With no options: p-AutoGrow on digits.",
    unit="epoch", net=lambda c: c.model or c.seed_net,
    plan=lambda c: f"AutoGrow {c.label()} on {c.data}: {c.policy} growth in {c.grow}, K={c.K}, tau={c.tau}, "
                   f"init={c.init}",
    summary=_summary,
    results={"autogrow": ResultKind("AutoGrow", "o"), "train": ResultKind("trained from scratch", "s")},
    events=(Grew, Stopped, DepthCapped, WidthCapped, BudgetSpent, Found), controller=("AutoGrow", "graphmorph.search.grower")))
