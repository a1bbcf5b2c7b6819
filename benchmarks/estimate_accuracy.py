"""How close the estimate an AutoGrow run prints before training came to the time it took.

Reads finished run directories (`graphmorph autogrow --run-dir DIR ...`), the estimate saved in
their result and the seconds their growth and fine-tuning took, and the epochs the estimate assumed
against those the run needed:

    python benchmarks/estimate_accuracy.py runs/mnist-5pct runs/mnist-full-capped

Results: results/estimate_accuracy-<device>.json (run on the machine that ran the runs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import save  # noqa: E402
from graphmorph.search.budget import GROWTH_WINDOWS  # noqa: E402


def row(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    result = json.loads((run / "result.json").read_text())
    resolved = config["resolved"]
    actual = result["growth_seconds"] + result["finetune_seconds"]
    assumed = GROWTH_WINDOWS * resolved["J"]
    if config.get("max_growth_epochs"):
        assumed = min(assumed, config["max_growth_epochs"])
    return {"run": run.name, "data": config["data"].partition(":")[0], "fraction": config["fraction"],
            "n_train": resolved["n_train"], "J": resolved["J"], "finetune_epochs": resolved["finetune_epochs"],
            "growth_epochs_assumed": assumed, "growth_epochs": result["epochs"] - resolved["finetune_epochs"],
            "found": result["found"], "estimated_seconds": result["estimated_seconds"],
            "seconds": round(actual, 1), "estimate_over_actual": round(result["estimated_seconds"] / actual, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished AutoGrow run directories")
    rows = [row(run) for run in parser.parse_args().runs]
    for r in rows:
        print(f"{r['run']}: {r['n_train']} images, J={r['J']}, growth {r['growth_epochs']} epochs "
              f"(assumed {r['growth_epochs_assumed']}), estimate {r['estimated_seconds']:.0f} s, took "
              f"{r['seconds']:.0f} s ({r['estimate_over_actual']:.2f}x)")
    print(save("estimate_accuracy", rows, {"estimate_over_actual": [r["estimate_over_actual"] for r in rows]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
