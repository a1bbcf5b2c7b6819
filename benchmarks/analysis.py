"""Cost of capture, find_stages and count_flops against graph size (10 to 1000 blocks).

Every rewrite re-analyses the graph, so this must stay near-linear. Run:
    python benchmarks/analysis.py [--repeats 5]
Prints a table and writes benchmarks/results/analysis-<device>.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphmorph  # noqa: E402
from common import fitted_exponent, save, start, time_call  # noqa: E402

DEPTHS = (3, 10, 33, 100, 333)   # blocks per stage of Basic3ResNet: 9 to 999 blocks


def main() -> None:
    args = start(__doc__, repeats=5)
    rows = []
    print(f"{'blocks':>6} {'nodes':>6} {'capture s':>10} {'find_stages s':>14} {'count_flops s':>14}")
    for depth in DEPTHS:
        model = graphmorph.models.build(f"Basic3ResNet-{depth}-{depth}-{depth}", widths=(2, 2, 2))
        example = torch.zeros(1, 3, 8, 8)
        gm = graphmorph.capture(model, example)
        row = {
            "blocks": 3 * depth,
            "nodes": len(gm.graph.nodes),
            "capture": time_call(lambda: graphmorph.capture(model, example), repeats=args.repeats),
            "find_stages": time_call(lambda: graphmorph.find_stages(gm), repeats=args.repeats),
            "count_flops": time_call(lambda: graphmorph.count_flops(gm), repeats=args.repeats),
        }
        rows.append(row)
        print(f"{row['blocks']:>6} {row['nodes']:>6} {row['capture']['median_s']:>10.4f} "
              f"{row['find_stages']['median_s']:>14.4f} {row['count_flops']['median_s']:>14.4f}")
    blocks = [r["blocks"] for r in rows]
    summary = {
        f"{step}_exponent": round(fitted_exponent(blocks, [r[step]["median_s"] for r in rows]), 3)
        for step in ("capture", "find_stages", "count_flops")
    }
    print("fitted exponents (1.0 = linear):", summary)
    print("wrote", save("analysis", rows, summary))


if __name__ == "__main__":
    main()
