"""What a run leaves behind (result.json, model.onnx, FLOPs, growth.png) and reports across runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import fx

from graphmorph.graph.copying import deep_copy
from graphmorph.errors import GraphmorphError


class ReportError(GraphmorphError, ValueError):
    """A path given to `graphmorph report` that is not a run directory, or an output it would overwrite."""
from graphmorph.graph.export import export_onnx
from graphmorph.graph.flops import count_flops, si
from graphmorph.graph.history import history
from graphmorph.run.events import DepthCapped, Grew, Stopped, read_events
from graphmorph.run.history_file import history_document
from graphmorph.run.rundir import RunDirectory
from graphmorph.run.sources import ModelSource

__all__ = ["ReportError", "finish_run", "save_result", "onnx_metadata", "INPUT_NAMES", "OUTPUT_NAMES", "write_rewrites", "plot_growth", "read_results", "results_table", "pareto_front", "plot_tradeoff", "pyplot", "save_figure"]


def finish_run(directory: RunDirectory, gm: fx.GraphModule, source: ModelSource,
               rows: list[dict[str, Any]], result: dict[str, Any],
               normalization: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """`save_result`, and growth.png; returns the result."""
    result = save_result(directory, gm, source, result, normalization=normalization)
    plot_growth(rows, directory.path / "growth.png", f"{result['seed_arch']} -> {result['found']} on {result['data']}")
    return result


def save_result(directory: RunDirectory, gm: fx.GraphModule, source: ModelSource, result: dict[str, Any],
                rewrites: list[dict[str, Any]] | None = None,
                normalization: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Count FLOPs, export the net to a parity-checked model.onnx (input "images", output "logits",
    the input normalisation in its metadata), write rewrites.json (the versioned history of
    `rewrites`, default `gm`'s, on the model `source` builds) and result.json with the counts and
    the normalisation added; returns that result."""
    model = deep_copy(gm).cpu().float().to(memory_format=torch.contiguous_format)
    example = source.example_input()
    flops = count_flops(model, example)
    onnx = export_onnx(model, directory.path / "model.onnx", example, input_names=INPUT_NAMES,
                       output_names=OUTPUT_NAMES, metadata=onnx_metadata(result["found"], normalization))
    result = {**result, "macs": flops.macs, "flops": flops.flops, "params": flops.params,
              "onnx_max_abs_diff": onnx.max_abs_diff, "normalization": normalization}
    write_rewrites(directory, source, history(gm) if rewrites is None else rewrites)
    directory.write_json("result.json", result)
    return result


INPUT_NAMES, OUTPUT_NAMES = ("images",), ("logits",)


def onnx_metadata(architecture: str, normalization: dict[str, list[float]] | None) -> dict[str, str]:
    """model.onnx's metadata: the architecture and what the input must be (normalised or as given)."""
    if normalization is None:
        expects = "images as the data factory gave them (graphmorph did not normalise them)"
    else:
        expects = ("images normalised per channel, (x - mean) / std, from pixels in [0, 1]; "
                   "graphmorph export --checkpoint CHECKPOINT --normalize puts this into the graph")
    metadata = {"graphmorph.architecture": architecture, "graphmorph.input": expects}
    if normalization is not None:
        metadata |= {"graphmorph.input_mean": json.dumps(normalization["mean"]),
                     "graphmorph.input_std": json.dumps(normalization["std"])}
    return metadata


def write_rewrites(directory: RunDirectory, source: ModelSource, rewrites: list[dict[str, Any]]) -> None:
    """rewrites.json: the versioned history document (`graphmorph.run.history_file`)."""
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
        kinds = {type(e) for e in read_events(r)}
        if Grew in kinds:
            acc.axvline(r["epoch"], color="tab:orange", alpha=0.25, linewidth=1)
        if kinds & {Stopped, DepthCapped}:
            acc.axvline(r["epoch"], color="tab:red", linestyle="--", linewidth=1)
    finetune = [r["epoch"] for r in rows if r["phase"] == "finetune"]
    if finetune:
        for axis in (acc, depth):
            axis.axvspan(min(finetune) - 1, max(finetune), color="tab:purple", alpha=0.08)
    acc.set_ylabel("accuracy (%)")
    acc.set_title(title + "\n(orange: growth, red dashed: stage stopped, shaded: fine-tuning)", fontsize=9)
    acc.legend(loc="lower right")
    depth.step(epochs, [_blocks(r["arch"]) for r in rows], where="post")
    depth.set_ylabel("blocks")
    depth.set_xlabel("epoch")
    save_figure(fig, path)


def _blocks(arch: str) -> int:
    """Blocks (cells, for an EnvelopeNet) in all stages: Family-n1-n2-... or EnvelopeNet-C/n1-n2-.../M."""
    depths = arch.split("/")[1] if arch.startswith("EnvelopeNet-") else arch.partition("-")[2]
    return sum(int(d) for d in depths.split(" ")[0].split("-") if d.isdigit())


REPORT_KEYS = ("kind", "data", "found", "test_acc", "macs", "params")


