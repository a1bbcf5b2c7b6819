"""AutoGrow as a controller for the user's own training loop (paper Algorithm 1, one call per epoch).

    grower = graphmorph.AutoGrow(model, example_input, K=3, J=30, tau=0.05, init="gau")
    while not grower.done:
        train_one_epoch(grower.model, optimizer)              # the user's loss, data, AMP, logger
        change = grower.epoch_end(validation_accuracy(grower.model))
        if change.grew:
            optimizer = change.optimizer(optimizer)           # momentum of surviving parameters kept

The controller owns the decisions (when to grow which stage, when a stage stops, when fine-tuning
ends) and the rewrites; the caller owns training and evaluation. `graphmorph autogrow` runs this
same controller inside graphmorph's trainer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import fx, nn

from graphmorph.errors import ConfigError
from graphmorph.graph.analysis import find_blocks, find_stages
from graphmorph.graph.capture import capture
from graphmorph.graph.history import history
from graphmorph.models import arch_of
from graphmorph.run.events import BudgetSpent, DepthCapped, Event, Found, Grew, Stopped, WidthCapped
from graphmorph.run.optim import rebuild_optimizer
from graphmorph.run.sources import ModelError
from graphmorph.run.train import staircase_lr
from graphmorph.search.config import require
from graphmorph.search.widths import stage_widths, widen_stage, width_label, width_refusal
from graphmorph.search.policies import POLICIES, meets_growing_policy, meets_stopping_policy, next_stage, running_max
from transforms import grow, growth_refusal, replay
from transforms.initializers import GROWTH_INITS

__all__ = ["AutoGrow", "Change", "GrowthState", "GROW_DIMENSIONS", "growth_checks", "shape_text"]

GROW_DIMENSIONS = ("depth", "width", "both")   # what one growth of a stage adds: a block, channels, or both


@dataclass
class GrowthState:
    """Where the search stands (the controller's `state_dict()["state"]`)."""

    epoch: int = 0
    phase: str = "grow"                # grow | finetune | done
    growing: list[int] = field(default_factory=list)   # the circular list of growing stages
    current: int | None = 0            # growingSubNet
    grown: int | None = None           # grownSubNet
    last_check: int = 0
    finetune_start: int = 0
    val_accuracy: list[float] = field(default_factory=list)
    found: str | None = None


@dataclass(frozen=True)
class Change:
    """What one `epoch_end` did: its events and, when the net grew, the grown model."""

    events: tuple[Event, ...]
    model: fx.GraphModule | None = None       # the grown net, None when nothing grew
    previous: fx.GraphModule | None = None    # the net it grew from

    @property
    def grew(self) -> bool:
        return self.model is not None

    def optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """`optimizer` over the grown net's parameters (see `graphmorph.rebuild_optimizer`), or
        itself when nothing grew."""
        return rebuild_optimizer(optimizer, self.previous, self.model) if self.grew else optimizer

    def text(self) -> str:
        return "; ".join(event.text() for event in self.events)


class AutoGrow:
    """Grow `model` one block per stage, round-robin, from the validation accuracy the caller
    reports after each epoch (`epoch_end`). `model` is captured with `example_input` (a
    GraphModule from `graphmorph.capture` is used as is).

    policy: "periodic" (grow every K epochs) or "convergent" (when accuracy rose by less than
    `tau` percentage points over K epochs). A grown stage stops when accuracy rose by less than
    `tau` over the last J epochs (J defaults to K for convergent growth; periodic growth needs
    J >> K, the paper's J being the epochs a baseline trains at its largest learning rate).
    init: zero | uni | gau | adam | identity (adam trains on `data`, batches of (x, y) or a
    callable returning them). `stages` limits which stages may grow (default: every stage a trial
    growth accepts; an empty list fine-tunes the model as is). After the growth phase come
    `finetune_epochs` epochs (default 0), then `done`. New blocks draw from `generator`
    (default: seeded with `seed`), so a run is reproducible and `state_dict` resumes it. `name`
    is how messages call the model (default: its architecture string). grow: what one growth of
    a stage adds, a block ("depth", the paper), a quarter more channels in each of the stage's
    channel groups ("width", `graphmorph.search.widths`, function-preserving), or both; a
    stage stops widening at `max_width` times its seed width.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor | None = None, *, policy: str = "periodic",
                 K: int = 3, J: int | None = None, tau: float = 0.05, init: str = "gau", std: float = 1.0,
                 max_depth: int = 64, max_growth_epochs: int | None = None, finetune_epochs: int = 0,
                 stages: Sequence[int] | None = None, data=None, seed: int = 0,
                 generator: torch.Generator | None = None, name: str | None = None, grow: str = "depth",
                 max_width: float = 4.0):
        if J is None and policy == "periodic":
            raise ConfigError("policy='periodic' needs J, the stopping window in epochs (J >> K; the paper uses the "
                              "epochs a baseline trains at its largest learning rate), e.g. AutoGrow(..., J=30)")
        self.policy, self.K, self.J = policy, K, (K if J is None else J)
        self.tau, self.init, self.std, self.data = tau, init, std, data
        self.max_depth, self.max_growth_epochs, self.finetune_epochs = max_depth, max_growth_epochs, finetune_epochs
        self.dimension, self.max_width = grow, max_width
        self._validate()
        self.model = model if isinstance(model, fx.GraphModule) else _captured(model, example_input)
        self.name = name or arch_of(self.model)
        self.seed_model = self.model
        self.seed_widths = stage_widths(self.model) if grow != "depth" else ()
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.refusals: dict[int, str] = {}
        self.state = GrowthState()
        self.state.growing = self._growing_stages(stages)
        self.state.current = self.state.growing[0] if self.state.growing else None
        if not self.state.growing:     # stages=[]: fine-tune the model as it is
            self.state.phase = "finetune" if finetune_epochs else "done"

    # ---- the loop

    @property
    def done(self) -> bool:
        return self.state.phase == "done"

    @property
    def phase(self) -> str:
        """grow, finetune or done."""
        return self.state.phase

    def learning_rate(self, base: float) -> float:
        """The paper's schedule for the coming epoch: `base` while growing; in fine-tuning, x0.1 from
        half way and x0.01 from three quarters of `finetune_epochs`."""
        if self.state.phase == "grow":
            return base
        return staircase_lr(base, self.state.epoch - self.state.finetune_start, max(1, self.finetune_epochs))

    def epoch_end(self, val_accuracy: float) -> Change:
        """Record one epoch's validation accuracy (percent) and apply Algorithm 1's decisions; the
        returned `Change` holds the grown model when the net grew (then also `self.model`)."""
        if self.done:
            raise ConfigError("epoch_end after the search is done: check `grower.done` in your loop")
        state = self.state
        state.epoch += 1
        state.val_accuracy.append(float(val_accuracy))
        if state.phase == "finetune":
            if state.epoch - state.finetune_start >= self.finetune_epochs:
                state.phase = "done"
            return Change(())
        previous = self.model
        events = self._policies()
        return Change(tuple(events), self.model, previous) if self.model is not previous else Change(tuple(events))

    def _policies(self) -> list[Event]:
        """Algorithm 1's body, every K epochs: stop the recently grown stage if its growth did not
        pay, grow the current stage, move on round-robin; fine-tune once no stage grows."""
        state = self.state
        budget_spent = self.max_growth_epochs is not None and state.epoch >= self.max_growth_epochs
        if state.epoch - state.last_check < self.K and not budget_spent:
            return []
        state.last_check = state.epoch
        events: list[Event] = []
        metric = running_max(state.val_accuracy)
        if meets_stopping_policy(metric, self.J, self.tau, state.grown):
            events.append(Stopped(state.grown))
            self._remove(state.grown)
            state.grown = None
        if budget_spent and state.growing:
            events.append(BudgetSpent())
            state.growing = []
        if state.growing and meets_growing_policy(self.policy, metric, self.K, self.tau):
            stage = state.current
            events.append(self._grow(stage))
            state.grown = stage
            state.current = next_stage(state.growing, stage)
            if self.dimension != "width" and len(find_stages(self.model)[stage].blocks) >= self.max_depth:
                events.append(DepthCapped(stage, self.max_depth))
                self._remove(stage)
            elif self.dimension != "depth" and \
                    stage_widths(self.model)[stage] >= self.max_width * self.seed_widths[stage]:
                events.append(WidthCapped(stage, stage_widths(self.model)[stage]))
                self._remove(stage)
        if not state.growing:
            self._begin_finetune(events)
        return events

    def _begin_finetune(self, events: list[Event]) -> None:
        state = self.state
        state.phase, state.finetune_start = "finetune", state.epoch
        state.found = self._arch()
        events.append(Found(state.found, self.finetune_epochs))
        if self.finetune_epochs == 0:
            state.phase = "done"

    def _remove(self, stage: int) -> None:
        state = self.state
        if stage not in state.growing:
            return
        if state.current == stage:
            state.current = next_stage(state.growing, stage) if len(state.growing) > 1 else None
        state.growing.remove(stage)

    def _grow(self, stage: int) -> Grew:
        """Add a block to `stage` (depth), widen its channel groups (width), or both."""
        if self.dimension != "width":
            self.model = grow(self.model, stage=stage, init=self.init, std=self.std,
                              data=self.data if GROWTH_INITS[self.init].needs_data else None, generator=self.generator)
        if self.dimension != "depth":
            self.model, _ = widen_stage(self.model, stage, self.generator)
        return Grew(stage, self._arch())

    def _arch(self) -> str:
        """The net's name: its architecture string, with its stage widths when growth widens."""
        return arch_of(self.model) + (f" ({width_label(self.model)})" if self.dimension != "depth" else "")

    # ---- resume

    def state_dict(self) -> dict[str, Any]:
        """The search state, the rewrites so far and the generator's state; the model's weights
        are the caller's to save (`grower.model.state_dict()`)."""
        return {"state": dataclasses.asdict(self.state), "rewrites": history(self.model),
                "generator": self.generator.get_state()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the rewrites are replayed on the seed model (new blocks
        as drawn then), so `self.model` has the saved architecture; load its weights after."""
        self.model = replay(self.seed_model, saved["rewrites"], data=self.data)
        self.state = GrowthState(**saved["state"])
        self.generator.set_state(saved["generator"])

    # ---- setup

    def _validate(self) -> None:
        require(growth_checks(self.policy, self.K, self.J, self.tau, self.init, self.std, self.max_depth,
                              self.finetune_epochs, self.dimension, self.max_width) + [
            (self.init not in GROWTH_INITS or not GROWTH_INITS[self.init].needs_data or self.data is not None,
             f"init={self.init!r} trains the new block's last BatchNorm: pass data=<batches of (x, y) or a "
             "callable>")])

    def _refusal(self, stage: int) -> str | None:
        if self.dimension == "width":
            return width_refusal(self.model, stage)
        return growth_refusal(self.model, stage, self.init)

    def _growing_stages(self, stages: Sequence[int] | None) -> list[int]:
        """The stages that may grow: those asked for (or all) that a trial growth accepts."""
        found = find_stages(self.model)
        wanted = [s.index for s in found] if stages is None else list(stages)
        unknown = sorted(set(wanted) - {s.index for s in found})
        if unknown:
            raise ConfigError(f"stages {unknown} do not exist: the model has {len(found)} stage(s)")
        self.refusals = {index: reason for index in wanted if (reason := self._refusal(index)) is not None}
        growing = [index for index in wanted if index not in self.refusals]
        if wanted and not growing:
            raise ModelError(nothing_to_grow(self.model, self.refusals, self.name))
        if stages is None and not found:
            raise ModelError(nothing_to_grow(self.model, {}, self.name))
        return growing


def growth_checks(policy: str, K: int, J: int | None, tau: float, init: str, std: float, max_depth: int,
                  finetune_epochs: int | None, dimension: str, max_width: float) -> list[tuple[bool, str]]:
    """The growth settings' checks, (holds, message if not), shared by the controller and the run's config."""
    return [
        (policy in POLICIES, f"policy must be one of {', '.join(POLICIES)}, got {policy!r}"),
        (K >= 1, f"K must be at least 1 epoch, got {K}"),
        (J is None or J >= 1, f"J must be at least 1 epoch, got {J}"),
        (0 <= tau <= 100, f"tau must be 0 to 100 percentage points of accuracy, got {tau}"),
        (init in GROWTH_INITS, f"init must be one of {', '.join(GROWTH_INITS)}, got {init!r}"),
        (std > 0, f"std must be > 0, got {std}"),
        (max_depth >= 1, f"max depth must be at least 1, got {max_depth}"),
        (finetune_epochs is None or finetune_epochs >= 0, f"finetune epochs must be >= 0, got {finetune_epochs}"),
        (dimension in GROW_DIMENSIONS, f"grow must be one of {', '.join(GROW_DIMENSIONS)}, got {dimension!r}"),
        (max_width > 1, f"max width must be > 1 (a multiple of the seed's stage widths), got {max_width}"),
    ]


def _captured(model: nn.Module, example_input: torch.Tensor | None) -> fx.GraphModule:
    if example_input is None:
        raise ConfigError("AutoGrow needs example_input (one batch the model takes) to capture the model; "
                          "or pass a GraphModule from graphmorph.capture")
    return capture(model, example_input)


def nothing_to_grow(gm: fx.GraphModule, refusals: dict[int, str], label: str) -> str:
    """Why no stage of `gm` can grow: the blocks considered, and each stage's refusal."""
    blocks = find_blocks(gm)
    if not blocks:
        return (f"{label} has no block AutoGrow can grow: none was found. graphmorph looks for residual (add) or "
                "concatenating merges around weighted layers, modules holding exactly one weighted layer, or the "
                "conv units of a flat nn.Sequential (see graphmorph.graph.analysis)")
    considered = "; ".join(f"{b.name} ({b.kind}, {shape_text(b.in_shape)} -> {shape_text(b.out_shape)})" for b in blocks)
    reasons = " ".join(f"Stage {i}: {reason}." for i, reason in refusals.items()) or \
        "No block has a spatial (C x H x W) output, so there are no stages."
    return (f"{label} has no block AutoGrow can grow. Blocks considered: {considered}. {reasons} AutoGrow stacks "
            "shape-preserving copies of each stage's last block (a residual block, a conv-BN-ReLU module, or a "
            "cell of parallel branches)")


def shape_text(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape else "?"
