"""Dependency-aware channel pruning on any captured model: `prune_channels` and `prune_filters`.

Contract (checked by `graphmorph.graph.verify` after every call): the pruned graph computes exactly what
the old graph computes with the removed channels zeroed wherever they exist (the old graph with a
0/1 channel mask multiplied in after every node that carries them), in float64, in eval mode and,
unless a dropout carries removed channels (it would draw different random masks), in train mode.
Coupled channels (residual adds, concatenations, depthwise convolutions, squeeze-excitation
gates, flatten into a Linear) are found by `graphmorph.graph.channels`; groups it refuses are refused
here with the same reason.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

import torch
from torch import fx

from graphmorph.graph.channel_ops import ChannelLayout, is_channel_mean, is_channel_norm
from graphmorph.graph.channel_surgery import KEPT_KEY, apply_removal, check_removal
from graphmorph.graph.channels import ChannelDependencies, ChannelGroup, channel_dependencies
from graphmorph.graph.copying import clone
from graphmorph.graph.memo import unchanged
from graphmorph.graph.registry import Registry, analysis_registry
from graphmorph.errors import Refusal, RewriteError
from graphmorph.graph.shapes import Inputs
from transforms.criteria import criterion_named
from transforms.masked_norm import mask_statistics
from transforms.protocol import Edit, Rewrite, Step, apply, register

__all__ = ["prune_channels", "prune_filters", "FilterRanking", "mask_channels", "ROUNDINGS", "PruneChannels", "PruneFilters"]

ROUNDINGS: dict[str, Callable[[float], int]] = {   # a group's per-layer count from ratio * size
    "nearest": lambda share: int(share + 0.5),
    "up": lambda share: math.ceil(share - 1e-9),     # 0.3 * 10 is 3.0000000000000004: 3, not 4
}


def prune_channels(gm: fx.GraphModule, target: str, channels: Sequence[int], *,
                   example_input: torch.Tensor | Inputs | None = None, verify: bool = True,
                   registry: Registry | None = None, heads: bool = False) -> fx.GraphModule:
    """A new graph without output channels `channels` of layer `target` (a module name, or a node
    name for F.conv2d-style layers) and every channel coupled to them; every reader (convolutions,
    linears, BatchNorm statistics, split sizes, reshapes) is fixed to match. `registry` holds the
    channel handlers of the ops (default: `Registry.default()`); with `heads`, its
    `with_heads()` form: a channel of an attention head takes its whole head with it."""
    rewrite = PruneChannels(target, tuple(sorted(set(channels))), registry=registry, heads=heads)
    return apply(gm, rewrite, example_input=example_input, verify=verify)


def prune_heads(gm: fx.GraphModule, target: str, heads: Sequence[int], *,
                example_input: torch.Tensor | Inputs | None = None, verify: bool = True,
                registry: Registry | None = None) -> fx.GraphModule:
    """A new graph without attention heads `heads` of projection `target` (q, k or v's Linear,
    or a fused qkv one), counted in the order its output channels hold them: q, k, v and the
    output projection lose those heads together, and the head counts in the graph's views and
    expands change with them; each head keeps its size. With grouped-query attention the units
    are key/value heads: removing one removes its query heads too. Verified as pruning equals
    masking."""
    units = head_units(gm, target, registry)
    bad = [h for h in heads if not isinstance(h, int) or not 0 <= h < len(units)]
    if bad or not heads:
        raise RewriteError(f"{target} has heads 0..{len(units) - 1}; cannot remove {list(heads) or 'none'}")
    channels = [units[h][0] for h in sorted(set(heads))]
    return prune_channels(gm, target, channels, example_input=example_input, verify=verify, registry=registry,
                          heads=True)


def head_units(gm: fx.GraphModule, target: str, registry: Registry | None = None) -> list[list[int]]:
    """The output channels of each head of `target`, in the order they come (what `prune_heads`
    numbers); a layer that is not split into heads has one unit per channel."""
    deps = channel_dependencies(gm, analysis_registry(registry, True))
    node = deps.node(target)
    units: dict[int, list[int]] = {}
    for channel, root in enumerate(deps.root[node]):
        units.setdefault(root, []).append(channel)
    return list(units.values())


def prune_filters(gm: fx.GraphModule, ratio: float, criterion: str = "l2", data: Any = None,
                  per_layer: bool = False, ignore: Iterable[str] = (), *, rounding: str = "nearest",
                  multiple: int = 1, example_input: torch.Tensor | Inputs | None = None, verify: bool = True,
                  registry: Registry | None = None, heads: bool = False) -> fx.GraphModule:
    """Remove about `ratio` of the prunable channels, lowest importance first, in one verified rewrite.

    `criterion` names a registered criterion (`transforms.criteria`): "l2" (the default) and "l1"
    score a channel by the norm of the weights that produce it, "featuremap_l2" by its featuremaps'
    mean square on `data` (a batch of inputs, or an iterable of batches or (inputs, labels)
    pairs), "taylor" by |weight x gradient| of the loss on `data`'s (inputs, labels) batches,
    "bn_scale" by its BatchNorms' |gamma|, "random" at random. Globally (scores normalised by each
    group's mean) or, with `per_layer`, the count nearest `ratio` of every group (`rounding="up"`:
    ratio * size rounded up, which is Torch-Pruning's count). `multiple` rounds each group's kept
    channels to a multiple of it (8 suits onnxruntime's blocked convolutions; a group no larger is
    kept whole). Never empties a layer; never touches a group that reaches the model's output, or
    one holding a layer named in `ignore`. A grouped convolution keeps its groups even: each loses
    that count of its own channels (at 0.3, 1 of 4 rounded to the nearest, 2 rounded up).
    Groups whose removal is refused are skipped; the history record lists them with the reason.
    `registry` holds the channel handlers of the ops (default: `Registry.default()`). With
    `heads`, attention heads are the units of q, k, v and the output projection (see `prune_heads`),
    scored by the norm of all their weights; other groups are pruned as before.
    """
    with unchanged(gm):  # choosing and the rewrite's check and edit share one channel analysis
        ranking = FilterRanking(gm, criterion, data, ignore, registry=registry, heads=heads)
        rewrite = ranking.rewrite(ratio, per_layer, rounding=rounding, multiple=multiple)
        return apply(gm, rewrite, example_input=example_input, verify=verify)


class FilterRanking:
    """The channel analysis of `gm` and every prunable channel's importance under `criterion`,
    computed once, to choose removals at several ratios (a search for the ratio that meets a
    budget). `prune_filters` is `apply(gm, FilterRanking(gm, ...).rewrite(ratio))`; call
    `rewrite` while `gm` is unchanged."""

    def __init__(self, gm: fx.GraphModule, criterion: str = "l2", data: Any = None, ignore: Iterable[str] = (), *,
                 registry: Registry | None = None, heads: bool = False):
        scorer = criterion_named(criterion, data)
        self.gm, self.criterion, self.registry, self.heads = gm, criterion, registry, heads
        with unchanged(gm):
            self.deps = deps = channel_dependencies(gm, analysis_registry(registry, heads))
        ignore = set(ignore)
        self.groups = [g for g in deps.groups if g.prunable and not ignore & {*g.producers, *g.readers}]
        self.scores = scorer.score(gm, deps, self.groups, data)

    @property
    def size(self) -> int:
        """How many channel classes the ranking holds."""
        return sum(g.size for g in self.groups)

    def rewrite(self, ratio: float, per_layer: bool = False, *, rounding: str = "nearest",
                multiple: int = 1) -> "PruneFilters":
        """The `PruneFilters` rewrite removing about `ratio` of the ranked channels (see `prune_filters`)."""
        if not 0.0 <= ratio < 1.0:
            raise RewriteError(f"ratio must be in [0, 1), got {ratio}")
        if rounding not in ROUNDINGS:
            raise RewriteError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        if not (isinstance(multiple, int) and multiple >= 1):
            raise RewriteError(f"multiple must be a whole number >= 1, got {multiple!r}")
        deps, pruned, skipped = self.deps, [], []
        with unchanged(self.gm):
            for group, picked in _choose(deps, self.groups, self.scores, ratio, per_layer, ROUNDINGS[rounding],
                                          multiple):
                reason = check_removal(self.gm, deps, deps.removal(picked))
                if reason:
                    skipped.append((group.producers[0], reason))
                else:
                    pruned += _by_producer(deps, group, picked)
        return PruneFilters(ratio, self.criterion, per_layer, tuple(pruned), tuple(skipped), rounding=rounding,
                            multiple=multiple, registry=self.registry, heads=self.heads)


class _ChannelRemoval(Rewrite):
    """A removal of channel classes (`_classes`) with everything coupled to them; the contract is
    the source with those channels masked to zero. Widths change, not a declared structure."""

    keeps_structure = True

    def _classes(self, deps: ChannelDependencies) -> list[int]:
        raise NotImplementedError

    def check(self, gm: fx.GraphModule) -> str | None:
        deps = channel_dependencies(gm, analysis_registry(self.registry, self.heads))
        removal = deps.removal(self._classes(deps))
        reason = check_removal(gm, deps, removal) if removal else None
        return f"{self.name} refused: {reason}" if reason else None

    def edit(self, step: Step) -> Edit:
        gm, deps = step.source, channel_dependencies(step.source, analysis_registry(self.registry, self.heads))
        removal = deps.removal(self._classes(deps))
        cut = apply_removal(step.work, removal, deps.registry, deps.layout)
        step.work.meta[KEPT_KEY] = cut.kept_indices
        stochastic = any(deps.registry.has(gm, n, "stochastic") for n in gm.graph.nodes if n.name in removal)
        return Edit(cut.param_delta, lambda: mask_channels(gm, removal, deps.layout),
                    ("eval",) if stochastic else ("eval", "train"))


@register
@dataclass(frozen=True)
class PruneChannels(_ChannelRemoval):
    """Remove output channels `channels` of layer `target` and every channel coupled to them."""

    name: ClassVar[str] = "prune_channels"
    target: str
    channels: tuple[int, ...]
    heads: bool = field(default=False, kw_only=True)

    def check(self, gm: fx.GraphModule) -> Refusal | str | None:
        group = channel_dependencies(gm, analysis_registry(self.registry, self.heads)).group_of(self.target)
        if group.refused:
            return Refusal(f"cannot prune channels of {self.target}: {group.refused}", group.refused.nodes)
        return super().check(gm)

    def _classes(self, deps: ChannelDependencies) -> list[int]:
        return deps.classes(self.target, list(self.channels))


@register
@dataclass(frozen=True)
class PruneFilters(_ChannelRemoval):
    """Remove the channels `prune_filters` chose: `pruned` lists (producer, its output channels);
    `ratio`, `criterion`, `per_layer`, `rounding`, `multiple` and the `skipped` groups (with the reason)
    say how it chose."""

    name: ClassVar[str] = "prune_filters"
    ratio: float
    criterion: str
    per_layer: bool
    pruned: tuple[tuple[str, tuple[int, ...]], ...]
    skipped: tuple[tuple[str, str], ...]
    rounding: str = field(default="nearest", kw_only=True)
    multiple: int = field(default=1, kw_only=True)
    heads: bool = field(default=False, kw_only=True)

    def _classes(self, deps: ChannelDependencies) -> list[int]:
        return [c for target, channels in self.pruned for c in deps.classes(target, list(channels))]


def mask_channels(gm: fx.GraphModule, removal: dict[str, list[int]],
                  layout: ChannelLayout | None = None) -> fx.GraphModule:
    """The reference of the pruning contract: a copy of `gm` that multiplies a 0/1 channel mask in
    after every node carrying removed channels (`removal`: node name -> channel indices; `layout`:
    where each node's channels run, `ChannelDependencies.layout`). A norm over masked channels
    (layer, RMS or one-group norm) computes its statistics over the kept channels alone, as the
    pruned layer does, and so does a mean over the channels (ConvNeXt-V2's response norm)."""
    layout = layout or ChannelLayout()
    masked = clone(gm)
    for k, node in enumerate(list(masked.graph.nodes)):
        removed = removal.get(node.name)
        if not removed or node.op == "get_attr" or node.name in layout.parameter_dims or not node.users:
            continue
        shape = node.meta["tensor_meta"].shape
        axis = layout.axes.get(node.name, 1)
        mask = torch.ones(shape[axis], dtype=node.meta["tensor_meta"].dtype)
        mask[removed] = 0.0
        name = f"_graphmorph_mask{k}"
        masked.register_buffer(name, mask.view(*[-1 if d == axis else 1 for d in range(len(shape))]))
        with masked.graph.inserting_after(node):
            attr = masked.graph.get_attr(name)
        product = _multiplied(masked, node, attr, where=True)
        for user in list(product.users):
            if is_channel_norm(masked, user):
                mask_statistics(masked, user, attr)
            elif is_channel_mean(user, axis, len(shape)):     # the mean of the kept channels
                _multiplied(masked, user, shape[axis] / (shape[axis] - len(set(removed))))
    masked.recompile()
    return masked


def masked_by(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x` where the 0/1 `mask` (broadcast to it) is 1, zero where it is 0."""
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------- implementation


def _multiplied(gm: fx.GraphModule, node: fx.Node, factor: fx.Node | float, where: bool = False) -> fx.Node:
    """`node * factor`, inserted after both and read by all of `node`'s readers instead of it; with
    `where`, a 0/1 mask selecting `node` or zero, so that a masked channel is zero even where the
    op made it infinite (`rsqrt` of a masked variance: inf x 0 would be NaN)."""
    anchor = factor if isinstance(factor, fx.Node) else node
    with gm.graph.inserting_after(anchor):
        product = gm.graph.call_function(masked_by, (node, factor)) if where \
            else gm.graph.call_function(operator.mul, (node, factor))
    node.replace_all_uses_with(product, delete_user_cb=lambda user: user is not product)
    return product


def _by_producer(deps: ChannelDependencies, group: ChannelGroup, classes: list[int]) -> list[tuple]:
    """`classes` as (producer, its output channels) entries, each class named once: a concatenation's
    producers each make some of a group's classes, a residual add's make all of them."""
    entries, left = [], set(classes)
    for producer in group.producers:
        channels = deps.output_channels(producer, left)
        if channels:
            entries.append((producer, tuple(channels)))
            left -= set(deps.classes(producer, channels))
    return entries


def _choose(deps, groups, scores, ratio: float, per_layer: bool, count: Callable[[float], int],
            multiple: int = 1) -> list[tuple[ChannelGroup, list[int]]]:
    """Classes to remove per group: the lowest scores, at least one channel kept in every run of a
    group's partition, equal counts in every run, the group's kept channels a multiple of
    `multiple` (rounded to the nearest; a group no larger than that is kept whole)."""
    if per_layer:
        budgets = [None] * len(groups)
    else:
        ranked = sorted((s / (sum(ss) / len(ss) + 1e-12), k) for k, ss in enumerate(scores) for s in ss)
        cutoff = ranked[int(ratio * len(ranked)) - 1][0] if int(ratio * len(ranked)) else -1.0
        budgets = [sum(1 for s in ss if s / (sum(ss) / len(ss) + 1e-12) <= cutoff) for ss in scores]
    chosen = []
    for group, score, budget in zip(groups, scores, budgets):
        runs = deps.partition(group)
        size = min(len(r) for r in runs)
        per_run = count(ratio * size) if budget is None else budget // len(runs)
        per_run = min(size - 1, per_run)
        if multiple > 1:
            step = multiple // math.gcd(multiple, len(runs))     # kept per run, so kept in all is a multiple
            per_run = size - min(size, max(step, step * int((size - per_run) / step + 0.5)))
        if per_run <= 0:
            continue
        classes = deps.group_classes(group)
        picked = [classes[p] for run in runs for p in sorted(run, key=lambda p: score[p])[:per_run]]
        chosen.append((group, picked))
    return chosen
