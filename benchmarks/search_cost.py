"""AutoGrow's search cost: growth-phase wall time over the time to train the found net from
scratch with the fine-tuning schedule (the paper's Table 10: 0.4x to 1.0x; target <= 1.0),
with the Delta in test accuracy and the share of the growth phase spent in rewrites.

    python benchmarks/search_cost.py [--families Basic3ResNet,Plain3Net,Basic4ResNet,Plain4Net]
                                     [--data digits] [--compile finetune|always] [--K 3] [--J N]

With `--compile always` the trainer runs torch.compile, re-applied after every growth; the row
then gives the seconds of the first step after each (re)compile and their share of the growth
phase. `--compile finetune` compiles the found net only, for fine-tuning (and the scratch run).
Inductor's caches start empty (a fresh cache folder per run), as in a user's first run on a
machine; within the run the scratch training reuses what the growth phase compiled.
Writes results/search_cost[-compile-MODE][-K..]-<device>.json; run directories go to a
temporary folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import grow_and_scratch, save  # noqa: E402
from graphmorph.search.autogrow import AutoGrowConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="Basic3ResNet,Plain3Net,Basic4ResNet,Plain4Net")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--compile", default="off", choices=("off", "finetune", "always"),
                        help="torch.compile: off, the found net only (finetune), or after each growth (always)")
    parser.add_argument("--K", type=int, default=3, help="growth period in epochs (default 3, the paper's)")
    parser.add_argument("--J", type=int, default=None, help="stopping window (default: half the baseline)")
    args = parser.parse_args()
    rows = []
    print(f"{'family':<14} {'found':<24} {'AutoGrow %':>10} {'scratch %':>9} {'Delta':>6} {'search/scratch':>15} "
          f"{'rewrite share':>13} {'compile share':>13}")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder) / "inductor")  # cold compiles, as on a new machine
        for family in args.families.split(","):
            config = AutoGrowConfig(seed_net=family, data=args.data, compile=args.compile, K=args.K, J=args.J)
            row = grow_and_scratch(config, Path(folder))
            row["rewrite_share_of_growth"] = round(row["rewrite_seconds"] / row["growth_seconds"], 3)
            rows.append(row)
            compile_share = "-" if row["compile_share_of_growth"] is None else f"{row['compile_share_of_growth']:.1%}"
            print(f"{family:<14} {row['found']:<24} {row['autogrow_test_acc']:>10.2f} {row['scratch_test_acc']:>9.2f} "
                  f"{row['delta']:>6.2f} {row['search_over_scratch']:>15.2f} "
                  f"{row['rewrite_share_of_growth']:>13.1%} {compile_share:>13}", flush=True)
    schedule = "" if (args.K, args.J) == (3, None) else f"-K{args.K}" + (f"-J{args.J}" if args.J else "")
    summary = {"settings": f"p-AutoGrow on {args.data}, K={args.K}, J={args.J or 'default'}",
               "target": "search_over_scratch <= 1.0",
               "search_over_scratch": {r["family"]: r["search_over_scratch"] for r in rows}}
    print("wrote", save("search_cost" + (f"-compile-{args.compile}" if args.compile != "off" else "") + schedule, rows, summary))


if __name__ == "__main__":
    main()
