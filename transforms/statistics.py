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

from graphmorph.graph import ops
from graphmorph.graph.copying import clone

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
    for concat in [n for n in work.graph.nodes if ops.is_cat(n) and ".cell" in ops.module_path(n)]:
        cell = ops.module_path(concat)
        outputs = list(concat.args[0])
        probes = []
        for output in outputs:
            branch = ops.module_path(output)[len(cell) + 1:].split(".")[0]
            name = f"{cell}.{branch}".replace(".", "_")
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
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith(STATISTICS_ROOT + "."):
            source = node.args[0]
            path = ops.module_path(source)
            concat = next(iter(node.users))
            cell = ops.module_path(concat)
            branch = path[len(cell) + 1:].split(".")[0]
            stats.setdefault(cell, {})[branch] = gm.get_submodule(node.target).value()
    return stats


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
