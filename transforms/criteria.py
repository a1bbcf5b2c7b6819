"""Pruning criteria: how `prune_filters` ranks channels, registered by name.

A criterion is a callable `(gm, deps, groups, data) -> scores`: for each channel group (a
`ChannelGroup` of `deps`, a `ChannelDependencies`), one importance per class of the group, in the
order `deps.group_classes(group)` lists them; lower is pruned first. `data` is what the caller
passed to `prune_filters` (calibration batches, or None). Built in:

- `l1`, `l2`: the L1 norm / L2 norm of every weight a channel's removal deletes: the rows of the
  layers that produce it and the columns of the layers that read it (magnitude);
- `featuremap_l2`: the root mean square of each channel's featuremaps on `data` (NAC's statistic);
- `taylor`: first-order Taylor expansion of the loss, |sum of weight x gradient| over the same
  weights, the gradients of the cross-entropy on `data`'s (inputs, labels) batches;
- `bn_scale`: network slimming's |gamma| of the BatchNorms on each channel (groups without a
  BatchNorm fall back to `l2`);
- `random`: uniform scores from torch's global RNG, the baseline every criterion must beat.

Register your own with `@register_criterion("name")` (`needs_data=True` when it reads `data`).

Why the readers' columns count: scored by its producers' rows alone, a channel whose incoming
weights are small goes first even where the layers reading it weigh it heavily, and a globally
ranked cut can take one layer down to a bottleneck. On MobileNetV2 (MNIST subset, 1/3 of the MACs, the same
fine-tuning) rows alone reached 78.7% (l1) and 59.7% (taylor), rows and columns 84.6% and 83.6%
(`benchmarks/prune_compare.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphmorph.errors import RewriteError
from graphmorph.graph import ops
from graphmorph.graph.channel_ops import output_weight
from graphmorph.graph.channels import ChannelDependencies, ChannelGroup
from graphmorph.graph.shapes import as_inputs, evaluating

__all__ = ["Criterion", "CRITERIA", "register_criterion", "criterion_named"]

Scores = list[list[float]]
ScoreFunction = Callable[[fx.GraphModule, ChannelDependencies, list[ChannelGroup], Any], Scores]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its name, its score function, and whether it needs calibration data."""

    name: str
    score: ScoreFunction
    needs_data: bool = False
    needs_labels: bool = False


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, needs_data: bool = False,
                       needs_labels: bool = False) -> Callable[[ScoreFunction], ScoreFunction]:
    """Decorator: register `function(gm, deps, groups, data) -> scores` as criterion `name`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a criterion needs a non-empty name, got {name!r}")

    def add(function: ScoreFunction) -> ScoreFunction:
        CRITERIA[name] = Criterion(name, function, needs_data or needs_labels, needs_labels)
        return function
    return add


def criterion_named(name: str, data: Any) -> Criterion:
    """The criterion registered as `name`, checked against the data given; RewriteError naming
    the choices or what is missing."""
    if name not in CRITERIA:
        raise RewriteError(f"criterion must be one of {', '.join(CRITERIA)}, got {name!r} "
                           "(register your own with transforms.register_criterion)")
    found = CRITERIA[name]
    if found.needs_data and data is None:
        what = "(inputs, labels) batches" if found.needs_labels else "calibration batches"
        raise RewriteError(f"criterion {name!r} needs {what}: pass data=...")
    return found


# --------------------------------------------------------------------------- the built-in criteria


@register_criterion("l2")
def weight_l2(gm, deps, groups, data) -> Scores:
    return _over_removed_weights(gm, deps, groups, lambda node, weight: weight.detach().double().pow(2), math.sqrt)


@register_criterion("l1")
def weight_l1(gm, deps, groups, data) -> Scores:
    return _over_removed_weights(gm, deps, groups, lambda node, weight: weight.detach().double().abs())


@register_criterion("featuremap_l2", needs_data=True)
def featuremap_l2(gm, deps, groups, data) -> Scores:
    squares = _featuremap_squares(gm, deps, groups, data)
    return _over_producers(deps, groups, lambda node: squares[node.name], math.sqrt)


@register_criterion("taylor", needs_labels=True)
def taylor(gm, deps, groups, data) -> Scores:
    layers = {node.name: node for group in groups for node, _, _ in _removed_weights(deps, group)}
    weights = {name: _leaf_weight(gm, node) for name, node in layers.items()}
    for name, weight in weights.items():
        if weight is None:
            raise RewriteError(f"criterion 'taylor' needs the weight of {name} as a parameter")
    gradients = _loss_gradients(gm, list(weights.values()), data)

    def products(node, weight):       # weight x gradient, laid out as `weight` (output channels first)
        stored = weights[node.name]
        product = (stored.detach() * gradients[stored]).double()
        return product.transpose(0, 1) if _transposed(gm, node) else product
    return _over_removed_weights(gm, deps, groups, products, abs)


@register_criterion("bn_scale")
def bn_scale(gm, deps, groups, data) -> Scores:
    norms = [node for node in gm.graph.nodes if node.op == "call_module" and node in deps.root
             and isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm)
             and gm.get_submodule(node.target).weight is not None]
    fallback = weight_l2(gm, deps, groups, data)
    scores = []
    for group, l2 in zip(groups, fallback):
        position = {root: k for k, root in enumerate(deps.group_classes(group))}
        total, seen = [0.0] * group.size, False
        for node in norms:
            gamma = gm.get_submodule(node.target).weight.detach().abs().tolist()
            for channel, root in enumerate(deps.root[node]):
                if root in position:
                    total[position[root]] += gamma[channel]
                    seen = True
        scores.append(total if seen else l2)
    return scores


@register_criterion("random")
def random_scores(gm, deps, groups, data) -> Scores:
    return [torch.rand(group.size, dtype=torch.float64).tolist() for group in groups]


# --------------------------------------------------------------------------- helpers


def _over_producers(deps: ChannelDependencies, groups: list[ChannelGroup],
                    per_node: Callable[[fx.Node], Any], finish: Callable[[float], float] = float) -> Scores:
    """Per group, per class: `per_node(producer)`'s value for each output channel, summed over the
    group's producers, then `finish`ed (square root for the L2 criteria)."""
    scores = []
    for group in groups:
        total = [0.0] * group.size
        for producer, positions in deps.members(group):
            values = per_node(producer)
            values = values.tolist() if isinstance(values, torch.Tensor) else values
            for position, value in zip(positions, values):
                total[position] += value
        scores.append([finish(v) for v in total])
    return scores


