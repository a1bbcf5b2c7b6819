"""Channel dependency analysis and one prune_filters(ratio=0.5) against graph size (50, 150, 450 blocks).

Basic3ResNets of 50, 150 and 450 residual blocks (narrow, 8x8 inputs, so the graph work
dominates). Capture of the same net is the baseline measured in the same run. Run:
    python benchmarks/channel_pruning.py [--repeats 3]
Prints a table and writes benchmarks/results/channel_pruning-<device>.json.
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
from graphmorph.graph.channels import channel_dependencies  # noqa: E402

ARCHS = ("Basic3ResNet-17-17-16", "Basic3ResNet-50-50-50", "Basic3ResNet-150-150-150")
STEPS = ("capture", "dependencies", "prune_filters", "prune_filters_verified")


def main() -> None:
    args = start(__doc__, repeats=3)
    rows = []
    print(f"{'blocks':>6} {'nodes':>6} {'groups':>6} " + " ".join(f"{s + ' s':>24}" for s in STEPS))
    for arch in ARCHS:
        model = graphmorph.models.build(arch, widths=(4, 8, 16))
        example = torch.zeros(2, 3, 8, 8)
        gm = graphmorph.capture(model, example)
        timed = {
            "capture": lambda: graphmorph.capture(model, example),
            "dependencies": lambda: channel_dependencies(gm),
            "prune_filters": lambda: transforms.prune_filters(gm, 0.5, verify=False),
            "prune_filters_verified": lambda: transforms.prune_filters(gm, 0.5),
        }
        row = {
            "arch": arch,
            "blocks": len(graphmorph.find_blocks(gm)),
            "nodes": len(gm.graph.nodes),
            "groups": len(channel_dependencies(gm).groups),
            **{step: time_call(fn, warmup=1, repeats=args.repeats) for step, fn in timed.items()},
        }
        row["dependencies_over_capture"] = round(row["dependencies"]["median_s"] / row["capture"]["median_s"], 3)
        rows.append(row)
        print(f"{row['blocks']:>6} {row['nodes']:>6} {row['groups']:>6} "
              + " ".join(f"{row[s]['median_s']:>24.3f}" for s in STEPS))
    blocks = [r["blocks"] for r in rows]
    summary = {f"{step}_exponent": round(fitted_exponent(blocks, [r[step]["median_s"] for r in rows]), 3)
               for step in STEPS}
    summary["dependencies_over_capture"] = [r["dependencies_over_capture"] for r in rows]
    print("fitted exponents (1.0 = linear):", summary)
    print("wrote", save("channel_pruning", rows, summary))


if __name__ == "__main__":
    main()
