"""Save a captured (and rewritten) graph as a `torch.export` program: a `.pt2` file that loads and
runs with PyTorch alone, without graphmorph or the model's own package installed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from graphmorph.errors import ExportError, first_line
from graphmorph.graph.capture import example_inputs
from graphmorph.graph.lifting import export_program
from graphmorph.graph.quiet import quiet_torch_export
from graphmorph.graph.shapes import Inputs, as_inputs, evaluating
from graphmorph.graph.verify import verification_inputs

__all__ = ["ProgramReport", "save_program"]


@dataclass(frozen=True)
class ProgramReport:
    """Where the program was saved and how closely the reloaded program matched the graph."""

    path: Path
    max_abs_diff: float


def save_program(gm: fx.GraphModule, path: str | Path, example_input: torch.Tensor | Inputs | None = None,
                 atol: float = 1e-5) -> ProgramReport:
    """Export `gm` in eval mode with `torch.export` (free batch size, and free sequence length for
    integer inputs), save it to `path` (`.pt2`), load it back and check it computes what `gm`
    computes on seeded random inputs. A transformers `ModelOutput` is saved as a plain dict of its
    tensors, so loading needs no package but PyTorch: `torch.export.load(path).module()(x)`.
    Raises ExportError with the cause when export fails or the reloaded program differs by more
    than `atol`; the file is then removed."""
    path = Path(path)
    inputs = as_inputs(example_input) if example_input is not None else example_inputs(gm)
    model = _PlainOutputs(gm)
    with evaluating(gm), quiet_torch_export():
        try:
            torch.export.save(export_program(model, inputs, {}), str(path))
            loaded = torch.export.load(str(path)).module()
        except Exception as err:
            path.unlink(missing_ok=True)
            raise ExportError(f"torch.export cannot export this graph: {type(err).__name__}: {first_line(err)}") \
                from err
        check = verification_inputs(gm) if example_input is None else inputs
        expected, found = _leaves(model(*check)), _leaves(loaded(*check))
    diff = max((float((a - b).abs().max()) for a, b in zip(expected, found) if a.numel()), default=0.0)
    if len(expected) != len(found) or not diff <= atol:
        path.unlink(missing_ok=True)
        raise ExportError(f"the reloaded program differs from the graph by {diff:.3g} (atol {atol:g}); "
                          f"the file was not kept")
    return ProgramReport(path, diff)


class _PlainOutputs(nn.Module):
    """`gm` with its output's mappings (a ModelOutput) as plain dicts: the saved program's output
    structure then needs no package to load."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, *args):
        return _plain(self.gm(*args))


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value) if type(value) in (tuple, list) else tuple(map(_plain, value))
    return value


def _leaves(output) -> list[torch.Tensor]:
    return [t.detach().double() for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
