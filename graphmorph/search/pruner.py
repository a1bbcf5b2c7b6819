"""Pruning to budgets as a controller for the user's own training loop: `graphmorph.Prune`.

    pruner = graphmorph.Prune(model, example_input, targets=(0.7, 0.5, 0.3), steps=2, finetune_epochs=4,
                              evaluate=validation_accuracy)
    while not pruner.done:
        step = pruner.step()                                   # one verified pruning, to the step's budget
        optimizer = step.optimizer(optimizer)                  # momentum of the kept channels kept
        for _ in range(step.finetune_epochs):
            train_one_epoch(pruner.model, optimizer)           # the user's loss, data, AMP, logger
        if step.point is not None:
            save(pruner.model, step.point)                     # the net at this target, fine-tuned

Targets are fractions of the unpruned net's cost (`measure`: "macs" for one example input,
"params", or "latency": onnxruntime's CPU latency for the example on one thread, measured; see
`graphmorph.graph.latency`), reached in descending order. An `iterative` schedule reaches each target from the
previous one in `steps` steps whose budgets fall geometrically, fine-tuning between; `oneshot`
prunes each target from the unpruned net in one step. Each step meets its budget within
`tolerance` (relative) where the net's channels allow it, and says whether it did.

`method` chooses how: `channels` prunes channels only (lowest `criterion` importance first, one
verified `PruneFilters`); `blocks` first removes whole residual blocks, each time the one whose
removal costs least validation accuracy (`evaluate`), while the budget allows, then prunes channels
for the rest; `auto` removes such a block only while that (with channel pruning to the same budget)
scores higher on validation than channel pruning alone. Every rewrite is verified: pruning equals
masking, block removal equals silencing the block's branch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import fx, nn

from graphmorph.errors import ConfigError, GraphmorphError
from graphmorph.graph.capture import capture
from graphmorph.graph.copying import deep_copy
from graphmorph.graph.history import history
from graphmorph.models import arch_of
from graphmorph.run.events import Event, event
from graphmorph.run.optim import rebuild_optimizer
from graphmorph.search.budget_fit import MEASURES, cheapest_block, fit_channels
from graphmorph.search.config import require
from transforms import replay
from transforms.criteria import CRITERIA

__all__ = ["Prune", "PruneStep", "Point", "PruneProgress", "SCHEDULES", "METHODS", "prune_checks",
           "RemovedBlock", "PrunedChannels", "ReachedPoint"]

SCHEDULES = ("iterative", "oneshot")
METHODS = ("channels", "blocks", "auto")

RemovedBlock = event("RemovedBlock", "removed_block", "removed block {block} (validation {val_acc:.2f}%)",
                     module=__name__, block=str, val_acc=float)
PrunedChannels = event("PrunedChannels", "pruned_channels",
                       "pruned {share:.1%} of the ranked channels by {criterion} -> {fraction:.3f} of the {measure}",
                       module=__name__, share=float, criterion=str, fraction=float, measure=str)
ReachedPoint = event("ReachedPoint", "reached_point", "point {target:g}: {fraction:.3f} of the {measure} ({verdict})",
                     module=__name__, target=float, fraction=float, measure=str, verdict=str)


def prune_checks(targets: Sequence[float], measure: str, schedule: str, steps: int, finetune_epochs: int,
                 criterion: str, method: str, tolerance: float) -> list[tuple[bool, str]]:
    """The pruning settings' checks, (holds, message if not), shared by the controller and the run's config."""
    return [
        (len(targets) > 0 and all(0 < t < 1 for t in targets),
         f"targets must be fractions of the unpruned cost in (0, 1), e.g. 0.7,0.5,0.3; got {list(targets)}"),
        (len(set(targets)) == len(targets), f"targets must differ, got {list(targets)}"),
        (measure in MEASURES, f"measure must be one of {', '.join(MEASURES)}, got {measure!r}"),
        (schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}"),
        (steps >= 1, f"steps must be at least 1, got {steps}"),
        (finetune_epochs >= 0, f"finetune epochs must be >= 0, got {finetune_epochs}"),
        (criterion in CRITERIA, f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}"),
        (method in METHODS, f"method must be one of {', '.join(METHODS)}, got {method!r}"),
        (0 < tolerance < 1, f"tolerance must be a fraction in (0, 1), got {tolerance}"),
    ]


@dataclass(frozen=True)
class Point:
    """A target reached: the fraction asked for and the one measured, and whether it is within tolerance."""

    target: float
    fraction: float
    cost: float
    within: bool
    arch: str

    def text(self, measure: str) -> str:
        return (f"{self.fraction:.3f} of the unpruned {measure} for target {self.target:g} "
                f"({'within' if self.within else 'NOT within'} tolerance)")


@dataclass(frozen=True)
class PruneStep:
    """One `Prune.step`: the pruned net, the budget it met, its events, the epochs to fine-tune it,
    and the point when this step reached a target."""

    model: fx.GraphModule
    previous: fx.GraphModule
    budget: float               # the step's target, a fraction of the unpruned cost
    fraction: float             # the fraction reached
    finetune_epochs: int
    events: tuple[Event, ...]
    point: Point | None = None

    def optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """`optimizer` over the pruned net's parameters (see `graphmorph.rebuild_optimizer`)."""
        return rebuild_optimizer(optimizer, self.previous, self.model)

    def text(self) -> str:
        return "; ".join(e.text() for e in self.events)


@dataclass
class PruneProgress:
    """Where the pruning stands (the controller's `state_dict()["state"]`)."""

    point: int = 0                      # index of the target being reached (targets in descending order)
    step: int = 0                       # steps taken toward it
    points: list[dict[str, Any]] = field(default_factory=list)   # the points reached, as dicts


