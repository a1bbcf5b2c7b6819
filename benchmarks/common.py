"""Shared benchmark plumbing: timing with warm-up and repeats, machine description, JSON results."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"   # the recorded numbers the README quotes (tracked)
LOCAL = RESULTS / "local"                       # a run's numbers unless recorded (ignored by git)
RECORD = "GRAPHMORPH_RECORD"                    # =1 (benchmarks/run.py --record): write into RESULTS


def start(doc: str, repeats: int) -> argparse.Namespace:
    """Parse a benchmark's `--repeats` option (its docstring's first line as help) and seed torch."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed runs per case (default {repeats})")
    torch.manual_seed(0)
    return parser.parse_args()


def time_call(fn: Callable[[], object], warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Median, min and max wall seconds of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples)}


def fitted_exponent(sizes: list[float], seconds: list[float]) -> float:
    """Slope of log(seconds) against log(size): 1.0 is linear scaling."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def save(name: str, rows: list[dict], summary: dict) -> Path:
    """Write `results/local/<name>-<device>.json` with the machine it ran on; into `results/`, the
    recorded numbers, only when GRAPHMORPH_RECORD=1 (`benchmarks/run.py --record`)."""
    folder = RESULTS if os.environ.get(RECORD) == "1" else LOCAL
    folder.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = folder / f"{name}-{device}.json"
    payload = {
        "benchmark": name,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "summary": summary,
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def grow_and_scratch(config, folder: Path) -> dict[str, object]:
    """Run AutoGrow with `config`, then train its found net from scratch with the fine-tuning
    schedule and the same settings; the row compares the two (accuracy Delta, search cost)."""
    import dataclasses

    from graphmorph.search.autogrow import run

    name = f"{config.seed_net}-{config.data.partition(':')[0]}-{config.fraction}"
    grown = run(config, folder / f"grow-{name}", progress=lambda _: None)
    fixed = run(dataclasses.replace(config, seed_net=grown["found"], grow="none"), folder / f"scratch-{name}",
                progress=lambda _: None)
    compiles = grown["compile_seconds"]
    # with compile "always", every compile but at most one happens in the growth phase (an upper bound)
    growth_compiles = compiles if config.compile == "always" else []
    return {
        "family": config.seed_net, "data": config.data.partition(":")[0], "fraction": config.fraction,
        "K": config.K, "found": grown["found"],
        "autogrow_test_acc": grown["test_acc"], "scratch_test_acc": fixed["test_acc"],
        "delta": round(grown["test_acc"] - fixed["test_acc"], 3),
        "growth_seconds": grown["growth_seconds"], "rewrite_seconds": grown["rewrite_seconds"],
        "finetune_seconds": grown["finetune_seconds"], "scratch_seconds": fixed["finetune_seconds"],
        "search_over_scratch": round(grown["growth_seconds"] / fixed["finetune_seconds"], 3),
        "growth_epochs": grown["epochs"] - grown["finetune_epochs"], "finetune_epochs": grown["finetune_epochs"],
        "compile": config.compile, "compile_seconds": compiles,
        "compile_share_of_growth": round(sum(growth_compiles) / grown["growth_seconds"], 3) if growth_compiles else None,
        "macs": grown["macs"], "params": grown["params"],
    }
