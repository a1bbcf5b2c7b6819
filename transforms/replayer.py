"""Re-apply a graph's rewrite history to a fresh model."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import fx, nn

from graphmorph.capture import capture
from graphmorph.errors import RewriteError
from graphmorph.shapes import Inputs
from transforms.cells import replay_add_cell
from transforms.channel_pruning import replay_prune_channels, replay_prune_filters
from transforms.growth import replay_grow
from transforms.pruning import replay_prune_branches, replay_prune_skips
from transforms.initializers import Batches
from transforms.skips import replay_prune_skip_edges, replay_remove_block

__all__ = ["replay", "replay_architecture", "REPLAYERS"]

REPLAYERS = {"grow": replay_grow, "prune_branches": replay_prune_branches, "prune_skips": replay_prune_skips,
             "add_cell": replay_add_cell, "prune_channels": replay_prune_channels,
             "prune_filters": replay_prune_filters, "prune_skip_edges": replay_prune_skip_edges,
             "remove_block": replay_remove_block}


def replay(
    model: nn.Module,
    history: Iterable[dict[str, Any]],
    example_input: torch.Tensor | Inputs | None = None,
    data: Batches | None = None,
) -> fx.GraphModule:
    """Apply `history` (from `graphmorph.history.history(gm)`) to `model`, captured first with
    `example_input` unless it is already a captured GraphModule. Each rewrite runs with its
    recorded seed, so a fresh model of the same architecture and parameters gets the same
    architecture and, before any training, the same parameters. `data` feeds AdamInit records.
    """
    gm = model if isinstance(model, fx.GraphModule) else capture(model, example_input)
    for index, record in enumerate(history):
        rewrite = REPLAYERS.get(record.get("rewrite"))
        if rewrite is None:
            raise RewriteError(
                f"history record {index} has unknown rewrite {record.get('rewrite')!r}; "
                f"known: {', '.join(REPLAYERS)}"
            )
        try:
            gm = rewrite(gm, record, data)
        except RewriteError as err:
            raise RewriteError(f"history record {index} ({record['rewrite']}) does not fit the model: {err}") from None
    return gm


def replay_architecture(
    model: nn.Module,
    history: Iterable[dict[str, Any]],
    example_input: torch.Tensor | Inputs | None = None,
) -> fx.GraphModule:
    """`replay` for the architecture alone, when trained weights will be loaded over it: AdamInit
    growths, which would train on data, draw GauInit parameters instead."""
    records = [{**r, "init": "gau"} if r.get("rewrite") == "grow" and r.get("init") == "adam" else r
               for r in history]
    return replay(model, records, example_input)