def read_results(paths: list[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """result.json of each run directory, and a reason for each run left out: one still running or
    interrupted (no result.json yet), a path that is no directory, or a result.json that is not a
    graphmorph result."""
    results, skipped = [], []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            skipped.append(f"{path}: {'a file, not a run directory' if path.exists() else 'no such directory'}")
            continue
        file = path / "result.json"
        if not file.is_file():
            skipped.append(f"{path}: no result.json yet (the run is unfinished: resume it to finish)"
                           if (path / "config.json").is_file() else f"{path}: not a graphmorph run directory")
            continue
        try:
            result = json.loads(file.read_text())
        except ValueError as err:
            skipped.append(f"{file}: not valid JSON ({err})")
            continue
        missing = [key for key in REPORT_KEYS if not isinstance(result, dict) or key not in result]
        if missing:
            skipped.append(f"{file}: not a graphmorph result (lacks {', '.join(missing)})")
            continue
        results.append({"run": str(path), **result})
    return results, skipped


def pareto_front(results: list[dict[str, Any]], cost: str = "macs") -> set[int]:
    """Indices of the results no other result on the same data beats: none as accurate or more at a
    lower `cost` ("macs", or "latency_ms" among the results that measured it), or more accurate at
    as low a one."""
    measured = [r for r in results if r.get(cost) is not None]
    front = set()
    for k, r in enumerate(results):
        beaten = any(o["data"] == r["data"] and o[cost] <= r[cost] and o["test_acc"] >= r["test_acc"]
                     and (o[cost] < r[cost] or o["test_acc"] > r["test_acc"]) for o in measured)
        if r.get(cost) is not None and not beaten:
            front.add(k)
    return front


def results_table(results: list[dict[str, Any]]) -> str:
    """One row per result: its full name, kind, data, net, test accuracy, MACs, parameters, the
    measured latency where any result has one, time, and a star on the Pareto front (`pareto_front`)."""
    width = max([len("run"), *(len(r["run"]) for r in results)])
    found = max([len("found net"), *(len(str(r["found"])) for r in results)])
    data = max([len("data"), *(len(str(r["data"])) for r in results)])
    kind = max([len("kind"), *(len(r["kind"]) for r in results)])
    latency = any(r.get("latency_ms") is not None for r in results)
    header = (f"{'run':<{width}} {'kind':<{kind}} {'data':<{data}} {'found net':<{found}} {'test %':>7} {'MACs':>9} "
              f"{'params':>8}{' latency ms' if latency else ''} {'time s':>8}  front")
    lines = [header, "-" * len(header)]
    front = pareto_front(results)
    for k, r in enumerate(results):
        seconds = (r.get("growth_seconds") or 0) + (r.get("finetune_seconds") or 0) + (r.get("prune_seconds") or 0)
        measured = f" {r['latency_ms']:>10.4f}" if r.get("latency_ms") is not None else " " * 11
        lines.append(f"{r['run']:<{width}} {r['kind']:<{kind}} {r['data']:<{data}} {r['found']:<{found}} "
                     f"{r['test_acc']:>7.2f} {si(r['macs']):>9} {si(r['params']):>8}{measured if latency else ''} "
                     f"{seconds:>8.1f}  {'*' if k in front else ''}")
    return "\n".join(lines)


COSTS = {"macs": ("MACs per image", "log"), "latency_ms": ("onnxruntime CPU latency per image (ms, one thread)",
                                                          "linear")}


def plot_tradeoff(results: list[dict[str, Any]], path: Path, kinds: dict[str, Any], title: str | None = None) -> None:
    """Test accuracy vs MACs per result (the trade-off of the paper's Figures 3 and 4), one marker
    per kind (`kinds`: kind -> its `label` and `marker`), the Pareto front of each data set joined
    by a line and its points ringed; beside it, accuracy vs latency for the results that measured it."""
    plt = pyplot()
    costs = [c for c in COSTS if any(r.get(c) is not None for r in results)]
    fig, axes = plt.subplots(1, len(costs), figsize=(9 * len(costs), 5), squeeze=False)
    for axis, cost in zip(axes[0], costs):
        _tradeoff_axis(axis, [r for r in results if r.get(cost) is not None], kinds, cost)
    fig.suptitle(title or "accuracy vs computation (ringed: the Pareto front)", fontsize=9)
    save_figure(fig, path)


def _tradeoff_axis(axis, results: list[dict[str, Any]], kinds: dict[str, Any], cost: str) -> None:
    for kind, shown in kinds.items():
        runs = [r for r in results if r["kind"] == kind]
        if runs:
            axis.scatter([r[cost] for r in runs], [r["test_acc"] for r in runs], marker=shown.marker,
                         label=shown.label, zorder=3)
    front = [results[k] for k in sorted(pareto_front(results, cost))]
    for data in sorted({r["data"] for r in front}):
        points = sorted((r[cost], r["test_acc"]) for r in front if r["data"] == data)
        axis.plot(*zip(*points), color="tab:red", alpha=0.5, linewidth=1, drawstyle="steps-post", zorder=2,
                  label="Pareto front" if data == min(r["data"] for r in front) else None)
        axis.scatter(*zip(*points), s=120, facecolors="none", edgecolors="tab:red", zorder=4)
    for r in results:
        axis.annotate(f"{r['found']} ({r['data']})", (r[cost], r["test_acc"]), fontsize=7, xytext=(4, 4),
                      textcoords="offset points", wrap=True)
    label, scale = COSTS[cost]
    axis.set_xscale(scale)
    axis.margins(x=0.35, y=0.12)  # room for the labels right of the last point
    axis.set_xlabel(label)
    axis.set_ylabel("test accuracy (%)")
    axis.legend(loc="best", fontsize=8)


def save_figure(fig, path: Path, right: float = 1.0) -> None:
    """Lay out (the axes within the left `right` share of the width: the rest for a figure
    legend), write as PNG, and free the figure."""
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.savefig(path, dpi=110)
    fig.clf()
    pyplot().close(fig)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
