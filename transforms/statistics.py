"""Featuremap statistics for NAC (EnvelopeNets section 2): instrument a graph, train, read, remove.

`instrument_branches(gm)` inserts a pass-through `BranchStatistic` after every branch output of
every EnvelopeCell (the inputs of the cell's concatenation). In train mode each one accumulates
the branch's squared L2 norm normalised by the featuremap size, mean(F**2) per sample, averaged
over all samples seen. `branch_statistics` reads them; `remove_instrumentation` deletes the nodes
and modules again and gives back the original graph exactly (same code, same state).
"""
from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from graphmorph.errors import ArchError, RewriteError
from graphmorph.graph import ops
from graphmorph.graph.copying import clone
from graphmorph.models.envelope import EnvelopeStructure, cell_concat, envelope_structure

__all__ = ["BranchStatistic", "instrument_branches", "branch_statistics", "reset_statistics",
           "remove_instrumentation", "STATISTICS_ROOT"]

STATISTICS_ROOT = "graphmorph_statistics"


class BranchStatistic(nn.Module):
    """Identity that, in train mode, adds mean(x**2) per sample to a running float64 sum."""

    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.zeros((), dtype=torch.float64))
        self.register_buffer("samples", torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.total += x.detach().float().pow(2).flatten(1).mean(1).sum().double()
                self.samples += x.shape[0]
        return x

    def value(self) -> float:
        return float(self.total / self.samples) if self.samples > 0 else float("nan")


def instrument_branches(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm` with a `BranchStatistic` after each EnvelopeCell branch, named
    `graphmorph_statistics.<cell>.<branch>` with dots as underscores."""
    work = clone(gm)
    holder = nn.Module()
    work.add_submodule(STATISTICS_ROOT, holder)
    for cell in _structure(work).cells:
        concat = cell_concat(work, cell.name)
        probes = []
        for output in concat.args[0]:
            name = f"{cell.name}.{cell.branch_of(output)}".replace(".", "_")
            holder.add_module(name, BranchStatistic().to(ops.device_of(work)))
            with work.graph.inserting_before(concat):
                probe = work.graph.call_module(f"{STATISTICS_ROOT}.{name}", (output,))
            probe.meta = {k: v for k, v in output.meta.items() if k in ("tensor_meta", "type")}
            probes.append(probe)
        concat.args = (probes, *concat.args[1:])
    work.recompile()
    return work


def branch_statistics(gm: fx.GraphModule) -> dict[str, dict[str, float]]:
    """{cell: {branch: statistic}} from an instrumented graph (NaN before any training step)."""
    stats: dict[str, dict[str, float]] = {}
    cells = {cell.name: cell for cell in _structure(gm).cells}
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith(STATISTICS_ROOT + "."):
            cell = cells[ops.module_path(next(iter(node.users)))]  # the probe feeds its cell's concatenation
            stats.setdefault(cell.name, {})[cell.branch_of(node.args[0])] = gm.get_submodule(node.target).value()
    return stats


def _structure(gm: fx.GraphModule) -> EnvelopeStructure:
    try:
        return envelope_structure(gm)
    except ArchError as err:
        raise RewriteError(f"branch statistics are for EnvelopeNets: {err}") from None


def reset_statistics(gm: fx.GraphModule) -> None:
    """Zero every accumulator (start a new averaging window)."""
    for module in gm.modules():
        if isinstance(module, BranchStatistic):
            module.total.zero_()
            module.samples.zero_()


def remove_instrumentation(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm` without the statistics nodes and modules: the graph it was made from."""
    work = clone(gm)
    for node in list(work.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(STATISTICS_ROOT + "."):
            node.replace_all_uses_with(node.args[0])
            work.graph.erase_node(node)
    work.delete_submodule(STATISTICS_ROOT)
    work.recompile()
    return work
