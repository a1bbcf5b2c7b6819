"""Cost of one rewrite against graph size: grow and prune_channels, alone and verified.

Basic3ResNet-n-n-n for 9 to 999 blocks (narrow, 8x8 inputs, so the graph work dominates).
`grow` adds a zero-init block to the middle stage; `prune_channels` removes one channel of a
middle-stage block's first conv. Verification compares outputs in float64 in eval and train
mode (function preservation for grow, prune == mask for pruning). Capture of the same net is
the baseline measured in the same run. Run:
    python benchmarks/rewrite.py [--repeats 3]
Prints a table and the fitted exponents, and writes benchmarks/results/rewrite-<device>.json.
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

DEPTHS = (3, 10, 33, 100, 333)
STEPS = ("capture", "grow", "grow_verified", "prune_channels", "prune_channels_verified")


def middle_conv(gm) -> str:
    """The first conv of the middle block of the middle stage."""
    stage = graphmorph.find_stages(gm)[1]
    block = stage.block_info[len(stage.block_info) // 2]
    nodes = {node.name: node for node in gm.graph.nodes}
    return next(nodes[name].target for name in block.nodes if nodes[name].op == "call_module"
                and isinstance(gm.get_submodule(nodes[name].target), torch.nn.Conv2d))


def main() -> None:
    args = start(__doc__, repeats=3)
    rows = []
    print(f"{'blocks':>6} {'nodes':>6} " + " ".join(f"{s + ' s':>26}" for s in STEPS))
    for depth in DEPTHS:
        model = graphmorph.models.build(f"Basic3ResNet-{depth}-{depth}-{depth}", widths=(4, 4, 4))
        example = torch.zeros(2, 3, 8, 8)
        gm = graphmorph.capture(model, example)
        conv = middle_conv(gm)
        timed = {
            "capture": lambda: graphmorph.capture(model, example),
            "grow": lambda: transforms.grow(gm, stage=1, init="zero", verify=False),
            "grow_verified": lambda: transforms.grow(gm, stage=1, init="zero", verify=True),
            "prune_channels": lambda: transforms.prune_channels(gm, conv, [0], verify=False),
            "prune_channels_verified": lambda: transforms.prune_channels(gm, conv, [0], verify=True),
        }
        row = {"blocks": 3 * depth, "nodes": len(gm.graph.nodes), "pruned": conv,
               **{step: time_call(fn, repeats=args.repeats) for step, fn in timed.items()}}
        rows.append(row)
        print(f"{row['blocks']:>6} {row['nodes']:>6} " + " ".join(f"{row[s]['median_s']:>26.3f}" for s in STEPS),
              flush=True)
    blocks = [r["blocks"] for r in rows]
    summary = {f"{step}_exponent": round(fitted_exponent(blocks, [r[step]["median_s"] for r in rows]), 3)
               for step in STEPS}
    summary["at_999_blocks_over_capture"] = {step: round(rows[-1][step]["median_s"] / rows[-1]["capture"]["median_s"], 2)
                                            for step in STEPS[1:]}
    print("fitted exponents over 9..999 blocks (1.0 = linear):", summary)
    print("wrote", save("rewrite", rows, summary))


if __name__ == "__main__":
    main()
