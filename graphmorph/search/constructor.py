"""NAC (EnvelopeNets, Algorithm 1) as a controller for the user's own training loop.

    nac = graphmorph.NAC(graphmorph.models.build("EnvelopeNet-16/2-2-2/6", in_channels=1), example_input)
    while not nac.done:
        net = nac.instrumented                     # the net with its branch statistics attached
        train_for_a_few_steps(net)                 # the user's loss, data, optimizer
        change = nac.iteration_end()               # prune branches and skips, add a cell per stage
    constructed = nac.model                        # train it from scratch as you like

The controller owns the decisions (which branches and skips go, where cells are added) and the
rewrites, each verified; the caller owns the truncated training. `graphmorph nac` runs this same
controller inside graphmorph's trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import fx, nn

from graphmorph.errors import ConfigError
from graphmorph.search.config import require
from graphmorph.graph.capture import capture
from graphmorph.graph.history import history
from graphmorph.graph.verify import output_shape
from graphmorph.models import BRANCH_TYPES, build, envelope_arch, envelope_structure
from graphmorph.run.events import AddedCell, Event, PrunedBranches, PrunedSkips
from graphmorph.search.nac_choices import branches_to_prune, skips_to_prune
from transforms import CELL_INITS, add_cell, prune_branches, prune_skips
from transforms.statistics import branch_statistics, instrument_branches, remove_instrumentation

__all__ = ["NAC", "Construction"]


@dataclass(frozen=True)
class Construction:
    """What one `iteration_end` did: the statistics it decided on, the trained net (instruments
    removed), the rewrites' events and the pruned-and-expanded net."""

    statistics: dict[str, dict[str, float]]
    trained: fx.GraphModule
    events: tuple[Event, ...]
    model: fx.GraphModule

    def text(self) -> str:
        return "; ".join(event.text() for event in self.events)


