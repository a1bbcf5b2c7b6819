"""AutoGrow in depth, width and both: the found net, its test accuracy, MACs, parameters and the
run's time, on the embedded digits and a Fashion-MNIST subset, same settings otherwise.

    python benchmarks/grow_dimensions.py --data-root ../shared/data [--fraction 0.05] [--seeds 0]

Each run is `graphmorph autogrow` (p-AutoGrow, Basic3ResNet-1-1-1, gau init for new blocks, zero
init for new channels) with `--grow depth|width|both`; the J and fine-tuning epochs are those the
data's size gives, unless capped. Writes results/grow_dimensions-<device>.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from graphmorph.graph.flops import si  # noqa: E402
from graphmorph.search.autogrow import AutoGrowConfig, run  # noqa: E402

DIMENSIONS = ("depth", "width", "both")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder holding fashion-mnist/ (IDX files)")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of Fashion-MNIST's training data")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each run once per seed")
    parser.add_argument("--max-growth-epochs", type=int, default=None, help="cap on each growth phase")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="fine-tuning epochs (default: the data's)")
    args = parser.parse_args()
    datasets = {"digits": ("digits", 1.0), "fashion-mnist": (f"fashion-mnist:{Path(args.data_root) / 'fashion-mnist'}",
                                                             args.fraction)}
    rows = []
    print(f"{'data':<14} {'grow':<6} {'seed':>4} {'found':<44} {'test %':>7} {'MACs':>8} {'params':>8} {'time s':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for name, (spec, fraction) in datasets.items():
            for seed in (int(s) for s in args.seeds.split(",")):
                for dimension in DIMENSIONS:
                    config = AutoGrowConfig(data=spec, fraction=fraction, grow=dimension, seed=seed, test_every=0,
                                            max_growth_epochs=args.max_growth_epochs,
                                            finetune_epochs=args.finetune_epochs)
                    result = run(config, Path(folder) / f"{name}-{dimension}-{seed}", progress=lambda _: None)
                    seconds = result["growth_seconds"] + result["finetune_seconds"]
                    row = {"data": name, "fraction": fraction, "grow": dimension, "seed": seed,
                           "found": result["found"], "test_acc": result["test_acc"], "macs": result["macs"],
                           "params": result["params"], "epochs": result["epochs"], "J": result["J"],
                           "finetune_epochs": result["finetune_epochs"], "seconds": round(seconds, 1)}
                    rows.append(row)
                    print(f"{name:<14} {dimension:<6} {seed:>4} {row['found']:<44} {row['test_acc']:>7.2f} "
                          f"{si(row['macs']):>8} {si(row['params']):>8} {seconds:>7.1f}", flush=True)
    summary = {f"{name}/{dimension}": {
        "test_acc_mean": round(statistics.fmean(r["test_acc"] for r in rows
                                                if r["data"] == name and r["grow"] == dimension), 3),
        "macs_mean": statistics.fmean(r["macs"] for r in rows if r["data"] == name and r["grow"] == dimension)}
        for name in datasets for dimension in DIMENSIONS}
    summary["budget"] = {"fashion_fraction": args.fraction, "max_growth_epochs": args.max_growth_epochs,
                         "finetune_epochs": args.finetune_epochs, "seeds": args.seeds}
    print("wrote", save("grow_dimensions", rows, summary))


if __name__ == "__main__":
    main()
