"""Rewrite histories as artifacts: replay one onto a fresh model, save the weights together with
their history, and load a checkpoint back into the architecture its history describes.

A weights file (`graphmorph replay -o out.pt`) is `torch.save` of
`{"format": "graphmorph.weights", "version": 1, "history": <history document>, "model": state_dict}`;
a run's `checkpoint.pt` has the weights under "model" too (a finished NAC run: the trained
constructed net under "final_model", which is preferred), and its history beside it in
`rewrites.json`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

from torch import fx

from graphmorph.errors import first_line
from graphmorph.graph.history import history
from graphmorph.run.history_file import HistoryError, history_document, parse_history, read_history
from graphmorph.run.rundir import load_saved, save_atomically
from graphmorph.run.sources import ModelSource
from transforms.initializers import GROWTH_INITS
from transforms.replayer import replay, replay_architecture

__all__ = ["WEIGHTS_FORMAT", "replay_onto_fresh", "save_weights", "load_checkpoint", "load_weights",
           "saved_normalization", "has_history"]

WEIGHTS_FORMAT = "graphmorph.weights"


def replay_onto_fresh(source: ModelSource, rewrites: list[dict[str, Any]]) -> fx.GraphModule:
    """The model `source` builds (under its seed), captured, with `rewrites` applied in order:
    the recorded architecture and, before any training, the recorded parameters."""
    adam = [index for index, record in enumerate(rewrites)
            if record.get("rewrite") == "grow" and getattr(GROWTH_INITS.get(record.get("init")), "needs_data", False)]
    if adam:
        raise HistoryError(
            f"history record(s) {', '.join(map(str, adam))} grow with AdamInit, which trains each new block on data: "
            "replay them in Python with transforms.replay(model, rewrites, data=batches), or export the run's "
            "trained weights with graphmorph export --checkpoint")
    return replay(source.capture(), rewrites)


def save_weights(path: str | Path, gm: fx.GraphModule, source: ModelSource) -> Path:
    """Write `gm`'s weights with its history (on the model `source` builds) to `path`, atomically."""
    return save_atomically({"format": WEIGHTS_FORMAT, "version": 1, "history": history_document(source, history(gm)),
                            "model": gm.state_dict()}, Path(path))


def load_checkpoint(path: str | Path, history_path: str | Path | None = None,
                    allow_code: Collection[str] = ()) -> tuple[fx.GraphModule, ModelSource]:
    """The trained net a checkpoint holds: its history's architecture rebuilt (`replay_architecture`,
    no AdamInit training) and the checkpoint's weights loaded into it.

    The history comes from `history_path`, else from the checkpoint itself (a weights file or a
    run's checkpoint), else from `rewrites.json` beside it. A model factory the history names is
    imported only if it is in `allow_code`.
    """
    payload = _load(path)
    if history_path is not None:
        source, rewrites = read_history(history_path, allow_code)
    elif isinstance(payload.get("history"), dict):
        source, rewrites = parse_history(payload["history"], f"the history inside {path}", allow_code)
    elif (Path(path).parent / "rewrites.json").is_file():
        source, rewrites = read_history(Path(path).parent / "rewrites.json", allow_code)
    else:
        raise HistoryError(f"{path} has no history inside it and no rewrites.json beside it: pass --history FILE")
    gm = replay_architecture(source.capture(), rewrites)
    _load_into(gm, payload, path, f"{source.model} after its {len(rewrites)} rewrites",
               "use the history written with these weights")
    return gm, source


def load_weights(gm: fx.GraphModule, path: str | Path, what: str) -> fx.GraphModule:
    """Load the weights file at `path` (a state dict, a graphmorph weights file or a run's checkpoint)
    into `gm` (described as `what` in the error when they do not fit); returns `gm`."""
    _load_into(gm, _load(path), path, what, "pass the weights saved from that net")
    return gm


def _load_into(gm: fx.GraphModule, payload: dict[str, Any], path: str | Path, what: str, fix: str) -> None:
    weights = next((payload[key] for key in ("final_model", "model") if isinstance(payload.get(key), dict)), payload)
    try:
        gm.load_state_dict(weights)
    except RuntimeError as err:
        raise HistoryError(f"the weights in {path} do not fit {what} ({first_line(err)}); {fix}") from None


def has_history(path: str | Path) -> bool:
    """Whether the weights file at `path` carries its rewrite history (a graphmorph weights file)."""
    return isinstance(_load(path).get("history"), dict)


def saved_normalization(path: str | Path) -> dict[str, list[float]] | None:
    """The input normalisation a run's checkpoint records ({"mean", "std"} per channel), or None
    when its data was used as given (a data factory's) or the file does not record one."""
    normalization = _load(path).get("normalization")
    return normalization if isinstance(normalization, dict) and {"mean", "std"} <= set(normalization) else None


def _load(path: str | Path) -> dict[str, Any]:
    payload = load_saved(Path(path), HistoryError)
    if not isinstance(payload, dict):
        raise HistoryError(f"{path} holds a {type(payload).__name__}; expected a state dict or a graphmorph "
                           "checkpoint (a dict with \"model\")")
    return payload
