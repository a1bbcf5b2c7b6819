"""`graphmorph prune`: a trained net at fractions of its MACs (parameters, latency), fine-tuned, every point saved.

The net comes from a finished run (`--from RUN`: autogrow, nac or train), a weights file
(`--weights FILE`: a graphmorph weights file with its history, or a state dict for `--model` or
`--seed-net`), or a seed net this job trains first. `graphmorph.Prune` (`graphmorph.search.pruner`)
takes the decisions on the validation split; each point's test accuracy is reported.

A unit of work is one training epoch of the unpruned net, one pruning step, or one fine-tuning
epoch; a checkpoint follows each, so an interrupted run resumes where it stopped and ends with
the same points. Each point is saved under `points/<measure>-<target>/`: `weights.pt` (the
weights with their rewrite history), `rewrites.json` (replayable on the unpruned net's source),
`model.onnx` (parity-checked) and `result.json`; the unpruned net under `points/unpruned/`.
The run's `result.json` lists them, `points.txt` tabulates them and `tradeoff.png` plots test
accuracy against the cost, the Pareto front ringed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from torch import fx

from graphmorph.errors import ConfigError
from graphmorph.graph.flops import si
from graphmorph.graph.history import history
from graphmorph.models import check_arch
from graphmorph.run.data import Dataset, data_factory
from graphmorph.run.distributed import World
from graphmorph.run.events import event_fields
from graphmorph.run.history_file import history_document, parse_history
from graphmorph.run.optim import optimizer_state, restore_optimizer
from graphmorph.run.report import plot_tradeoff, results_table, save_result
from graphmorph.run.rundir import RunDirectory, RunError
from graphmorph.run.sources import ModelSource, is_factory
from graphmorph.run.threads import threads_check
from graphmorph.run.train import TrainingDiverged, staircase_lr
from graphmorph.search.algorithms import Algorithm, ResultKind, register_algorithm
from graphmorph.search.artifacts import has_history, load_checkpoint, load_weights, save_weights
from graphmorph.search.budget import baseline_epochs, step_seconds
from graphmorph.search.budget_fit import MEASURES
from graphmorph.search.config import config_from_dict, require
from graphmorph.search.options import (BATCH_SIZE, DEVICE, FRACTION, SEED, THREADS, VAL_FRACTION, option, positive,
                                       positive_float)
from graphmorph.search.pruner import (METHODS, SCHEDULES, PrunedChannels, Prune, ReachedPoint, RemovedBlock,
                                      prune_checks)
from graphmorph.search.session import SearchSession
from transforms.channel_pruning import FilterRanking
from transforms.criteria import CRITERIA
from transforms.replayer import replay_architecture

__all__ = ["PruneConfig", "PruneRun", "run"]


def _fractions(text: str) -> tuple[float, ...]:
    """Comma-separated fractions in (0, 1): the targets."""
    import argparse

    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions such as 0.7,0.5,0.3, got {text!r}") from None
    if not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in (0, 1) such as 0.7,0.5,0.3, got {text!r}")
    return values


@dataclass(frozen=True)
class PruneConfig:
    """Every `graphmorph prune` setting; each option's help is in its field's metadata."""

    from_run: str | None = field(default=None, metadata=option(
        "prune the trained net of this run directory (autogrow, nac or train)", flag="--from", metavar="RUN",
        exclusive="start"))
    model: str | None = field(default=None, metadata=option(
        "prune your own model: package.module:factory (its trained weights in --weights)", metavar="MODULE:FACTORY",
        exclusive="start"))
    seed_net: str = field(default="Basic3ResNet-3-3-3", metadata=option(
        "architecture to prune: trained first on the data unless --weights gives its weights", exclusive="start"))
    weights: str | None = field(default=None, metadata=option(
        "trained weights: a graphmorph weights file (replay -o, a point's weights.pt: its history inside), or a "
        "state dict of --model or --seed-net", metavar="FILE"))
    data: str | None = field(default=None, metadata=option(
        "digits (embedded), mnist:DIR, fashion-mnist:DIR, cifar10:DIR, ..., or package.module:factory",
        metavar="NAME[:DIR]|MODULE:FACTORY", default_text="the run's data with --from, else digits"))
    fraction: float = field(default=1.0, metadata=FRACTION)
    val_fraction: float = field(default=0.1, metadata=VAL_FRACTION)
    macs: tuple[float, ...] | None = field(default=None, metadata=option(
        "targets: fractions of the unpruned net's MACs, comma-separated", type=_fractions, exclusive="budget",
        default_text="0.7,0.5,0.3"))
    params: tuple[float, ...] | None = field(default=None, metadata=option(
        "targets: fractions of the unpruned net's parameters, comma-separated", type=_fractions,
        exclusive="budget"))
    latency: tuple[float, ...] | None = field(default=None, metadata=option(
        "targets: fractions of the unpruned net's latency, measured in onnxruntime on one CPU thread for one "
        "image (kept channels in multiples of 8), comma-separated", type=_fractions, exclusive="budget"))
    schedule: str = field(default="iterative", metadata=option(
        "iterative: each target from the last in --steps steps with fine-tuning between; oneshot: each target "
        "from the unpruned net in one step", choices=SCHEDULES))
    steps: int = field(default=2, metadata=option("pruning steps per target (iterative)", type=positive))
    finetune_epochs: int | None = field(default=None, metadata=option(
        "fine-tuning epochs per target, shared over its steps", type=int,
        default_text="a quarter of the baseline schedule's epochs"))
    criterion: str = field(default="l2", metadata=option("channel importance", choices=tuple(CRITERIA)))
    method: str = field(default="channels", metadata=option(
        "channels; blocks (remove the residual blocks that cost least validation accuracy, then channels); auto "
        "(remove a block only while that scores higher on validation)", choices=METHODS))
    tolerance: float = field(default=0.02, metadata=option(
        "how near each target a point must land, relative", type=positive_float))
    calibration: int = field(default=4, metadata=option(
        "training batches the data criteria (featuremap_l2, taylor) read", type=positive))
    lr: float = field(default=0.01, metadata=option("fine-tuning LR (SGD)", type=positive_float))
    train_epochs: int | None = field(default=None, metadata=option(
        "epochs training the seed net first", type=positive, default_text="the baseline schedule's epochs"))
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = field(default=128, metadata=BATCH_SIZE)
    seed: int = field(default=0, metadata=SEED)
    device: str = field(default="auto", metadata=DEVICE)
    threads: int | str = field(default="auto", metadata=THREADS)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PruneConfig":
        return config_from_dict(cls, values, "prune")

    def validate(self) -> None:
        require(prune_checks(self.targets, self.measure, self.schedule, self.steps, self.finetune_epochs or 0,
                             self.criterion, self.method, self.tolerance) + [
            (sum(t is not None for t in (self.macs, self.params, self.latency)) <= 1,
             "give one of --macs, --params or --latency"),
            (self.model is None or is_factory(self.model),
             f"--model must be package.module:factory, got {self.model!r} (an architecture goes in --seed-net)"),
            (self.model is None or self.weights is not None,
             "--model needs --weights FILE: prune starts from a trained net"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 2, f"batch size must be at least 2, got {self.batch_size}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            threads_check(self.threads),
        ])
        if self.from_run is None and self.model is None:
            check_arch(self.seed_net)

    @property
    def measure(self) -> str:
        return "params" if self.params is not None else "latency" if self.latency is not None else "macs"

    @property
    def targets(self) -> tuple[float, ...]:
        return self.params or self.latency or self.macs or (0.7, 0.5, 0.3)

    def start(self) -> str:
        """What is pruned, for messages and the run directory's name."""
        if self.from_run:
            return Path(self.from_run).name
        return self.model or self.seed_net


