"""Meeting a computation budget with verified pruning rewrites: how much a net costs (`MEASURES`:
MACs, parameters or measured latency),
the channel pruning that lands nearest a target cost (a bisection over how many of one
`FilterRanking`'s ranked channel classes go, log2 of their number of unverified trials), and block removal chosen by the validation accuracy it costs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx

from graphmorph.errors import RewriteError
from graphmorph.graph.analysis import find_blocks, find_stages
from graphmorph.graph.flops import count_flops
from graphmorph.graph.latency import latency_ratio, onnx_latency
from graphmorph.graph.memo import unchanged
from graphmorph.graph.verify import parameter_count
from transforms import apply, remove_block
from transforms.channel_pruning import FilterRanking

__all__ = ["Measure", "MEASURES", "Fit", "fit_channels", "removable_blocks", "cheapest_block"]

@dataclass(frozen=True)
class Measure:
    """What a budget counts: `cost(gm, example)`; `ratio(gm, base, example)`, a net's cost as a
    fraction of another's (for a noisy measure, both measured side by side); `channel_multiple`,
    what kept channel counts are rounded to a multiple of when pruning to it."""

    name: str
    noun: str
    cost: Callable[[fx.GraphModule, torch.Tensor], float]
    ratio: Callable[[fx.GraphModule, fx.GraphModule, torch.Tensor], float] | None = None
    channel_multiple: int = 1

    def __call__(self, gm: fx.GraphModule, example: torch.Tensor) -> float:
        return self.cost(gm, example)

    def fraction(self, gm: fx.GraphModule, base: fx.GraphModule, base_cost: float, example: torch.Tensor) -> float:
        """`gm`'s cost as a fraction of `base`'s (which costs `base_cost`)."""
        return self.ratio(gm, base, example) if self.ratio else self.cost(gm, example) / base_cost


# MACs for one example input; parameters; onnxruntime CPU latency of the example on one thread, kept
# channels rounded to multiples of 8 (onnxruntime's convolutions run blocked layouts of 8 channels: a
# Basic3ResNet-3-3-3 at 11, 22 and 44 channels ran 2.0x slower than unpruned, at 8, 16 and 32, 0.47x)
MEASURES: dict[str, Measure] = {measure.name: measure for measure in (
    Measure("macs", "MACs", lambda gm, example: float(count_flops(gm, example).macs)),
    Measure("params", "parameters", lambda gm, example: float(parameter_count(gm))),
    Measure("latency", "onnxruntime CPU latency", onnx_latency, latency_ratio, channel_multiple=8),
)}


@dataclass(frozen=True)
class Fit:
    """A pruned net and its cost: the nearest to the target the ranking reaches."""

    model: fx.GraphModule
    cost: float
    ratio: float          # the global share of ranked channel classes removed


def fit_channels(gm: fx.GraphModule, target: float, measure: str, example: torch.Tensor, *, criterion: str = "l2",
                 data: Any = None, verify: bool = True) -> Fit:
    """`gm` with channels pruned (lowest `criterion` importance first, one `PruneFilters` rewrite)
    so that its `measure` lands as near `target` as the ranking allows (kept channel counts
    rounded to the measure's `channel_multiple`); `gm` itself when it
    already costs no more than `target`. The search applies candidate rewrites unverified; the
    one returned is verified (pruning equals masking) when `verify`."""
    cost = MEASURES[measure]
    unpruned = cost(gm, example)
    if unpruned <= target:
        return Fit(gm, unpruned, 0.0)
    tried: dict[int, float] = {}     # classes removed -> cost
    with unchanged(gm):
        ranking = FilterRanking(gm, criterion, data)
        if not ranking.size:
            raise RewriteError("the net has no prunable channels (each channel group reaches the output or is refused)")

        def ratio(removed: int) -> float:    # the global ratio whose cutoff removes `removed` ranked classes
            return (removed + 0.5) / ranking.size

        def rewrite(removed: int):
            return ranking.rewrite(ratio(removed), multiple=cost.channel_multiple)

        def measured(removed: int) -> float:
            if removed not in tried:
                tried[removed] = cost(apply(gm, rewrite(removed), verify=False), example)
            return tried[removed]

        low, high = 0, ranking.size - 1      # cost(low) > target; the search keeps it so
        while high - low > 1:
            middle = (low + high) // 2
            if measured(middle) > target:
                low = middle
            else:
                high = middle
        measured(high)
        best = min(tried, key=lambda k: (abs(tried[k] - target), k))
        model = apply(gm, rewrite(best), example_input=example, verify=verify)
    return Fit(model, tried[best], ratio(best))


def removable_blocks(gm: fx.GraphModule) -> list[str]:
    """Blocks `remove_block` can take out: residual, identity shortcut, not their stage's only block."""
    alone = {stage.blocks[0] for stage in find_stages(gm) if len(stage.blocks) == 1}
    return [b.name for b in find_blocks(gm) if b.residual and b.shortcut == "identity" and b.name not in alone]


def cheapest_block(gm: fx.GraphModule, evaluate: Callable[[fx.GraphModule], float], floor: float, measure: str,
                   example: torch.Tensor) -> tuple[str, fx.GraphModule, float] | None:
    """The removable block whose removal keeps `evaluate` (validation accuracy) highest, among those
    that leave the net costing at least `floor`: (its name, the net without it, that accuracy);
    None when no block qualifies. Candidates are applied unverified; the chosen one is verified."""
    best = None
    for name in removable_blocks(gm):
        candidate = remove_block(gm, name, verify=False)
        if MEASURES[measure](candidate, example) < floor:
            continue
        accuracy = evaluate(candidate)
        if best is None or accuracy > best[1]:
            best = (name, accuracy)
    if best is None:
        return None
    return best[0], remove_block(gm, best[0], example_input=example), best[1]
