"""AutoGrow in width: a stage grows by widening its channel groups (`transforms.widen`, function
preserving), the dual of adding a block.

A stage's groups are the prunable channel groups with a producer inside the stage's blocks (its
residual stream, with the stem that feeds it, and each block's inner widths). One growth adds
`share` of each group's channels (at least one), new channels zero-initialised in their readers,
so the widened net computes what it computed. A stage is capped once its output width reaches
`cap` times its width in the seed net.
"""
from __future__ import annotations

import math

import torch
from torch import fx

from graphmorph.errors import RewriteError
from graphmorph.graph.analysis import find_stages
from graphmorph.graph.channel_surgery import KEPT_KEY, compose_kept
from graphmorph.graph.channels import ChannelGroup, channel_dependencies
from transforms import widen

__all__ = ["WIDEN_SHARE", "stage_groups", "stage_widths", "widen_stage", "width_refusal", "width_label"]

WIDEN_SHARE = 0.25      # of each group's channels, per growth


def stage_widths(gm: fx.GraphModule) -> tuple[int, ...]:
    """Each stage's output channels."""
    return tuple(stage.out_shape[0] for stage in find_stages(gm))


def width_label(gm: fx.GraphModule) -> str:
    return "widths " + ",".join(map(str, stage_widths(gm)))


def stage_groups(gm: fx.GraphModule, stage: int) -> list[ChannelGroup]:
    """The prunable channel groups with a producer inside stage `stage`'s blocks."""
    blocks = find_stages(gm)[stage].block_info
    inside = {name for block in blocks for name in block.nodes}
    deps = channel_dependencies(gm)
    return [g for g in deps.groups if g.prunable and any(deps.node(p).name in inside for p in g.producers)]


def width_refusal(gm: fx.GraphModule, stage: int) -> str | None:
    """Why stage `stage` cannot widen, or None."""
    try:
        if not stage_groups(gm, stage):
            return f"stage {stage} has no channel group of its own that can widen (each reaches the output or " \
                   "is refused)"
    except RewriteError as err:
        return str(err)
    return None


def widen_stage(gm: fx.GraphModule, stage: int, generator: torch.Generator,
                share: float = WIDEN_SHARE) -> tuple[fx.GraphModule, list[str]]:
    """`gm` with every group of stage `stage` widened by `share` of its channels (at least one),
    each a verified `Widen` (zero init) drawing its seed from `generator`; the groups a rewrite
    refuses (a grouped convolution that cannot split the count) are left, with the reason."""
    refused, kept = [], {}
    for group in stage_groups(gm, stage):
        n = max(1, math.ceil(share * group.size - 1e-9))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        try:
            gm = widen(gm, group.producers[0], n, "zero", seed=seed)
        except RewriteError as err:
            refused.append(f"{group.producers[0]}: {err}")
            continue
        kept = compose_kept(kept, gm.meta.get(KEPT_KEY, {}))
    gm.meta[KEPT_KEY] = kept       # `rebuild_optimizer` carries the state through every widening at once
    return gm, refused