@dataclass
class PruneRunState:
    """Where the job stands; saved in every checkpoint."""

    phase: str = "train"               # train | baseline | prune | finetune | done
    epoch: int = 0                     # epochs trained in this phase
    epochs: int = 0                    # epochs this phase trains
    pending: dict[str, Any] | None = None     # the point the fine-tuning in progress will reach
    points: list[dict[str, Any]] = field(default_factory=list)  # saved points, unpruned first
    rows: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    prune_seconds: float = 0.0
    finetune_seconds: float = 0.0
    estimated_seconds: float | None = None


def run(config: PruneConfig | None, run_dir: str | Path, resume: bool = False,
        progress: Callable[[str], None] = print, allow_code: Collection[str] = ()) -> dict[str, Any]:
    """Run (or resume) the pruning job; returns the result also written to `run_dir/result.json`."""
    return PruneRun.run(config, run_dir, resume, progress, allow_code)


class PruneRun(SearchSession):
    """One pruning job: the unpruned net, the controller, and the points saved."""

    kind, title, config_type, rewrite_rng_key = "prune", "prune", PruneConfig, "prune_rng"

    def __init__(self, config: PruneConfig, world: World, progress: Callable[[str], None], data: Dataset | None = None):
        if world.size > 1:
            raise ConfigError("graphmorph prune runs in one process: start it without torchrun")
        if config.data is None:    # resolved once, so a resume needs the other run no more
            config = dataclasses.replace(config, data=_run_data(config.from_run) or "digits")
        super().__init__(config, world, progress, data)
        self.data_name = config.data
        self.state = PruneRunState()
        self.example = torch.zeros(1, *self.data.input_shape, device=self.trainer.device)
        self.pruner: Prune | None = None

    # ---- starting

    def begin(self) -> None:
        self.source, self.base = self._starting_net()
        self.gm = self.base
        n_train = len(self.train_y)
        trains = self.config.from_run is None and self.config.weights is None
        self.state.epochs = (self.config.train_epochs or baseline_epochs(n_train)) if trains else 0
        self.state.phase = "train" if trains else "baseline"
        self.optimizer = self._sgd(self._train_lr() if trains else self.config.lr)
        self._estimate(n_train)

    def _starting_net(self) -> tuple[ModelSource, fx.GraphModule]:
        config, d = self.config, self.data
        if config.from_run:
            where = Path(config.from_run) / "checkpoint.pt"
            if not where.is_file():
                raise RunError(f"{config.from_run} holds no checkpoint.pt: --from takes a finished run directory "
                               "(autogrow, nac or train)")
            gm, source = load_checkpoint(where, allow_code=self.allow_code)
        elif config.weights and config.model is None and has_history(config.weights):
            gm, source = load_checkpoint(config.weights, allow_code=self.allow_code)
        else:
            source = ModelSource(config.model or config.seed_net, d.input_shape, d.num_classes, seed=config.seed)
            gm = source.capture()
            if config.weights:
                load_weights(gm, config.weights, source.model)
        if tuple(source.input_shape) != tuple(d.input_shape) or source.num_classes != d.num_classes:
            raise ConfigError(f"{source.model} takes {'x'.join(map(str, source.input_shape))} inputs and gives "
                              f"{source.num_classes} classes; {self.data_name} has "
                              f"{'x'.join(map(str, d.input_shape))} images of {d.num_classes} classes: prune it on "
                              "the data it was trained on (--data)")
        return source, self.trainer.place_model(gm)

    def _controller(self) -> Prune:
        config = self.config
        batches = [(self.train_x[i: i + config.batch_size], self.train_y[i: i + config.batch_size])
                   for i in range(0, min(len(self.train_y), config.calibration * config.batch_size), config.batch_size)]
        return Prune(self.base, self.example, targets=config.targets, measure=config.measure,
                     schedule=config.schedule, steps=config.steps, finetune_epochs=self._finetune_epochs(),
                     criterion=config.criterion, method=config.method,
                     evaluate=lambda m: self.trainer.evaluate(m, self.val_x, self.val_y)[1],
                     data=batches if CRITERIA[config.criterion].needs_data else None, tolerance=config.tolerance)

    def _finetune_epochs(self) -> int:
        if self.config.finetune_epochs is not None:
            return self.config.finetune_epochs
        return max(1, baseline_epochs(len(self.train_y)) // 4)

    def _train_lr(self) -> float:
        return 0.1 if _residual(self.base) else 0.01

    def _sgd(self, lr: float) -> torch.optim.SGD:
        return torch.optim.SGD(self.gm.parameters(), lr=lr, momentum=self.config.momentum,
                               weight_decay=self.config.weight_decay)

    def _estimate(self, n_train: int) -> None:
        """The budget and the expected seconds (a timed epoch of the unpruned net, scaled by the cost
        fraction each fine-tuning epoch trains at), printed before the work starts."""
        config = self.config
        epoch = step_seconds(self.base, self.trainer, self.train_x, self.train_y) * -(-n_train // config.batch_size)
        targets = config.targets
        finetune = self._finetune_epochs()
        scaled = sum(finetune * t for t in targets)
        steps = len(targets) * (config.steps if config.schedule == "iterative" else 1)
        seconds = epoch * (self.state.epochs + scaled) + steps * (2.0 + self._measuring_seconds())
        self.state.estimated_seconds = round(seconds, 1)
        self.progress(f"budget: {', '.join(f'{t:g}' for t in targets)} of the unpruned {config.measure} "
                      f"(within {config.tolerance:.0%}), {config.schedule}"
                      + (f" in {config.steps} steps per target" if config.schedule == "iterative" else "")
                      + f", {finetune} fine-tuning epoch(s) per target"
                      + (f", after {self.state.epochs} epochs training the unpruned net" if self.state.epochs else ""))
        self.progress(f"estimate: about {seconds:.0f} s (an epoch of the unpruned net takes {epoch:.2f} s here)")

    def _measuring_seconds(self) -> float:
        """For latency targets, the seconds a pruning step spends measuring: one measurement of the
        unpruned net timed, times the bisection's trials (log2 of the ranked channels, and two
        more) and the paired measurement of the point; nothing for MACs or parameters."""
        if self.config.measure != "latency":
            return 0.0
        began = time.perf_counter()
        MEASURES["latency"](self.base, self.example)
        trials = math.ceil(math.log2(max(2, FilterRanking(self.base).size))) + 4
        return (time.perf_counter() - began) * trials

    def resolved_config(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.config), "resolved": {
            "data": self.data_name, "measure": self.config.measure, "targets": list(self.config.targets),
            "finetune_epochs": self._finetune_epochs(), "train_epochs": self.state.epochs,
            "estimated_seconds": self.state.estimated_seconds}}

    # ---- the units

    def done(self) -> bool:
        return self.state.phase == "done"

    def where(self) -> str:
        return f"in its {self.state.phase} phase, {len(self.state.points) - 1 if self.state.points else 0} point(s) saved"

    def step(self) -> str:
        began = time.perf_counter()
        phase = self.state.phase
        if phase == "baseline":
            line = self._baseline()
        elif phase == "prune":
            line = self._prune_step()
        else:
            line = self._epoch()
        seconds = time.perf_counter() - began
        timer = {"train": "train_seconds", "finetune": "finetune_seconds"}.get(phase, "prune_seconds")
        setattr(self.state, timer, getattr(self.state, timer) + seconds)
        self.state.rows[-1]["seconds"] = round(seconds, 3)
        return line

    def _baseline(self) -> str:
        """Start the controller (it measures the unpruned net), score the unpruned net and save it as
        the first point."""
        self.pruner = self._controller()
        point = self._save_point("unpruned", self.gm, None)
        self.state.points.append(point)
        self.state.rows.append({"unit": len(self.state.rows) + 1, "phase": "baseline", "epoch": None, "lr": None,
                                "train_loss": None, "train_acc": None, "val_acc": point["val_acc"],
                                "cost_fraction": 1.0, **event_fields([])})
        self.optimizer = self._sgd(self.config.lr)
        self.state.phase = "prune"
        return (f"unpruned {point['found']}: val {point['val_acc']:5.1f}%, test {point['test_acc']:.2f}%, "
                f"{si(point['macs'])} MACs, {si(point['params'])} parameters" + _latency_text(point))

    def _epoch(self) -> str:
        state, training = self.state, self.state.phase == "train"
        lr = staircase_lr(self._train_lr(), state.epoch, state.epochs) if training else self.config.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        label = f"{state.phase} epoch {state.epoch + 1}/{state.epochs}"
        try:
            loss, train_acc = self.trainer.train_epoch(self.gm, self.optimizer, self.train_x, self.train_y,
                                                       self.shuffle, label=label)
        except TrainingDiverged as err:
            raise self.diverged(err, f"in {label} (lr {lr:g})") from None
        val_acc = self.trainer.evaluate(self.gm, self.val_x, self.val_y)[1]
        state.epoch += 1
        row = {"unit": len(state.rows) + 1, "phase": state.phase, "epoch": state.epoch, "lr": lr,
               "train_loss": round(loss, 6), "train_acc": round(train_acc, 4), "val_acc": round(val_acc, 4),
               "cost_fraction": None, **event_fields([])}
        state.rows.append(row)
        line = f"{label:<22} loss {loss:.3f}  train {train_acc:5.1f}%  val {val_acc:5.1f}%"
        if state.epoch == state.epochs:
            if training:
                state.phase = "baseline"
            else:
                line += self._finish_step()
        return line

    def _prune_step(self) -> str:
        step = self.pruner.step()
        self.gm = self.trainer.place_model(step.model)
        self.optimizer = step.optimizer(self.optimizer)
        state = self.state
        state.pending = dataclasses.asdict(step.point) if step.point else None
        state.phase, state.epoch, state.epochs = "finetune", 0, step.finetune_epochs
        val_acc = self.trainer.evaluate(self.gm, self.val_x, self.val_y)[1]
        state.rows.append({"unit": len(state.rows) + 1, "phase": "prune", "epoch": None, "lr": None,
                           "train_loss": None, "train_acc": None, "val_acc": round(val_acc, 4),
                           "cost_fraction": round(step.fraction, 5), **event_fields(list(step.events))})
        line = (f"prune to {step.budget:.3f} of the {self.config.measure}: {step.fraction:.3f}, val {val_acc:5.1f}% "
                f"before fine-tuning  | {step.text()}")
        if not step.finetune_epochs:
            line += self._finish_step()
        return line

    def _finish_step(self) -> str:
        """After a step's fine-tuning: save the point it reached, if any; then the next step or done."""
        state, text = self.state, ""
        if state.pending is not None:
            point = state.pending
            label = f"{self.config.measure}-{point['target']:.2f}"
            self.gm.eval()
            saved = self._save_point(label, self.gm, point)
            state.points.append(saved)
            text = (f"  | saved {label}: {point['fraction']:.3f} of the {self.config.measure} "
                    f"({'within' if point['within'] else 'NOT within'} {self.config.tolerance:.0%}), "
                    f"test {saved['test_acc']:.2f}%")
            state.pending = None
        state.phase = "done" if self.pruner.done else "prune"
        return text

    def _save_point(self, label: str, gm: fx.GraphModule, point: dict[str, Any] | None) -> dict[str, Any]:
        """points/<label>/: weights.pt, rewrites.json, model.onnx and result.json; returns the result."""
        directory = RunDirectory(self.directory.path / "points" / label)
        directory.path.mkdir(parents=True, exist_ok=True)
        val_acc = self.trainer.evaluate(gm, self.val_x, self.val_y)[1]
        test_acc = self.trainer.evaluate(gm, self.test_x, self.test_y)[1]
        result = {"kind": "pruned" if point else "prune", "data": self.data_name, "found": _label(gm, self.source),
                  "point": label, "target": point["target"] if point else 1.0,
                  "fraction": point["fraction"] if point else 1.0, "within": point["within"] if point else True,
                  "val_acc": round(val_acc, 4), "test_acc": round(test_acc, 4)}
        if self.config.measure == "latency":
            result["latency_ms"] = round(1000 * (point["cost"] if point else self.pruner.base_cost), 4)
        result = save_result(directory, gm, self.source, result, normalization=self.data.normalization)
        save_weights(directory.path / "weights.pt", gm, self.source)
        return {**result, "path": str(Path("points") / label)}

    # ---- checkpoints

    def saved(self) -> dict[str, Any]:
        return {"model": self.gm.state_dict(), "base": self.base.state_dict(),
                "base_history": history_document(self.source, history(self.base)),
                "pruner": self.pruner.state_dict() if self.pruner else None,
                "optimizer": optimizer_state(self.optimizer, self.gm)}

    def load(self, checkpoint: dict[str, Any]) -> None:
        self.state = PruneRunState(**checkpoint["state"])
        self.source, base_rewrites = parse_history(checkpoint["base_history"], "the checkpoint's unpruned net",
                                                   self.allow_code)
        base = replay_architecture(self.source.capture(), base_rewrites)
        base.load_state_dict(checkpoint["base"])
        self.base = self.gm = self.trainer.place_model(base)
        if checkpoint["pruner"] is not None:
            self.pruner = self._controller()
            self.pruner.load_state_dict(checkpoint["pruner"])
            self.gm = self.trainer.place_model(self.pruner.model)
        self.gm.load_state_dict(checkpoint["model"])
        self.optimizer = restore_optimizer(torch.optim.SGD, self.gm, checkpoint["optimizer"])

    def log_rows(self) -> list[dict[str, Any]]:
        return self.state.rows

    def rewrites(self) -> list[dict[str, Any]]:
        return history(self.gm)

    def finish(self) -> dict[str, Any]:
        base, points = self.state.points[0], self.state.points[1:]
        result = {"kind": "prune", "data": self.data_name, "found": base["found"], "test_acc": base["test_acc"],
                  "val_acc": base["val_acc"], "macs": base["macs"], "params": base["params"],
                  "measure": self.config.measure, "criterion": self.config.criterion, "method": self.config.method,
                  "schedule": self.config.schedule, "tolerance": self.config.tolerance,
                  "points": points, "all_within": all(p["within"] for p in points),
                  "train_seconds": round(self.state.train_seconds, 3),
                  "prune_seconds": round(self.state.prune_seconds, 3),
                  "finetune_seconds": round(self.state.finetune_seconds, 3),
                  "estimated_seconds": self.state.estimated_seconds, "device": str(self.trainer.device)}
        if "latency_ms" in base:
            result["latency_ms"] = base["latency_ms"]
        if self.world.is_main:
            rows = _rows({**result, "run": str(self.directory.path)})
            self.directory.write_text("points.txt", results_table(rows) + "\n")
            plot_tradeoff(rows, self.directory.path / "tradeoff.png", RESULTS,
                          f"{result['found']} pruned on {result['data']} by {self.config.criterion} "
                          f"({self.config.method}, {self.config.schedule}; ringed: the Pareto front)")
            self.directory.write_json("result.json", result)
        return result


# ---- helpers


def _run_data(run: str | None) -> str | None:
    """The data a run directory's settings name (None when there is no run or it names none)."""
    if run is None:
        return None
    try:
        config = json.loads((Path(run) / "config.json").read_text())
    except (OSError, ValueError):
        raise RunError(f"{run} is not a graphmorph run directory (no readable config.json): --from takes a "
                       "finished autogrow, nac or train run") from None
    data = config.get("data") if isinstance(config, dict) else None
    if data is not None and data_factory(data):
        raise ConfigError(f"{run} trained on data from {data}: graphmorph runs no code a file names, so name it "
                          f"yourself with --data {data}")
    return data


def _residual(gm: fx.GraphModule) -> bool:
    from graphmorph.graph.analysis import find_blocks

    return any(b.residual for b in find_blocks(gm))


def _label(gm: fx.GraphModule, source: ModelSource) -> str:
    from graphmorph.models import arch_of
    from graphmorph.errors import GraphmorphError

    try:
        return arch_of(gm)
    except GraphmorphError:
        return source.model


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rows for a prune run: the unpruned net, then every point."""
    run = result.get("run", "")
    base = {key: result[key] for key in ("kind", "data", "found", "test_acc", "macs", "params", "latency_ms")
            if key in result}
    return [{**base, "run": f"{run} unpruned", "found": f"{result['found']} (unpruned)"}] + [
        {**point, "run": f"{run} {point['point']}", "found": f"{point['found']} @{point['fraction']:.2f}"}
        for point in result["points"]]


def _latency_text(result: dict[str, Any]) -> str:
    """", 0.123 ms onnxruntime CPU" where the latency was measured, else nothing."""
    return f", {result['latency_ms']:.3f} ms onnxruntime CPU" if "latency_ms" in result else ""


def _summary(result: dict[str, Any], where) -> list[str]:
    lines = [f"pruned {result['found']} on {result['data']} ({result['criterion']}, {result['method']}, "
             f"{result['schedule']}): unpruned test {result['test_acc']:.2f}% at {si(result['macs'])} MACs, "
             f"{si(result['params'])} parameters" + _latency_text(result)]
    for point in result["points"]:
        lines.append(f"  {point['point']:<12} {point['fraction']:.3f} of the {result['measure']} "
                     f"({'within' if point['within'] else 'NOT within'} {result['tolerance']:.0%})  "
                     f"{point['found']:<24} test {point['test_acc']:6.2f}%  {si(point['macs']):>8} MACs  "
                     f"{si(point['params']):>8} params{_latency_text(point)}  -> {Path(where) / point['path']}")
    seconds = result["train_seconds"] + result["prune_seconds"] + result["finetune_seconds"]
    lines.append(f"{seconds:.1f} s (training {result['train_seconds']:.1f}, pruning {result['prune_seconds']:.1f}, "
                 f"fine-tuning {result['finetune_seconds']:.1f}); table {Path(where) / 'points.txt'}, plot "
                 f"{Path(where) / 'tradeoff.png'}")
    return lines


RESULTS = {"prune": ResultKind("unpruned (prune's start)", "D"), "pruned": ResultKind("pruned", "v")}

ALGORITHM = register_algorithm(Algorithm(
    kind="prune", title="prune", config_type=PruneConfig, run=run,
    help="prune a trained net to fractions of its MACs, parameters or latency, fine-tuned, every point saved",
    description="Prune a trained net (--from RUN, --weights FILE, or a seed net trained first) to fractions of its "
                "MACs (--macs 0.7,0.5,0.3), parameters or measured onnxruntime CPU latency, one-shot or iteratively with fine-tuning between, by "
                "channels and/or whole residual blocks; every step a verified rewrite. Each point is saved with "
                "its weights, replayable history and ONNX. With no options: a Basic3ResNet-3-3-3 trained on "
                "digits, pruned to 0.7, 0.5 and 0.3 of its MACs.",
    unit="epoch or pruning step", net=lambda c: c.start(),
    plan=lambda c: f"prune {c.start()} to {', '.join(f'{t:g}' for t in c.targets)} of its {c.measure} "
                   f"({c.criterion}, {c.method}, {c.schedule})",
    summary=_summary, results=RESULTS, events=(RemovedBlock, PrunedChannels, ReachedPoint),
    controller=("Prune", "graphmorph.search.pruner"), report_rows=_rows))