def _over_removed_weights(gm: fx.GraphModule, deps: ChannelDependencies, groups: list[ChannelGroup],
                          per_weight: Callable[[fx.Node, torch.Tensor], torch.Tensor],
                          finish: Callable[[float], float] = float) -> Scores:
    """Per group, per class: `per_weight(layer, weight)` (the weight with its output channels
    first; a tensor of its shape) summed over every entry the class's removal deletes, the rows of
    its producers and the columns of its readers, then `finish`ed."""
    scores = []
    for group in groups:
        total = [0.0] * group.size
        for node, axis, positions in _removed_weights(deps, group):
            values = per_weight(node, output_weight(gm, node)).transpose(0, axis)
            for position, value in zip(positions, values.reshape(values.shape[0], -1).sum(1).tolist()):
                if position is not None:
                    total[position] += value
        scores.append([finish(v) for v in total])
    return scores


def _removed_weights(deps: ChannelDependencies, group: ChannelGroup) -> list[tuple[fx.Node, int, list[int | None]]]:
    """The conv and linear layers that lose weights with the group's classes: (layer, the axis of
    its output-channels-first weight that runs over the group, each index's class position). A
    producer loses rows (axis 0); a reader loses columns (axis 1; None where an input channel is
    another group's). A reader whose input channels do not run one per weight column (a grouped
    convolution) is left out: where it matters it is a producer of the group too."""
    position = {root: k for k, root in enumerate(deps.group_classes(group))}
    found = [(producer, 0, positions) for producer, positions in deps.members(group)
             if output_weight(deps.gm, producer) is not None]
    for name in group.readers:
        node = deps.node(name)
        weight = output_weight(deps.gm, node)
        source = node.args[0] if node.args else None
        roots = deps.root.get(source) if isinstance(source, fx.Node) else None
        if weight is None or roots is None or weight.dim() < 2 or weight.shape[1] != len(roots):
            continue
        found.append((node, 1, [position.get(root) for root in roots]))
    return found


def _transposed(gm: fx.GraphModule, node: fx.Node) -> bool:
    return ops.stores_weight_transposed(ops.module_of(gm, node))


def _leaf_weight(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The weight parameter itself (as stored), for gradients."""
    if _transposed(gm, node):
        return ops.module_of(gm, node).weight
    weight = output_weight(gm, node)
    return weight if isinstance(weight, nn.Parameter) else None


def _batches(data: Any) -> list:
    return [data] if isinstance(data, torch.Tensor) else list(data)


def _device(gm: fx.GraphModule) -> torch.device:
    return next((p.device for p in gm.parameters()), torch.device("cpu"))


def _loss_gradients(gm: fx.GraphModule, weights: list[torch.Tensor], data: Any) -> dict[torch.Tensor, torch.Tensor]:
    """The gradients of the summed cross-entropy over `data`'s (inputs, labels) batches with
    respect to `weights` (eval mode; no `.grad` is touched)."""
    total = [torch.zeros_like(w) for w in weights]
    device, count = _device(gm), 0
    with evaluating(gm), torch.enable_grad():
        for batch in _batches(data):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise RewriteError("criterion 'taylor' needs (inputs, labels) batches to compute the loss")
            inputs, labels = batch
            logits = gm(*[t.to(device) for t in as_inputs(inputs)])
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise RewriteError("criterion 'taylor' needs a model whose output is a batch of logits [N, classes]")
            if len(labels) != len(logits):
                raise RewriteError(f"criterion 'taylor': a batch of {len(logits)} inputs came with {len(labels)} labels")
            loss = F.cross_entropy(logits, labels.to(device).long())
            for accumulated, grad in zip(total, torch.autograd.grad(loss, weights, allow_unused=True)):
                if grad is not None:
                    accumulated += grad.detach()
            count += 1
    if not count:
        raise RewriteError("data for 'taylor' held no batches")
    return dict(zip(weights, total))


def _featuremap_squares(gm, deps, groups, data) -> dict[str, list[float]]:
    """Mean over `data` of each producer's per-channel mean square featuremap (eval mode)."""
    wanted = {p.name for g in groups for p, _ in deps.members(g)}
    sums: dict[str, torch.Tensor] = {}
    count = 0

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if node.name in wanted:
                axis = deps.layout.axes.get(node.name, 1)
                dims = [d for d in range(value.dim()) if d != axis]
                square = value.detach().double().pow(2).mean(dims)
                sums[node.name] = sums.get(node.name, 0) + square
            return value

    device = _device(gm)
    with evaluating(gm):
        for batch in _batches(data):
            inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
            Recorder(gm).run(*[t.to(device) for t in as_inputs(inputs)])
            count += 1
    if not count:
        raise RewriteError("data for 'featuremap_l2' held no batches")
    return {name: (total / count).tolist() for name, total in sums.items()}
