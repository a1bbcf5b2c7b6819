"""AutoGrow with default settings on digits for the paper's four families, and each found net
trained from scratch with the same schedule as fine-tuning: accuracy, Delta and search cost.

    python benchmarks/autogrow_digits.py [--families Basic3ResNet,Plain3Net,Basic4ResNet,Plain4Net]

Delta = AutoGrow's test accuracy minus the scratch-trained found net's. Search cost = growth-phase
seconds over the scratch training's seconds (the paper's Table 10 reports 0.4x to 1.0x).
Writes benchmarks/results/autogrow_digits-<device>.json; run directories go to a temporary folder.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from graphmorph.search.autogrow import AutoGrowConfig, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="Basic3ResNet,Plain3Net,Basic4ResNet,Plain4Net")
    args = parser.parse_args()
    rows = []
    print(f"{'family':<14} {'found':<24} {'AutoGrow %':>10} {'scratch %':>9} {'Delta':>6} {'search/scratch':>15}")
    with tempfile.TemporaryDirectory() as scratch_dir:
        for family in args.families.split(","):
            grown = run(AutoGrowConfig(seed_net=family), Path(scratch_dir) / f"grow-{family}", progress=lambda _: None)
            fixed = run(AutoGrowConfig(seed_net=grown["found"], grow=False), Path(scratch_dir) / f"train-{family}",
                        progress=lambda _: None)
            scratch_seconds = fixed["finetune_seconds"]
            row = {
                "family": family, "found": grown["found"], "autogrow_test_acc": grown["test_acc"],
                "scratch_test_acc": fixed["test_acc"], "delta": round(grown["test_acc"] - fixed["test_acc"], 3),
                "growth_seconds": grown["growth_seconds"], "finetune_seconds": grown["finetune_seconds"],
                "scratch_seconds": scratch_seconds,
                "search_over_scratch": round(grown["growth_seconds"] / scratch_seconds, 3),
                "macs": grown["macs"], "params": grown["params"], "epochs": grown["epochs"],
            }
            rows.append(row)
            print(f"{family:<14} {row['found']:<24} {row['autogrow_test_acc']:>10.2f} {row['scratch_test_acc']:>9.2f} "
                  f"{row['delta']:>6.2f} {row['search_over_scratch']:>15.2f}", flush=True)
    print("wrote", save("autogrow_digits", rows, {"settings": "defaults (p-AutoGrow, digits baseline 16 epochs)"}))


if __name__ == "__main__":
    main()