class NAC:
    """Construct a net from an EnvelopeNet: after each truncated training of `instrumented`,
    `iteration_end` prunes per stage the branches with the lowest featuremap statistic (at most
    `max_prune`, a third of the stage's branches, never a cell's last), half the stage's skips
    (smallest |w|), and appends a cell (`cell_init`: "preserve" keeps the function, "random"),
    up to `max_cells` per stage. `iterations` such rounds, then `done`.

    model: an EnvelopeNet (`graphmorph.models.build("EnvelopeNet-...")`) or one captured with
    `graphmorph.capture`; `example_input` is a batch it takes. branches: the branch types of added cells (default: those
    of the model's first cell). keep_weights=False starts every iteration from fresh weights (the
    reference code), drawn from torch's global RNG. prune_best: the paper's worst case (prunes the
    best branches, keeps every skip). Added cells draw from `generator` (default: seeded with `seed`).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, iterations: int = 5,
                 max_prune: int = 4, max_cells: Sequence[int] | None = None, branches: Sequence[str] | None = None,
                 cell_init: str = "preserve", keep_weights: bool = True, prune_best: bool = False, seed: int = 0,
                 generator: torch.Generator | None = None):
        self.stages = len(envelope_arch(model)["stages"])    # ArchError for a model that is no EnvelopeNet
        gm = model if isinstance(model, fx.GraphModule) else capture(model, example_input)
        self.example_input = example_input
        self.num_classes = output_shape(gm)[-1]
        self.iterations, self.max_prune, self.cell_init = iterations, max_prune, cell_init
        self.max_cells = tuple(max_cells) if max_cells is not None else None
        self.branches = tuple(branches) if branches is not None else _branch_set(gm)
        self.keep_weights, self.prune_best = keep_weights, prune_best
        self._validate()
        self.model = gm
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.iteration = 0
        self.rewrites: list[dict[str, Any]] = []
        self._instrumented: fx.GraphModule | None = None

    @property
    def done(self) -> bool:
        return self.iteration == self.iterations

    @property
    def instrumented(self) -> fx.GraphModule:
        """This iteration's net to train (the same object until `iteration_end`): `model` with a
        statistic after every branch (from fresh weights at each iteration after the first when
        `keep_weights` is False)."""
        if self.done:
            raise ConfigError("the construction is done: train `nac.model` from scratch instead")
        if self._instrumented is None:
            start = self.model
            if not self.keep_weights and self.iteration > 0:
                start = self.fresh(envelope_arch(self.model))
            self._instrumented = instrument_branches(start)
        return self._instrumented

    def iteration_end(self) -> Construction:
        """Decide on the statistics gathered while `instrumented` trained and rewrite the net."""
        instrumented = self.instrumented
        statistics = branch_statistics(instrumented)
        trained = remove_instrumentation(instrumented)
        known = len(history(trained))
        model, events = self._restructure(trained, statistics)
        self.rewrites.extend(history(model)[known:])
        self.model, self._instrumented = model, None
        self.iteration += 1
        return Construction(statistics, trained, tuple(events), model)

    def fresh(self, structure: dict[str, Any]) -> fx.GraphModule:
        """A net of `structure` with fresh weights (torch's global RNG), captured like `model`."""
        model = build(structure, num_classes=self.num_classes, in_channels=self.example_input.shape[1])
        return capture(model, self.example_input)

    def _restructure(self, gm: fx.GraphModule, statistics: dict[str, dict[str, float]]):
        """Per stage: prune branches, prune skips, add a cell (Algorithm 1's inner loop)."""
        events: list[Event] = []
        for index, stage in enumerate(envelope_arch(gm)["stages"]):
            pruned = branches_to_prune(stage, statistics, self.max_prune, prune_best=self.prune_best)
            for cell, branches in pruned.items():
                gm = prune_branches(gm, cell, branches)
            if pruned:
                events.append(PrunedBranches(index, tuple(f"{c.rpartition('.')[2]}.{b}"
                                                          for c, bs in pruned.items() for b in bs)))
            if not self.prune_best:
                declared = envelope_structure(gm).stages[index].skips
                skips = skips_to_prune({(s.reduction, s.source): float(gm.get_parameter(s.weight).detach())
                                        for s in declared})
                if skips:
                    gm = prune_skips(gm, skips)
                    events.append(PrunedSkips(index, len(skips)))
            cells = len(stage["cells"])
            if self.max_cells is None or cells < self.max_cells[index]:
                gm = add_cell(gm, index, branches=self.branches, init=self.cell_init, generator=self.generator)
                events.append(AddedCell(index, f"cell{cells}"))
        return gm, events

    # ---- resume

    def state_dict(self) -> dict[str, Any]:
        """The iteration, the net's structure, the rewrites so far and the generator's state; the
        weights are the caller's to save (`nac.model.state_dict()`)."""
        return {"iteration": self.iteration, "structure": envelope_arch(self.model), "rewrites": list(self.rewrites),
                "generator": self.generator.get_state()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from `state_dict()`: `model` gets the saved structure; load its weights after."""
        self.model = self.fresh(saved["structure"])
        self.iteration, self.rewrites, self._instrumented = saved["iteration"], list(saved["rewrites"]), None
        self.generator.set_state(saved["generator"])

    def _validate(self) -> None:
        unknown = [b for b in self.branches if b not in BRANCH_TYPES]
        require(construction_checks(self.iterations, self.max_prune, self.max_cells, self.stages, self.cell_init) + [
            (not unknown and self.branches, f"branches must be among {', '.join(BRANCH_TYPES)}, got {self.branches}"),
        ])


def construction_checks(iterations: int, max_prune: int, max_cells: Sequence[int] | None, stages: int,
                        cell_init: str) -> list[tuple[bool, str]]:
    """The construction settings' checks, (holds, message if not), shared by the controller and the run's config."""
    return [
        (iterations >= 1, f"iterations must be at least 1, got {iterations}"),
        (max_prune >= 0, f"max_prune must be >= 0, got {max_prune}"),
        (max_cells is None or (len(max_cells) == stages and min(max_cells) >= 1),
         f"max_cells needs {stages} positive counts, one per stage, got {max_cells}"),
        (cell_init in CELL_INITS, f"cell_init must be one of {', '.join(CELL_INITS)}, got {cell_init!r}"),
    ]


def _branch_set(gm: fx.GraphModule) -> tuple[str, ...]:
    first = envelope_arch(gm)["stages"][0]["cells"][0]["branches"]
    return tuple(b for b in BRANCH_TYPES if b in first)
