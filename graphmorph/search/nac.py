"""NAC (EnvelopeNets paper, Algorithm 1): construct a net by pruning and expanding an EnvelopeNet.

Each iteration: truncated training of the net with its branches instrumented, then per stage:
prune the branches with the lowest featuremap statistic, prune half the stage's skips (lowest
|w|), append a cell. Every step is a verified rewrite (`transforms`). Then the constructed net and,
on request, the baselines of the paper's Figure 3 (the base EnvelopeNet, random nets with the
same cells and branch counts, the "worst" construction that prunes the best branches) are trained
from scratch the same way and compared.

A checkpoint follows every iteration and every trained net (structure, weights, state, RNGs), so
`resume` loses at most the unit in progress. Under torchrun every rank trains its share of each
batch; the branch statistics are averaged over the ranks before each decision, and rank 0 alone
writes the run directory.
"""
from __future__ import annotations

import dataclasses
import random
import statistics as stats
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from torch import fx

from graphmorph.graph.capture import capture
from graphmorph.run.data import Dataset
from graphmorph.run.distributed import World
from graphmorph.graph.flops import count_flops
from graphmorph.graph.verify import parameter_count
from graphmorph.models import BRANCH_TYPES, arch_of, build, envelope_arch, structure_label
from graphmorph.models.envelope import parse_envelope
from graphmorph.run.events import AddedCell, PrunedBranches, PrunedSkips, event_fields
from graphmorph.run.report import save_result
from graphmorph.run.sources import ModelSource
from graphmorph.search.algorithms import Algorithm, ResultKind, register_algorithm
from graphmorph.search.config import config_from_dict, require
from graphmorph.search.session import SearchSession
from graphmorph.search.options import (BATCH_SIZE, DATA, DEVICE, FRACTION, SEED, THREADS, VAL_FRACTION, option,
                                       positive, positive_float, sizes)
from graphmorph.search.constructor import NAC, construction_checks
from graphmorph.search.nac_choices import random_structure
from graphmorph.search.nac_plots import plot_comparison, plot_iterations, plot_statistics
from graphmorph.run.threads import threads_check
from graphmorph.run.train import TrainingDiverged, staircase_lr
from transforms import CELL_INITS
from transforms.statistics import branch_statistics

__all__ = ["NACConfig", "NACState", "run", "BASELINES"]

BASELINES = ("random", "worst")


