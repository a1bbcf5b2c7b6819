"""Width growth on any captured model: `widen`, the dual of `prune_channels`, on the same channel groups.

`widen(gm, target, n)` gives layer `target` `n` more output channels, and so every layer coupled to
it (residual partners, concatenations, depthwise convolutions, BatchNorms, squeeze-excitation gates,
layer scales); every reader gets matching input columns. Each new channel copies an existing one
(`ChannelDependencies.widening`), then the init decides the weights:

- `"zero"`: the new channels' producing rows are drawn at random (PyTorch's default bound,
  1/sqrt(fan_in)), new BatchNorm entries pass zero through, and every reader's columns for them
  are zero. The function is preserved exactly, in eval and train mode; BatchNorm statistics of
  the old channels are untouched.
- `"split"` (Net2WiderNet, Chen et al. 2016): the new channels are copies and every reader's columns
  for a channel and its copies are divided among them. Preserved in eval and train mode (copies
  have the same batch statistics), unless dropout draws other masks for the copies.

A group is refused where new channels would change what the old ones compute: a layer, RMS or
one-group norm over them, a mean over them, attention's q·k contraction, and whatever refuses pruning
(the model's output, ops without a handler).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import fx

from graphmorph.errors import Refusal, RewriteError
from graphmorph.graph.channel_surgery import KEPT_KEY, WidthInit, apply_edit, check_edit, copies
from graphmorph.graph.channels import ChannelDependencies, channel_dependencies
from graphmorph.graph.registry import Registry, analysis_registry
from graphmorph.graph.shapes import Inputs
from graphmorph.graph.verify import FLOAT64_ATOL
from transforms.protocol import Edit, Rewrite, Step, apply, register

__all__ = ["widen", "Widen", "WIDEN_INITS", "ZeroInit", "SplitInit"]

FLOAT32_SHARE_ATOL = 1e-6   # "split" with float32 weights divided by a count that is not a power of two


def widen(gm: fx.GraphModule, target: str, n: int, init: str = "zero", *, seed: int = 0,
          example_input: torch.Tensor | Inputs | None = None, verify: bool = True,
          registry: Registry | None = None, heads: bool = False) -> fx.GraphModule:
    """A new graph where layer `target` (a module name, or a node name for F.conv2d-style layers)
    and every layer coupled to it have `n` more output channels, every reader matching inputs,
    the function preserved (`init` "zero" or "split"; see the module). Which channels the new ones
    copy, and the random rows of "zero", come from `seed`. `registry` holds the channel handlers
    of the ops (default: `Registry.default()`). With `heads`, the units of an attention projection
    are whole heads (`Registry.with_heads`): `n` heads more, each a copy of one of its heads (with
    grouped-query attention, a key/value head with its query heads)."""
    rewrite = Widen(target, n, init, seed, registry=registry, heads=heads)
    return apply(gm, rewrite, example_input=example_input, verify=verify)


@register
@dataclass(frozen=True)
class Widen(Rewrite):
    """Add `n` output channels to layer `target` and every layer coupled to it, initialised by `init`
    from `seed` (which classes are copied, and the new rows of "zero")."""

    name: ClassVar[str] = "widen"
    keeps_structure: ClassVar[bool] = True
    target: str
    n: int
    init: str = "zero"
    seed: int = 0
    heads: bool = field(default=False, kw_only=True)

    def check(self, gm: fx.GraphModule) -> Refusal | str | None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise RewriteError(f"widen takes a number of new channels n >= 1, got {self.n!r}")
        if self.init not in WIDEN_INITS:
            raise RewriteError(f"widen's init must be one of {', '.join(WIDEN_INITS)}, got {self.init!r}")
        deps = channel_dependencies(gm, analysis_registry(self.registry, self.heads))
        group = deps.group_of(self.target)
        if group.refused:
            return Refusal(f"cannot widen {self.target}: {group.refused}", group.refused.nodes)
        runs = self._runs(deps)
        if self.n % len(runs) or not all(runs):
            return Refusal(f"cannot widen {self.target} by {self.n}: a grouped convolution splits its channels "
                           f"into {len(runs)} groups that grow alike; widen by a multiple of {len(runs)}"
                           + ("" if all(runs) else ", from a layer that makes channels of every group"),
                           tuple(group.producers))
        reason = check_edit(gm, deps, deps.widening(self._copied(deps)))
        return Refusal(f"cannot widen {self.target}: {reason}", reason.nodes) if reason else None

    def edit(self, step: Step) -> Edit:
        gm, deps = step.source, channel_dependencies(step.source, analysis_registry(self.registry, self.heads))
        copied = self._copied(deps)
        index = deps.widening(copied)
        edit = apply_edit(step.work, index, deps.registry, deps.layout, _INITS[self.init](self.seed))
        step.work.meta[KEPT_KEY] = edit.kept_indices
        stochastic = any(deps.registry.has(gm, n, "stochastic") for n in gm.graph.nodes if n.name in index)
        return Edit(edit.param_delta, lambda: gm, ("eval",) if stochastic else ("eval", "train"),
                    atol=self._tolerance(gm, copied))

    def _tolerance(self, gm: fx.GraphModule, copied: list[int]) -> float:
        """Exact, except that "split" divides columns by 3, 5, ... copies where n exceeds the group's
        size: then float32 weights hold the shares rounded (relative error 2**-24 each)."""
        shares = {1 + copied.count(c) for c in set(copied)}
        exact = self.init == "zero" or all(s & (s - 1) == 0 for s in shares) \
            or all(p.dtype == torch.float64 for p in gm.parameters())
        return FLOAT64_ATOL if exact else FLOAT32_SHARE_ATOL

    def _runs(self, deps: ChannelDependencies) -> list[list[int]]:
        """The classes `target` makes, per run of its group's partition (one run unless a grouped
        convolution splits the group into runs that must grow alike): a concatenation's other
        inputs keep their widths."""
        own = set(deps.root[deps.node(self.target)])
        group = deps.group_of(self.target)
        classes = deps.group_classes(group)
        return [[classes[p] for p in run if classes[p] in own] for run in deps.partition(group)]

    def _copied(self, deps: ChannelDependencies) -> list[int]:
        """The class each new channel copies: n / G from each of the G runs, in an order drawn from
        `seed`, each class of a run once before any twice."""
        generator, runs = torch.Generator().manual_seed(self.seed), self._runs(deps)
        picked = []
        for run in runs:
            order = torch.randperm(len(run), generator=generator).tolist()
            picked += [run[order[k % len(run)]] for k in range(self.n // len(runs))]
        return picked


# --------------------------------------------------------------------------- inits


class ZeroInit:
    """New rows random (PyTorch's default bound, 1/sqrt(fan_in)), readers' columns for new channels
    zero, new BatchNorm entries that pass zero through (weight and variance 1, bias and mean 0)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def weights(self, weight: torch.Tensor, rows: list[int], columns: list) -> None:
        new_rows = copies(rows)
        if new_rows:
            bound = weight[0].numel() ** -0.5
            drawn = torch.rand((len(new_rows), *weight.shape[1:]), generator=self.generator, dtype=torch.float64)
            weight[new_rows] = ((2 * drawn - 1) * bound).to(weight.dtype)
        for row, positions in _columns_per_row(columns):
            weight[row, copies(positions)] = 0.0

    def entry(self, path: str) -> float | None:
        return 1.0 if path.endswith(("weight", "running_var")) else 0.0


class SplitInit:
    """Copies kept; readers' columns for a channel and its copies divided among them (Net2WiderNet)."""

    def weights(self, weight: torch.Tensor, rows: list[int], columns: list) -> None:
        for row, positions in _columns_per_row(columns):
            if len(set(positions)) < len(positions):
                share = torch.tensor([1.0 / positions.count(c) for c in positions], dtype=weight.dtype)
                weight[row] *= share.view(-1, *([1] * (weight.dim() - 2)))

    def entry(self, path: str) -> float | None:
        return None


def _columns_per_row(columns: list):
    """(row selector, the columns it reads): all rows at once, or one row at a time where a grouped
    convolution gives each row its own columns."""
    if columns and isinstance(columns[0], list):
        return list(enumerate(columns))
    return [(slice(None), list(columns))]


_INITS: dict[str, Callable[[int], WidthInit]] = {"zero": ZeroInit, "split": lambda seed: SplitInit()}
WIDEN_INITS = tuple(_INITS)
