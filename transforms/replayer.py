"""Re-apply a graph's rewrite history to a fresh model."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import torch
from torch import fx, nn

from graphmorph.graph.capture import capture
from graphmorph.graph.registry import Registry
from graphmorph.errors import RewriteError
from graphmorph.graph.shapes import Inputs
from transforms.initializers import GROWTH_INITS, Batches
from transforms.protocol import apply, rewrite_class

__all__ = ["replay", "replay_architecture"]


def replay(
    model: nn.Module,
    history: Iterable[dict[str, Any]],
    example_input: torch.Tensor | Inputs | None = None,
    data: Batches | None = None,
    registry: Registry | None = None,
) -> fx.GraphModule:
    """Apply `history` (from `graphmorph.history(gm)`) to `model`, captured first with
    `example_input` unless it is already a captured GraphModule. Each rewrite runs with its
    recorded seed, so a fresh model of the same architecture and parameters gets the same
    architecture and, before any training, the same parameters. `data` feeds AdamInit records;
    `registry` is the op registry the rewrites were applied with, when not the default.
    """
    gm = model if isinstance(model, fx.GraphModule) else capture(model, example_input)
    for index, record in enumerate(history):
        cls = rewrite_class(record, f"history record {index}")
        try:
            gm = apply(gm, dataclasses.replace(cls.from_record(record), registry=registry), data=data)
        except RewriteError as err:
            raise RewriteError(f"history record {index} ({record['rewrite']}) does not fit the model: {err}") from None
    return gm


def replay_architecture(
    model: nn.Module,
    history: Iterable[dict[str, Any]],
    example_input: torch.Tensor | Inputs | None = None,
) -> fx.GraphModule:
    """`replay` for the architecture alone, when trained weights will be loaded over it: growths
    whose init trains on data (AdamInit) apply its stand-in (GauInit) instead."""
    records = [{**r, "init": GROWTH_INITS[r["init"]].without_data()}
               if r.get("rewrite") == "grow" and r.get("init") in GROWTH_INITS else r for r in history]
    return replay(model, records, example_input)
