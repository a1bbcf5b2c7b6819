"""How long an AutoGrow run trains, from the size of its training data, and how long that takes.

The baseline schedule (the epochs a net trains from scratch; AutoGrow's J is the half of it at the
top learning rate, and its fine-tuning the whole of it) grows with the training set as a power law
through two anchors: the paper's 200 epochs for 50,000 images (CIFAR, batch 128), and 16 epochs
for the 1,294 training images of the embedded digits, where a ResNet reaches its plateau:

    epochs(n) = 200 * (n / 50000) ** 0.69, at least 4 and at most 200.

So a fraction of a dataset trains for fewer epochs of fewer steps (MNIST: 200 epochs in full, 27 at
5%), and a dataset as large as the paper's trains as the paper did.

The estimate times a few training steps of the seed net (on a copy, drawing nothing from the run's
random streams) and scales them by the MACs the net is expected to have: growth is assumed to go
on for 4J epochs, adding one block every K epochs round-robin over the growing stages (measured:
30 growth epochs at J=8 on the digits, 50 at J=13 on 5% of MNIST; the true length depends on when
accuracy stops improving, which no estimate knows in advance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from graphmorph.graph.flops import count_flops

__all__ = ["Budget", "Estimate", "baseline_epochs", "estimate", "step_seconds"]

PAPER_EPOCHS, PAPER_IMAGES = 200, 50_000
EXPONENT = 0.69           # through (1294 images, 16 epochs) and (50000, 200)
MIN_EPOCHS = 4
TIMED_STEPS, WARMUP_STEPS = 5, 2
GROWTH_WINDOWS = 4        # growth lasts about this many stopping windows J


def baseline_epochs(n_train: int) -> int:
    """Epochs of the baseline schedule for `n_train` training images."""
    return max(MIN_EPOCHS, min(PAPER_EPOCHS, round(PAPER_EPOCHS * (n_train / PAPER_IMAGES) ** EXPONENT)))


@dataclass(frozen=True)
class Budget:
    """The resolved epochs of a run: J, fine-tuning, and the baseline they derive from."""

    n_train: int
    baseline_epochs: int
    J: int
    finetune_epochs: int
    growth_cap: int | None          # max_growth_epochs

    def text(self) -> str:
        return (f"budget: {self.n_train} training images -> a {self.baseline_epochs}-epoch baseline schedule "
                f"({PAPER_EPOCHS} x (n/{PAPER_IMAGES})^{EXPONENT}, the paper's {PAPER_EPOCHS} at {PAPER_IMAGES} "
                f"images); J={_count(self.J, 'epoch')}, fine-tuning {_count(self.finetune_epochs, 'epoch')}"
                + (f", growth capped at {_count(self.growth_cap, 'epoch')}" if self.growth_cap else ""))


@dataclass(frozen=True)
class Estimate:
    """The expected length of a run, and what it assumes."""

    seed_epoch_seconds: float
    growth_epochs: int
    growths: int
    finetune_epochs: int
    seconds: float

    def text(self) -> str:
        growth = (f"growth about {_count(self.growth_epochs, 'epoch')} adding about {_count(self.growths, 'block')}, "
                  "then " if self.growth_epochs else "")
        return (f"estimate: about {_duration(self.seconds)} ({growth}{_count(self.finetune_epochs, 'epoch')} of "
                "fine-tuning; "
                f"the seed net trains an epoch in {self.seed_epoch_seconds:.2f} s here)")


def estimate(gm: fx.GraphModule, example: torch.Tensor, trainer, x: torch.Tensor, y: torch.Tensor,
             evaluated: int, budget: Budget, K: int, growing: list[int], max_depth: int) -> Estimate:
    """The run's expected seconds: a timed epoch of the seed net, scaled by the expected MACs."""
    step = step_seconds(gm, trainer, x, y)
    steps_per_epoch = math.ceil(len(y) / trainer.batch_size)
    epoch = step * (steps_per_epoch + evaluated / trainer.batch_size / 3)   # a forward is about a third of a step
    growth_epochs = 0
    if growing:
        growth_epochs = GROWTH_WINDOWS * budget.J
        if budget.growth_cap is not None:
            growth_epochs = min(growth_epochs, budget.growth_cap)
    report = count_flops(gm, example)
    block_macs = [_stage_macs(report, f"stage{s}") / max(1, report.stage_blocks.get(f"stage{s}", 1)) for s in growing]
    growths = min(growth_epochs // K, max_depth * len(growing))
    added = growths * (sum(block_macs) / len(block_macs)) if growing else 0.0
    ratio_end = (report.macs + added) / report.macs
    seconds = epoch * (growth_epochs * (1 + ratio_end) / 2 + budget.finetune_epochs * ratio_end)
    return Estimate(step * steps_per_epoch, growth_epochs, growths, budget.finetune_epochs, seconds)


def _stage_macs(report, label: str) -> int:
    """MACs of a stage as counted (0 when the count places no node in it: it adds nothing then)."""
    cost = report.by_stage.get(label)
    return cost.macs if cost is not None else 0


def step_seconds(gm: fx.GraphModule, trainer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds per training step of a copy of `gm` (its own optimizer and batch), at the thread
    count the trainer's policy decides on this net first."""
    trainer.settle_threads(gm, x, y)
    step = trainer.step_timer(gm, x, y)
    for _ in range(WARMUP_STEPS):
        step()
    return sum(step() for _ in range(TIMED_STEPS)) / TIMED_STEPS


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