@dataclass(frozen=True)
class NACConfig:
    """Every NAC setting. The defaults suit digits on a CPU (the paper: 128/2-2-2/6 on CIFAR-10); each
    option's help and unit is in its field's metadata (the command line is generated from them)."""

    base: str = field(default="EnvelopeNet-16/2-2-2/6", metadata=option(
        "EnvelopeNet to start from, EnvelopeNet-C/n1-n2-.../M (the paper: EnvelopeNet-128/2-2-2/6)"))
    data: str = field(default="digits", metadata=DATA)
    fraction: float = field(default=1.0, metadata=FRACTION)
    val_fraction: float = field(default=0.1, metadata=VAL_FRACTION)
    iterations: int = field(default=5, metadata=option("construction iterations", type=positive))
    steps: int = field(default=150, metadata=option("truncated-training steps per iteration", type=positive))
    log_every: int = 10                    # steps between statistics snapshots (for the plot)
    max_prune: int = field(default=4, metadata=option("branches pruned per stage and iteration at most", type=int))
    max_cells: tuple[int, ...] | None = field(default=None, metadata=option(
        "cells per stage at most, comma-separated", type=sizes, default_text="no cap"))
    keep_weights: bool = field(default=True, metadata=option(
        "start every iteration from fresh weights (the reference code) instead of keeping them",
        flag="--retrain", action="store_false"))
    cell_init: str = field(default="preserve", metadata=option(
        "an added cell's reduction: preserve the function or random", choices=CELL_INITS))
    worst: bool = False                    # prune the best branches and no skips (the paper's worst case)
    lr: float = field(default=0.05, metadata=option("SGD learning rate", type=positive_float))
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = field(default=64, metadata=BATCH_SIZE)
    epochs: int = field(default=15, metadata=option(
        "epochs training the constructed net (and baselines) from scratch; 0 skips it", type=int))
    baselines: tuple[str, ...] = field(default=(), metadata=option(
        "also train the base EnvelopeNet and: random nets with the same cells and branch counts (--n of them), "
        "or the worst case (prunes the best branches); repeatable", flag="--baseline", action="append",
        choices=BASELINES))
    n_random: int = field(default=10, metadata=option("random baseline nets", flag="--n", type=positive))
    seed: int = field(default=0, metadata=SEED)
    device: str = field(default="auto", metadata=DEVICE)
    threads: int | str = field(default="auto", metadata=THREADS)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "NACConfig":
        return config_from_dict(cls, values, "NAC")

    def validate(self) -> None:
        depths = parse_envelope(self.base)[1]  # ArchError for a bad base
        require(construction_checks(self.iterations, self.max_prune, self.max_cells, len(depths), self.cell_init) + [
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (self.log_every >= 1, f"log every must be at least 1 step, got {self.log_every}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 2, f"batch size must be at least 2, got {self.batch_size}"),
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (set(self.baselines) <= set(BASELINES), f"baselines must be among {', '.join(BASELINES)}, "
                                                    f"got {', '.join(self.baselines)}"),
            (not self.baselines or self.epochs >= 1, "baselines are compared after training: give --epochs >= 1"),
            (self.n_random >= 1, f"n must be at least 1, got {self.n_random}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            threads_check(self.threads),
        ])

    def branch_set(self) -> tuple[str, ...]:
        return BRANCH_TYPES[: parse_envelope(self.base)[2]]


@dataclass
class NACState:
    """Where the run stands; saved in every checkpoint."""

    phase: str = "construct"                               # construct | train | done
    rows: list[dict[str, Any]] = field(default_factory=list)        # one per iteration
    statistics: list[dict[str, Any]] = field(default_factory=list)  # snapshots during truncated training
    construction_seconds: float = 0.0
    constructed: dict[str, Any] | None = None
    trained: dict[str, dict[str, Any]] = field(default_factory=dict)


def run(config: NACConfig | None, run_dir: str | Path, resume: bool = False,
        progress: Callable[[str], None] = print, allow_code: Collection[str] = ()) -> dict[str, Any]:
    """Run (or resume) NAC; returns the result also written to `run_dir/result.json`."""
    return _Session.run(config, run_dir, resume, progress, allow_code)


class _Session(SearchSession):
    """One run: the net under construction and the search state; a step is one construction
    iteration, then one net trained from scratch."""

    kind, title, config_type, rewrite_rng_key = "nac", "NAC", NACConfig, "cell_rng"

    def __init__(self, config: NACConfig, world: World, progress: Callable[[str], None], data: Dataset | None = None):
        super().__init__(config, world, progress, data)
        d = self.data
        self.source = ModelSource(config.base, d.input_shape, d.num_classes,
                                  seed=config.seed)
        self.example = self.source.example_input()
        self.state = NACState()
        self.final_model: dict[str, torch.Tensor] | None = None
        self._to_train: list[tuple[str, dict[str, Any]]] | None = None
        self.gm = self.trainer.place_model(capture(self.source.build(), self.example))  # seeds the global RNG
        world.check_replicas(self.gm, "building the base EnvelopeNet")
        self.nac = NAC(self.gm, self.example, iterations=config.iterations, max_prune=config.max_prune,
                       max_cells=config.max_cells, branches=config.branch_set(), cell_init=config.cell_init,
                       keep_weights=config.keep_weights, prune_best=config.worst, generator=self.rewrite_rng)

    def _fresh(self, structure: dict[str, Any]) -> fx.GraphModule:
        return self.trainer.place_model(self.nac.fresh(structure))

    def where(self) -> str:
        return (f"after iteration {self.nac.iteration} ({self.state.phase} phase, "
                f"{len(self.state.trained)} net(s) trained)")

    def load(self, checkpoint: dict[str, Any]) -> None:
        self.nac.load_state_dict(checkpoint["constructor"])
        self.gm = self.trainer.place_model(self.nac.model)
        self.gm.load_state_dict(checkpoint["model"])
        self.state = NACState(**checkpoint["state"])
        self.final_model = checkpoint.get("final_model")

    # ---- the steps

    def done(self) -> bool:
        return self.state.phase == "done"

    def step(self) -> str:
        """A construction iteration; then, one net at a time, training from scratch."""
        if self.state.phase == "construct":
            return self._construction_step()
        if self._to_train is None:  # once per session: the worst-case net is constructed here
            self._to_train = [(n, s) for n, s in self._nets_to_train() if n not in self.state.trained]
        if self._to_train:
            return self._train_from_scratch(*self._to_train.pop(0))
        self.state.phase = "done"
        return ""

    def construct(self) -> dict[str, Any]:
        """The construction iterations still to do; returns the constructed structure."""
        while self.state.phase == "construct":
            self.advance()
        return self.state.constructed

    def _construction_step(self) -> str:
        began = time.perf_counter()
        row = self._iteration()
        self.state.construction_seconds += time.perf_counter() - began
        row["seconds"] = round(time.perf_counter() - began, 3)
        self.state.rows.append(row)
        if self.nac.done:
            self.state.constructed = envelope_arch(self.gm)
            self.state.phase = "train" if self.config.epochs else "done"
        return _progress_line(row, self.config.iterations)

    def _iteration(self) -> dict[str, Any]:
        """Truncated training of the controller's instrumented net, then its decisions."""
        config, state, iteration = self.config, self.state, self.nac.iteration + 1
        instrumented = self.trainer.place_model(self.nac.instrumented)
        arch_before = arch_of(instrumented)
        optimizer = torch.optim.SGD(instrumented.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        first_step = self.nac.iteration * config.steps

        def snapshot(step: int) -> None:
            if step % config.log_every == 0 or step == config.steps:
                self.world.average_buffers(instrumented)
                flat = {f"{cell}.{branch}": value
                        for cell, values in branch_statistics(instrumented).items() for branch, value in values.items()}
                state.statistics.append({"iteration": iteration, "step": first_step + step, **flat})

        try:
            loss, train_acc = self.trainer.train_steps(instrumented, optimizer, self.train_x, self.train_y,
                                                       self.shuffle, config.steps, snapshot,
                                                       label=f"iteration {iteration}/{config.iterations}")
        except TrainingDiverged as err:
            raise self.diverged(err, f"in iteration {iteration} ({arch_before}, lr {config.lr:g})") from None
        rewriting = time.perf_counter()
        change = self.nac.iteration_end()
        rewrite_seconds = time.perf_counter() - rewriting
        _, val_acc = self.trainer.evaluate(change.trained, self.val_x, self.val_y)
        _, test_acc = self.trainer.evaluate(change.trained, self.test_x, self.test_y)  # for plots, never decisions
        self.gm = self.trainer.place_model(change.model)
        self.world.check_replicas(self.gm, f"iteration {iteration}'s rewrites")
        return {"iteration": iteration, "arch": arch_before, "train_loss": round(loss, 6),
                "train_acc": round(train_acc, 4), "val_acc": round(val_acc, 4), "test_acc": round(test_acc, 4),
                "params": parameter_count(change.model), "next_arch": arch_of(change.model),
                "rewrite_seconds": round(rewrite_seconds, 3), **event_fields(list(change.events))}

    # ---- training from scratch

    def _nets_to_train(self) -> list[tuple[str, dict[str, Any]]]:
        constructed = self.state.constructed
        nets = [("constructed", constructed)]
        if self.config.baselines:
            nets.append(("base", envelope_arch(build(self.config.base))))
        if "worst" in self.config.baselines:
            nets.append(("worst", self._worst_structure()))
        if "random" in self.config.baselines:
            rng = random.Random(self.config.seed)
            nets += [(f"random{k}", random_structure(constructed, rng, self.config.branch_set()))
                     for k in range(self.config.n_random)]
        return nets

    def _worst_structure(self) -> dict[str, Any]:
        """The paper's worst case: the same construction pruning the best branches and no skips."""
        if "worst" in self.state.trained:
            return self.state.trained["worst"]["structure"]
        self.progress("constructing the worst-case net (prunes the best branches, keeps every skip)")
        config = dataclasses.replace(self.config, worst=True, baselines=(), epochs=0)
        return _Session(config, self.world, lambda line: self.progress("  worst: " + line), self.data).construct()

    def _train_from_scratch(self, name: str, structure: dict[str, Any]) -> str:
        """Train one net from fresh weights, record it, and return its progress line."""
        config = self.config
        index = len(self.state.trained)
        torch.manual_seed(config.seed + 1000 + index)
        gm = self._fresh(structure)
        optimizer = torch.optim.SGD(gm.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        shuffle = torch.Generator().manual_seed(config.seed + 1000 + index)
        began = time.perf_counter()
        val_curve = []
        for epoch in range(config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = staircase_lr(config.lr, epoch, config.epochs)
            try:
                self.trainer.train_epoch(gm, optimizer, self.train_x, self.train_y, shuffle,
                                         label=f"{name} epoch {epoch + 1}/{config.epochs}")
            except TrainingDiverged as err:
                raise self.diverged(err, f"training {name} ({arch_of(gm)}) in epoch {epoch + 1}") from None
            val_curve.append(round(self.trainer.evaluate(gm, self.val_x, self.val_y)[1], 4))
        seconds = time.perf_counter() - began
        _, test_acc = self.trainer.evaluate(gm, self.test_x, self.test_y)
        flops = count_flops(gm, self.example.to(self.trainer.device))
        self.state.trained[name] = {
            "name": name, "group": name.rstrip("0123456789"), "arch": structure_label(structure), "structure": structure,
            "test_acc": round(test_acc, 4), "val_acc": val_curve[-1], "val_curve": val_curve,
            "params": flops.params, "macs": flops.macs, "seconds": round(seconds, 3)}
        if name == "constructed":
            self.final_model = {k: v.detach().cpu() for k, v in gm.state_dict().items()}
        return (f"trained {name:<12} {structure_label(structure)} {config.epochs} epochs: test {test_acc:5.2f}%, "
                f"{flops.params:,} parameters, {seconds:.1f} s")

    # ---- persistence and results

    def saved(self) -> dict[str, Any]:
        return {"constructor": self.nac.state_dict(), "model": self.gm.state_dict(), "final_model": self.final_model}

    def log_rows(self) -> list[dict[str, Any]]:
        return self.state.rows

    def rewrites(self) -> list[dict[str, Any]]:
        return self.nac.rewrites

    def finish(self) -> dict[str, Any]:
        config, state = self.config, self.state
        final = self._fresh(state.constructed)
        final.load_state_dict(self.final_model if self.final_model is not None else self.gm.state_dict())
        trained = state.trained.get("constructed")
        last = state.rows[-1]
        result = {
            "kind": "nac", "data": config.data, "seed_arch": config.base, "base": config.base,
            "found": structure_label(state.constructed), "architecture": "architecture.json",
            "iterations": config.iterations,
            "test_acc": trained["test_acc"] if trained else last["test_acc"],
            "val_acc": trained["val_acc"] if trained else last["val_acc"],
            "construction_seconds": round(state.construction_seconds, 3),
            "train_seconds": trained["seconds"] if trained else None,
            "construction_to_training": (round(state.construction_seconds / trained["seconds"], 3)
                                         if trained else None),
            "growth_seconds": round(state.construction_seconds, 3),
            "finetune_seconds": trained["seconds"] if trained else 0.0,
            "device": str(self.trainer.device),
            "world_size": self.world.size,
        }
        if config.baselines:
            result["comparison"] = compare(list(state.trained.values()))
        return self.world.from_main(lambda: self._write_results(final, result))

    def _write_results(self, final: fx.GraphModule, result: dict[str, Any]) -> dict[str, Any]:
        """Architecture, statistics, trained nets, model.onnx, result.json and the plots."""
        config, state, directory = self.config, self.state, self.directory
        directory.write_json("architecture.json", state.constructed)
        directory.write_text("architecture.txt", f"{result['found']}\n"
                             f"rebuild it: graphmorph train|flops|export {directory.path / 'architecture.json'}\n")
        directory.write_json("statistics.json", state.statistics)
        if state.trained:
            directory.write_json("trained.json", list(state.trained.values()))
        result = save_result(directory, final, self.source, result, rewrites=self.nac.rewrites,
                             normalization=self.data.normalization)
        title = f"NAC {config.base} -> {result['found']} on {config.data}"
        plot_statistics(state.statistics, directory.path / "statistics.png", title)
        plot_iterations(state.rows, directory.path / "iterations.png", title)
        if config.baselines:
            plot_comparison(list(state.trained.values()), directory.path / "comparison.png", title)
        return result


def compare(trained: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per group (constructed, base, worst, random): test accuracy mean and std, parameters, MACs, count."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for net in trained:
        groups.setdefault(net["group"], []).append(net)
    return {group: {"test_acc_mean": round(stats.fmean(n["test_acc"] for n in nets), 4),
                    "test_acc_std": round(stats.stdev([n["test_acc"] for n in nets]), 4) if len(nets) > 1 else 0.0,
                    "params_mean": round(stats.fmean(n["params"] for n in nets)),
                    "macs_mean": round(stats.fmean(n["macs"] for n in nets)), "count": len(nets)}
            for group, nets in groups.items()}


def _progress_line(row: dict[str, Any], iterations: int) -> str:
    return (f"iteration {row['iteration']}/{iterations}  {row['arch']:<28} train {row['train_acc']:5.1f}%  "
            f"val {row['val_acc']:5.1f}%  test {row['test_acc']:5.1f}%  -> {row['next_arch']}  ({row['seconds']:.1f} s)"
            + (f"\n    {row['event']}" if row["event"] else ""))


def _summary(result: dict[str, Any], where) -> list[str]:
    from graphmorph.graph.flops import si

    lines = [f"constructed {result['found']}: test accuracy {result['test_acc']:.2f}%, {si(result['macs'])} MACs, "
             f"{si(result['params'])} parameters; construction {result['construction_seconds']:.1f} s"
             + (f", training {result['train_seconds']:.1f} s" if result["train_seconds"] else "")
             + f"; results in {where}; the net: {Path(where) / 'architecture.json'} (train, flops and export take it)"]
    for group, row in result.get("comparison", {}).items():
        lines.append(f"  {group:<12} test {row['test_acc_mean']:6.2f}% +- {row['test_acc_std']:.2f} "
                     f"({row['count']} net(s), {si(row['params_mean'])} parameters)")
    return lines


ALGORITHM = register_algorithm(Algorithm(
    kind="nac", title="NAC", config_type=NACConfig, run=run,
    help="construct a net from an EnvelopeNet with NAC (prune branches and skips, add cells)",
    description="Neural Architecture Construction: train an EnvelopeNet briefly, prune the branches with the lowest "
                "featuremap statistic and half the skips per stage, add a cell per stage, repeat; then train the "
                "constructed net (and any baselines) from scratch. With no options: digits.",
    unit="iteration or trained net", net=lambda c: c.base,
    plan=lambda c: f"NAC from {c.base} on {c.data}: {c.iterations} iterations of {c.steps} steps, "
                   f"{'keeping' if c.keep_weights else 'resetting'} weights",
    summary=_summary, results={"nac": ResultKind("NAC constructed", "^")},
    events=(PrunedBranches, PrunedSkips, AddedCell), controller=("NAC", "graphmorph.search.constructor")))