class Prune:
    """Prune `model` (captured with `example_input`; a GraphModule is used as is) to `targets`,
    fractions of its `measure`, one verified step at a time (see the module's docstring).

    evaluate: `model -> validation accuracy`, needed by `method` "blocks" and "auto". data: batches
    for a criterion that reads data ("featuremap_l2", "taylor": (inputs, labels) pairs). Each
    step's fine-tuning epochs are `finetune_epochs` per target shared over its steps.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, targets: Sequence[float] = (0.5,),
                 measure: str = "macs", schedule: str = "iterative", steps: int = 1, finetune_epochs: int = 0,
                 criterion: str = "l2", method: str = "channels",
                 evaluate: Callable[[fx.GraphModule], float] | None = None, data: Any = None,
                 tolerance: float = 0.02):
        require(prune_checks(tuple(targets), measure, schedule, steps, finetune_epochs, criterion, method,
                             tolerance) + [
            (method == "channels" or evaluate is not None,
             f"method {method!r} removes the block whose removal costs least validation accuracy: pass "
             "evaluate=<model -> validation accuracy>"),
            (not CRITERIA.get(criterion) or not CRITERIA[criterion].needs_data or data is not None,
             f"criterion {criterion!r} reads data: pass data=<batches>"),
        ])
        self.base = model if isinstance(model, fx.GraphModule) else capture(model, example_input)
        self.example = example_input
        self.targets = tuple(sorted(targets, reverse=True))
        self.measure, self.schedule, self.criterion, self.method = measure, schedule, criterion, method
        self.steps = steps if schedule == "iterative" else 1
        self.finetune_epochs, self.evaluate, self.data, self.tolerance = finetune_epochs, evaluate, data, tolerance
        self.base_cost = MEASURES[measure](self.base, example_input)
        self.model = self.base
        self.state = PruneProgress()

    @property
    def done(self) -> bool:
        return self.state.point == len(self.targets)

    @property
    def points(self) -> list[Point]:
        return [Point(**p) for p in self.state.points]

    def step(self) -> PruneStep:
        """Prune to the next step's budget (a new GraphModule in `model`); the step says the epochs to
        fine-tune it and, at a target, the point reached."""
        if self.done:
            raise ConfigError("every target is reached: check `pruner.done` in your loop")
        state, target = self.state, self.targets[self.state.point]
        start = self.base if self.schedule == "oneshot" else self.model
        before = 1.0 if self.schedule == "oneshot" or state.point == 0 else self.targets[state.point - 1]
        state.step += 1
        budget = before * (target / before) ** (state.step / self.steps)
        pruned, events = self._prune_to(start, budget * self.base_cost)
        fraction = MEASURES[self.measure].fraction(pruned, self.base, self.base_cost, self.example)
        point = None
        if state.step == self.steps:
            within = abs(fraction - target) <= self.tolerance * target
            point = Point(target, fraction, fraction * self.base_cost, within, _name(pruned))
            events += (ReachedPoint(target, fraction, self.measure, "within tolerance" if within else
                                    f"NOT within {self.tolerance:.0%}: the nearest the net's channels reach"),)
            state.points.append(asdict(point))
            state.point, state.step = state.point + 1, 0
        previous, self.model = self.model, pruned
        return PruneStep(pruned, previous, budget, fraction, self._epochs(), events, point)

    def _epochs(self) -> int:
        """This step's share of the target's fine-tuning epochs (the last step takes the remainder)."""
        share = self.finetune_epochs // self.steps
        last = self.state.step == 0          # the step just taken reached its target
        return self.finetune_epochs - share * (self.steps - 1) if last else share

    def _prune_to(self, start: fx.GraphModule, budget: float) -> tuple[fx.GraphModule, tuple[Event, ...]]:
        """`start` pruned to cost about `budget`, by the method; the events say what went."""
        measure, example, events = self.measure, self.example, []
        floor = budget * (1 - self.tolerance)
        current = start
        if self.method == "blocks":     # every block the budget allows, then channels for the rest
            while (found := cheapest_block(current, self.evaluate, floor, measure, example)) is not None:
                current = found[1]
                events.append(RemovedBlock(found[0], found[2]))
        best = self._channels(current, budget)
        if self.method == "auto":       # a block only while it scores higher than channels alone
            score = self.evaluate(best[0])
            while (found := cheapest_block(current, self.evaluate, floor, measure, example)) is not None:
                name, without, val_acc = found
                candidate = self._channels(without, budget)
                candidate_score = self.evaluate(candidate[0])
                if candidate_score <= score:
                    break
                current, best, score = without, candidate, candidate_score
                events.append(RemovedBlock(name, val_acc))
        model, share, cost = best
        if share:
            events.append(PrunedChannels(share, self.criterion, cost / self.base_cost, measure))
        return (deep_copy(model) if model is start else model), tuple(events)

    def _channels(self, gm: fx.GraphModule, budget: float) -> tuple[fx.GraphModule, float, float]:
        fit = fit_channels(gm, budget, self.measure, self.example, criterion=self.criterion, data=self.data)
        return fit.model, fit.ratio, fit.cost

    # ---- resuming

    def state_dict(self) -> dict[str, Any]:
        """The progress and the rewrites since the unpruned net (weights are the caller's to save)."""
        return {"state": asdict(self.state), "rewrites": history(self.model)[len(history(self.base)):]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the pruned architecture replayed on the unpruned net (load
        the saved weights into `model` afterwards)."""
        self.model = replay(self.base, saved["rewrites"]) if saved["rewrites"] else deep_copy(self.base)
        self.state = PruneProgress(**saved["state"])


def _name(gm: fx.GraphModule) -> str:
    try:
        return arch_of(gm)
    except GraphmorphError:   # a user's model whose stages cannot be read
        return type(gm).__name__
