"""The architecture history of a GraphModule: every rewrite applied to it since capture, as data
that can be replayed (`transforms.replay`). `graphmorph.run.history_file` ships it as a document."""
from __future__ import annotations

from typing import Any

from torch import fx

HISTORY_KEY = "graphmorph.history"

__all__ = ["HISTORY_KEY", "history", "record_rewrite"]


def history(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """The rewrites applied to `gm` since capture, oldest first (a copy)."""
    return [dict(record) for record in gm.meta.get(HISTORY_KEY, [])]


def record_rewrite(gm: fx.GraphModule, record: dict[str, Any]) -> None:
    """Append one rewrite's record to `gm`'s history (gm is the rewrite's own new graph)."""
    gm.meta[HISTORY_KEY] = [*gm.meta.get(HISTORY_KEY, []), dict(record)]
