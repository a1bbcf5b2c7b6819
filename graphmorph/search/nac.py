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
from typing import Any, Callable

import torch
from torch import fx

from graphmorph.graph.capture import capture
from graphmorph.run.data import Dataset, load
from graphmorph.run.distributed import World, joined
from graphmorph.errors import ConfigError
from graphmorph.graph.flops import count_flops
from graphmorph.graph.history import history
from graphmorph.models import BRANCH_TYPES, arch_of, build, envelope_arch, structure_label
from graphmorph.models.envelope import parse_envelope
from graphmorph.run.report import save_result
from graphmorph.run.rundir import RunDirectory
from graphmorph.run.sources import ModelSource
from graphmorph.search.config import config_from_dict
from graphmorph.search.nac_choices import branches_to_prune, random_structure, skips_to_prune
from graphmorph.search.nac_plots import plot_comparison, plot_iterations, plot_statistics
from graphmorph.run.train import Trainer, TrainingDiverged, pick_device, staircase_lr
from transforms import CELL_INITS, add_cell, prune_branches, prune_skips
from transforms.statistics import branch_statistics, instrument_branches, remove_instrumentation

__all__ = ["NACConfig", "NACState", "run", "BASELINES"]

BASELINES = ("random", "worst")


@dataclass(frozen=True)
class NACConfig:
    """Every NAC setting. The defaults suit digits on a CPU (the paper: 128/2-2-2/6 on CIFAR-10)."""

    base: str = "EnvelopeNet-16/2-2-2/6"   # the EnvelopeNet to start from, C/n1-n2-.../M
    data: str = "digits"                   # NAME or NAME:DIR
    fraction: float = 1.0                  # share of the training data kept
    val_fraction: float = 0.1              # share of the training data held out
    iterations: int = 5
    steps: int = 150                       # truncated-training steps per iteration
    log_every: int = 10                    # steps between statistics snapshots (for the plot)
    max_prune: int = 4                     # branches pruned per stage and iteration at most
    max_cells: tuple[int, ...] | None = None  # per stage; None: no cap
    keep_weights: bool = True              # False: retrain from scratch every iteration (reference code)
    cell_init: str = "preserve"            # preserve | random (weights of an added cell's reduction)
    worst: bool = False                    # prune the best branches and no skips (the paper's worst case)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    epochs: int = 15                       # training from scratch of the constructed net and baselines
    baselines: tuple[str, ...] = ()        # random and/or worst (the base EnvelopeNet comes with either)
    n_random: int = 10
    seed: int = 0
    device: str = "auto"                   # auto | cpu | cuda

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "NACConfig":
        return config_from_dict(cls, values, "NAC")

    def validate(self) -> None:
        depths = parse_envelope(self.base)[1]  # ArchError for a bad base
        checks = [
            (self.iterations >= 1, f"iterations must be at least 1, got {self.iterations}"),
            (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
            (self.log_every >= 1, f"log every must be at least 1 step, got {self.log_every}"),
            (self.max_prune >= 0, f"max prune must be >= 0, got {self.max_prune}"),
            (self.max_cells is None or (len(self.max_cells) == len(depths) and min(self.max_cells) >= 1),
             f"max cells needs {len(depths)} positive counts, one per stage of {self.base}, got {self.max_cells}"),
            (self.cell_init in CELL_INITS, f"cell init must be one of {', '.join(CELL_INITS)}, got {self.cell_init!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 2, f"batch size must be at least 2, got {self.batch_size}"),
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (set(self.baselines) <= set(BASELINES), f"baselines must be among {', '.join(BASELINES)}, "
                                                    f"got {', '.join(self.baselines)}"),
            (not self.baselines or self.epochs >= 1, "baselines are compared after training: give --epochs >= 1"),
            (self.n_random >= 1, f"n must be at least 1, got {self.n_random}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def branch_set(self) -> tuple[str, ...]:
        return BRANCH_TYPES[: parse_envelope(self.base)[2]]


@dataclass
class NACState:
    """Where the run stands; saved in every checkpoint."""

    iteration: int = 0
    phase: str = "construct"                               # construct | train | done
    rows: list[dict[str, Any]] = field(default_factory=list)        # one per iteration
    statistics: list[dict[str, Any]] = field(default_factory=list)  # snapshots during truncated training
    rewrites: list[dict[str, Any]] = field(default_factory=list)
    construction_seconds: float = 0.0
    constructed: dict[str, Any] | None = None
    trained: dict[str, dict[str, Any]] = field(default_factory=dict)


def run(config: NACConfig | None, run_dir: str | Path, resume: bool = False,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) NAC; returns the result also written to `run_dir/result.json`."""
    with joined() as world:
        progress = world.main_only(progress)
        if resume:
            checkpoint = world.from_main(lambda: RunDirectory.existing(run_dir, "nac").load_checkpoint())
            session = _Session(NACConfig.from_dict(checkpoint["config"]), world, progress)
            session.restore(checkpoint)
            session.directory = RunDirectory(run_dir)
            progress(f"resuming {run_dir}: {session.state.phase}, iteration {session.state.iteration}, "
                     f"{len(session.state.trained)} net(s) trained")
        else:
            config.validate()
            world.check_same("NAC settings", dataclasses.asdict(config))
            world.from_main(lambda: RunDirectory.ensure_new(run_dir))
            session = _Session(config, world, progress)  # data and model first: a failed start leaves no folder
            session.directory = world.from_main(lambda: RunDirectory.create(run_dir, dataclasses.asdict(config)))
            session._checkpoint()  # an interrupt in the first iteration can resume from the start
        return session.loop()


class _Session:
    """One run: data, the net under construction, the search state."""

    def __init__(self, config: NACConfig, world: World, progress: Callable[[str], None], data: Dataset | None = None):
        self.config, self.world, self.progress = config, world, progress
        self.directory: RunDirectory | None = None  # set once the run directory exists; none for the worst case
        self.data = data or load(config.data, config.val_fraction, config.fraction, config.seed)
        self.trainer = Trainer(pick_device(config.device, world), config.batch_size, self.data.augment, world=world)
        d = self.data
        self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y = self.trainer.place_data(
            d.train_x, d.train_y, d.val_x, d.val_y, d.test_x, d.test_y)
        self.source = ModelSource(config.base, (d.in_channels, d.image_size, d.image_size), d.num_classes,
                                  seed=config.seed)
        self.example = self.source.example_input()
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.cell_rng = torch.Generator().manual_seed(config.seed + 1)
        self.state = NACState()
        self.final_model: dict[str, torch.Tensor] | None = None
        self.gm = self._capture(self.source.build())  # seeds the global RNG with config.seed
        world.check_replicas(self.gm, "building the base EnvelopeNet")

    def _capture(self, model: torch.nn.Module) -> fx.GraphModule:
        return self.trainer.place_model(capture(model, self.example))

    def _fresh(self, structure: dict[str, Any]) -> fx.GraphModule:
        return self._capture(build(structure, num_classes=self.data.num_classes, in_channels=self.data.in_channels))

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.gm = self._fresh(checkpoint["structure"])
        self.gm.load_state_dict(checkpoint["model"])
        self.state = NACState(**checkpoint["state"])
        self.final_model = checkpoint.get("final_model")
        torch.set_rng_state(checkpoint["rng"])
        self.shuffle.set_state(checkpoint["shuffle_rng"])
        self.cell_rng.set_state(checkpoint["cell_rng"])
        self.world.check_replicas(self.gm, "restoring the checkpoint")

    # ---- the loop

    def loop(self) -> dict[str, Any]:
        self.construct()
        if self.state.phase == "train":
            for name, structure in self._nets_to_train():
                if name not in self.state.trained:
                    line = self._train_from_scratch(name, structure)
                    self._checkpoint()
                    self.progress(line)
            self.state.phase = "done"
            self._checkpoint()
        return self._finish()

    def construct(self) -> dict[str, Any]:
        """The construction iterations still to do; returns the constructed structure."""
        while self.state.phase == "construct":
            began = time.perf_counter()
            row = self._iteration()
            self.state.construction_seconds += time.perf_counter() - began
            row["seconds"] = round(time.perf_counter() - began, 3)
            self.state.rows.append(row)
            self.state.iteration += 1
            if self.state.iteration == self.config.iterations:
                self.state.constructed = envelope_arch(self.gm)
                self.state.phase = "train" if self.config.epochs else "done"
            self._checkpoint()
            self.progress(_progress_line(row, self.config.iterations))
        return self.state.constructed

    def _iteration(self) -> dict[str, Any]:
        config, state = self.config, self.state
        gm = self.gm if config.keep_weights or state.iteration == 0 else self._fresh(envelope_arch(self.gm))
        arch_before = arch_of(gm)
        instrumented = instrument_branches(gm)
        optimizer = torch.optim.SGD(instrumented.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        first_step = state.iteration * config.steps

        def snapshot(step: int) -> None:
            if step % config.log_every == 0 or step == config.steps:
                self.world.average_buffers(instrumented)
                flat = {f"{cell}.{branch}": value
                        for cell, values in branch_statistics(instrumented).items() for branch, value in values.items()}
                state.statistics.append({"iteration": state.iteration + 1, "step": first_step + step, **flat})

        try:
            loss, train_acc = self.trainer.train_steps(instrumented, optimizer, self.train_x, self.train_y,
                                                       self.shuffle, config.steps, snapshot,
                                                       label=f"iteration {state.iteration + 1}/{config.iterations}")
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} in iteration {state.iteration + 1} ({arch_before}, lr {config.lr:g}); "
                                   "lower --lr and start a new run") from None
        statistic = branch_statistics(instrumented)
        gm = remove_instrumentation(instrumented)
        _, val_acc = self.trainer.evaluate(gm, self.val_x, self.val_y)
        _, test_acc = self.trainer.evaluate(gm, self.test_x, self.test_y)  # for plots, never decisions
        known = len(history(gm))
        rewriting = time.perf_counter()
        gm, events = self._restructure(gm, statistic)
        rewrite_seconds = time.perf_counter() - rewriting
        self.gm = self.trainer.place_model(gm)
        self.world.check_replicas(self.gm, f"iteration {state.iteration + 1}'s rewrites")
        state.rewrites.extend(history(gm)[known:])
        return {"iteration": state.iteration + 1, "arch": arch_before, "train_loss": round(loss, 6),
                "train_acc": round(train_acc, 4), "val_acc": round(val_acc, 4), "test_acc": round(test_acc, 4),
                "params": sum(p.numel() for p in gm.parameters()), "next_arch": arch_of(gm),
                "rewrite_seconds": round(rewrite_seconds, 3), "event": "; ".join(events)}

    def _restructure(self, gm: fx.GraphModule, statistic: dict[str, dict[str, float]]):
        """Per stage: prune branches, prune skips, add a cell (Algorithm 1's inner loop)."""
        config = self.config
        events = []
        for index, stage in enumerate(envelope_arch(gm)["stages"]):
            pruned = branches_to_prune(stage, statistic, config.max_prune, prune_best=config.worst)
            for cell, branches in pruned.items():
                gm = prune_branches(gm, cell, branches)
            if pruned:
                events.append(f"stage{index}: pruned " + ", ".join(f"{c.rpartition('.')[2]}.{b}"
                                                                   for c, bs in pruned.items() for b in bs))
            if not config.worst:
                skips = skips_to_prune({tuple(name.split(".w_")): float(p.detach()) for name, p in gm.named_parameters()
                                        if name.startswith(f"stage{index}.") and ".w_" in name})
                if skips:
                    gm = prune_skips(gm, skips)
                    events.append(f"stage{index}: pruned {len(skips)} skip(s)")
            cells = len(stage["cells"])
            if config.max_cells is None or cells < config.max_cells[index]:
                gm = add_cell(gm, index, branches=config.branch_set(), init=config.cell_init, generator=self.cell_rng)
                events.append(f"stage{index}: added cell{cells}")
        return gm, events

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
                raise TrainingDiverged(f"{err} training {name} ({arch_of(gm)}) in epoch {epoch + 1}; "
                                       "lower --lr and start a new run") from None
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

    def _checkpoint(self) -> None:
        if self.directory is None or not self.world.is_main:
            return
        self.directory.save_checkpoint({
            "config": dataclasses.asdict(self.config),
            "state": dataclasses.asdict(self.state),
            "structure": envelope_arch(self.gm),
            "model": self.gm.state_dict(),
            "final_model": self.final_model,
            "rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
            "cell_rng": self.cell_rng.get_state(),
        })
        self.directory.write_log(self.state.rows)

    def _finish(self) -> dict[str, Any]:
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
        result = save_result(directory, final, self.source, result, rewrites=state.rewrites)
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
            f"val {row['val_acc']:5.1f}%  -> {row['next_arch']}  ({row['seconds']:.1f} s)"
            + (f"\n    {row['event']}" if row["event"] else ""))
