"""Cost of one `grow` against graph size: the rewrite alone, and rewrite + verification.

Basic3ResNet-n-n-n for n in 1, 10, 100, 300 (3 to 900 blocks), zero init at the middle stage (so
verification also compares outputs in float64 in eval and train mode). Run:
    python benchmarks/grow.py [--repeats 3]
Prints a table and writes benchmarks/results/grow-<device>.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphmorph  # noqa: E402
import transforms  # noqa: E402
from common import fitted_exponent, save, start, time_call  # noqa: E402

DEPTHS = (1, 10, 100, 300)


def main() -> None:
    args = start(__doc__, repeats=3)
    rows = []
    print(f"{'blocks':>6} {'nodes':>6} {'grow s':>9} {'grow+verify s':>14} {'verify share':>13}")
    for depth in DEPTHS:
        model = graphmorph.models.build(f"Basic3ResNet-{depth}-{depth}-{depth}", widths=(2, 2, 2))
        gm = graphmorph.capture(model, torch.zeros(1, 3, 8, 8))
        rewrite = time_call(lambda: transforms.grow(gm, stage=1, init="zero", verify=False), repeats=args.repeats)
        checked = time_call(lambda: transforms.grow(gm, stage=1, init="zero", verify=True), repeats=args.repeats)
        row = {"blocks": 3 * depth, "nodes": len(gm.graph.nodes), "grow": rewrite, "grow_and_verify": checked}
        rows.append(row)
        share = 1 - rewrite["median_s"] / checked["median_s"]
        print(f"{row['blocks']:>6} {row['nodes']:>6} {rewrite['median_s']:>9.3f} "
              f"{checked['median_s']:>14.3f} {share:>12.0%}")
    blocks = [r["blocks"] for r in rows]
    summary = {
        "grow_exponent": round(fitted_exponent(blocks, [r["grow"]["median_s"] for r in rows]), 3),
        "grow_and_verify_exponent": round(fitted_exponent(blocks, [r["grow_and_verify"]["median_s"] for r in rows]), 3),
    }
    print("fitted exponents over 3..900 blocks (1.0 = linear):", summary)
    print("wrote", save("grow", rows, summary))


if __name__ == "__main__":
    main()
