"""What a run leaves behind (result.json, model.onnx, FLOPs, growth.png) and reports across runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import fx

from graphmorph.copying import deep_copy
from graphmorph.errors import GraphmorphError
from graphmorph.export import export_onnx
from graphmorph.flops import count_flops, si
from graphmorph.history import history, history_document
from graphmorph.rundir import RunDirectory
from graphmorph.sources import ModelSource

__all__ = ["finish_run", "save_result", "write_rewrites", "plot_growth", "read_results", "results_table", "plot_tradeoff", "pyplot", "save_figure"]


def finish_run(directory: RunDirectory, gm: fx.GraphModule, source: ModelSource,
               rows: list[dict[str, Any]], result: dict[str, Any]) -> dict[str, Any]:
    """`save_result`, and growth.png; returns the result."""
    result = save_result(directory, gm, source, result)
    plot_growth(rows, directory.path / "growth.png", f"{result['seed_arch']} -> {result['found']} on {result['data']}")
    return result


def save_result(directory: RunDirectory, gm: fx.GraphModule, source: ModelSource, result: dict[str, Any],
                rewrites: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Count FLOPs, export the net to a parity-checked model.onnx, write rewrites.json (the
    versioned history of `rewrites`, default `gm`'s, on the model `source` builds) and result.json
    with the counts added; returns that result."""
    model = deep_copy(gm).cpu().float().to(memory_format=torch.contiguous_format)
    example = source.example_input()
    flops = count_flops(model, example)
    onnx = export_onnx(model, directory.path / "model.onnx", example)
    result = {**result, "macs": flops.macs, "flops": flops.flops, "params": flops.params,
              "onnx_max_abs_diff": onnx.max_abs_diff}
    write_rewrites(directory, source, history(gm) if rewrites is None else rewrites)
    directory.write_json("result.json", result)
    return result


def write_rewrites(directory: RunDirectory, source: ModelSource, rewrites: list[dict[str, Any]]) -> None:
    """rewrites.json: the versioned history document (`graphmorph.history`)."""
    directory.write_json("rewrites.json", history_document(source, rewrites))


def plot_growth(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy vs epoch with growth and stop events marked, and depth vs epoch (paper Figure 2 style)."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (acc, depth) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    acc.plot(epochs, [r["val_acc"] for r in rows], label="validation", color="tab:blue")
    scored = [r for r in rows if r["test_acc"] is not None]  # the test set may be scored every few epochs
    acc.plot([r["epoch"] for r in scored], [r["test_acc"] for r in scored], label="test", color="tab:green",
             alpha=0.7, marker="." if len(scored) < len(rows) else None)
    acc.plot(epochs, [r["train_acc"] for r in rows], label="train", color="tab:gray", alpha=0.5)
    for r in rows:
        if "grew" in r["event"]:
            acc.axvline(r["epoch"], color="tab:orange", alpha=0.25, linewidth=1)
        if "stopped" in r["event"] or "cap" in r["event"]:
            acc.axvline(r["epoch"], color="tab:red", linestyle="--", linewidth=1)
    finetune = [r["epoch"] for r in rows if r["phase"] == "finetune"]
    if finetune:
        for axis in (acc, depth):
            axis.axvspan(min(finetune) - 1, max(finetune), color="tab:purple", alpha=0.08)
    acc.set_ylabel("accuracy (%)")
    acc.set_title(title + "\n(orange: growth, red dashed: stage stopped, shaded: fine-tuning)", fontsize=9)
    acc.legend(loc="lower right")
    depth.step(epochs, [sum(int(d) for d in r["arch"].split("-")[1:]) for r in rows], where="post")
    depth.set_ylabel("blocks")
    depth.set_xlabel("epoch")
    save_figure(fig, path)


def read_results(paths: list[str | Path]) -> list[dict[str, Any]]:
    """result.json of each run directory; a clear error for a path without one."""
    results = []
    for path in paths:
        file = Path(path) / "result.json"
        if not file.is_file():
            raise GraphmorphError(f"{path} has no result.json: is it a finished graphmorph run directory?")
        results.append({"run": str(path), **json.loads(file.read_text())})
    return results


def results_table(results: list[dict[str, Any]]) -> str:
    header = f"{'run':<28} {'kind':<8} {'found net':<26} {'test %':>7} {'MACs':>9} {'params':>8} {'time s':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        seconds = r.get("growth_seconds", 0) + r.get("finetune_seconds", 0)
        lines.append(f"{Path(r['run']).name[:28]:<28} {r['kind']:<8} {r['found']:<26} {r['test_acc']:>7.2f} "
                     f"{si(r['macs']):>9} {si(r['params']):>8} {seconds:>8.1f}")
    return "\n".join(lines)


def plot_tradeoff(results: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy vs MACs per run (the trade-off of the paper's Figures 3 and 4)."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(7, 5))
    for r in results:
        marker = "o" if r["kind"] == "autogrow" else "s"
        axis.scatter(r["macs"], r["test_acc"], marker=marker)
        axis.annotate(r["found"], (r["macs"], r["test_acc"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("MACs per image")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title("accuracy vs computation (o: AutoGrow, s: trained from scratch)", fontsize=9)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Lay out, write as PNG, and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    pyplot().close(fig)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
