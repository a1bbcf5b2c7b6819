"""The pictures of a NAC run: branch statistics over training steps (the paper's Figure 2),
accuracy per iteration, and the constructed net against its baselines (Figure 3)."""
from __future__ import annotations

import statistics as stats
from pathlib import Path
from typing import Any

from graphmorph.models import BRANCH_TYPES
from graphmorph.run.report import pyplot, save_figure

__all__ = ["plot_statistics", "plot_iterations", "plot_comparison"]


def plot_statistics(snapshots: list[dict[str, Any]], path: Path, title: str) -> None:
    """Per stage, each branch's running statistic (mean squared featuremap) against the global
    training step; colour is the branch type, line style the cell (so two cells' branches of one
    type stay apart), iterations are separated by light vertical bars; the legend stands beside
    the plots, never over the curves."""
    plt = pyplot()
    branches = sorted({key for row in snapshots for key in row if key not in ("iteration", "step")})
    stages = sorted({key.split(".")[0] for key in branches})
    cells = sorted({key.split(".")[1] for key in branches}, key=_cell_order)
    fig, axes = plt.subplots(len(stages), 1, figsize=(11, 2.6 * len(stages) + 0.6), sharex=True, squeeze=False)
    colours = {kind: plt.get_cmap("tab10")(i) for i, kind in enumerate(BRANCH_TYPES)}
    styles = {cell: CELL_STYLES[i % len(CELL_STYLES)] for i, cell in enumerate(cells)}
    for axis, stage in zip(axes[:, 0], stages):
        for key in (k for k in branches if k.startswith(stage + ".")):
            _, cell, kind = key.split(".")
            points = [(row["step"], row[key]) for row in snapshots if key in row]
            axis.plot(*zip(*points), color=colours[kind], linestyle=styles[cell], linewidth=1.1, alpha=0.85,
                      marker="o" if len(points) < 3 else None, markersize=3)
        for previous, row in zip(snapshots, snapshots[1:]):
            if row["iteration"] != previous["iteration"]:
                axis.axvline(previous["step"], color="black", alpha=0.15, linewidth=3)
        axis.set_ylabel(f"{stage}\nmean F^2")
    handles = [plt.Line2D([], [], color=colours[kind], label=kind) for kind in BRANCH_TYPES
               if any(k.endswith("." + kind) for k in branches)]
    handles += [plt.Line2D([], [], color="gray", linestyle=styles[cell], label=cell) for cell in cells]
    fig.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(0.83, 0.93), frameon=False,
               title="branch (colour), cell (line)", title_fontsize=7)
    axes[0, 0].set_title(title + "\nbranch statistics during truncated training (grey bars: next iteration)",
                         fontsize=9)
    axes[-1, 0].set_xlabel("training step")
    save_figure(fig, path, right=0.82)


CELL_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))


def _cell_order(cell: str) -> tuple[int, str]:
    digits = "".join(ch for ch in cell if ch.isdigit())
    return (int(digits) if digits else 0, cell)


def plot_iterations(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Validation and test accuracy after each iteration's truncated training, and parameters."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(7, 4.5))
    iterations = [row["iteration"] for row in rows]
    axis.plot(iterations, [row["val_acc"] for row in rows], "o-", label="validation")
    axis.plot(iterations, [row["test_acc"] for row in rows], "s-", label="test", alpha=0.7)
    axis.set_xlabel("iteration")
    axis.set_ylabel("accuracy after truncated training (%)")
    axis.set_xticks(iterations)
    params = axis.twinx()
    params.bar(iterations, [row["params"] for row in rows], alpha=0.15, color="gray", label="parameters after")
    params.set_ylabel("parameters after the iteration's rewrites")
    axis.set_zorder(params.get_zorder() + 1)
    axis.patch.set_visible(False)
    axis.legend(loc="lower right")
    axis.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_comparison(trained: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy against parameters for every trained net; random nets with their mean +- std."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(7, 4.5))
    markers = {"constructed": ("*", "tab:red", 200), "base": ("s", "tab:blue", 70), "worst": ("v", "tab:gray", 70),
               "random": ("o", "tab:green", 30)}
    for group, (marker, colour, size) in markers.items():
        nets = [n for n in trained if n["group"] == group]
        if not nets:
            continue
        axis.scatter([n["params"] for n in nets], [n["test_acc"] for n in nets], marker=marker, color=colour,
                     s=size, label=f"{group} ({len(nets)})", alpha=0.8 if group == "random" else 1.0)
        if len(nets) > 1:
            accuracy = [n["test_acc"] for n in nets]
            axis.errorbar(stats.fmean(n["params"] for n in nets), stats.fmean(accuracy), yerr=stats.stdev(accuracy),
                          fmt="_", color=colour, capsize=6, markersize=20)
    axis.set_xlabel("parameters")
    axis.set_ylabel("test accuracy (%)")
    axis.legend(fontsize=8)
    axis.set_title(title + "\nall trained from scratch the same way", fontsize=9)
    save_figure(fig, path)
