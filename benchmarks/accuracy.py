"""The reproduction table: AutoGrow's found net, test accuracy and Delta against training the
found net from scratch, for Plain3Net and Basic3ResNet on MNIST and Fashion-MNIST, next to the
paper's Table 6; and the dataset-size study (Plain3Net on MNIST with 100/75/50/25% of the data,
K divided by the share so the mini-batches between growths stay the same; paper Table 11:
smaller data should give shallower nets).

    python benchmarks/accuracy.py --data-root ../shared/data [--fraction 0.02] [--finetune-epochs 8]
                                  [--J 4] [--K 2] [--parts table6,table11]

The paper trains on the full data with a 200-epoch schedule; `--fraction` and the epoch options
scale the budget down (the defaults are the CPU profile), and the JSON records the budget next
to every row. Writes results/accuracy-<device>.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import grow_and_scratch, save  # noqa: E402
from graphmorph.models import parse_arch  # noqa: E402
from graphmorph.search.autogrow import AutoGrowConfig  # noqa: E402

# Paper Table 6 (found net, accuracy %, Delta) and Table 11 (Plain3Net on MNIST).
TABLE6 = {
    ("Basic3ResNet", "mnist"): ("33-33-33", 99.64, -0.03),
    ("Basic3ResNet", "fashion-mnist"): ("30-29-29", 94.57, -0.06),
    ("Plain3Net", "mnist"): ("20-20-20", 99.66, 0.12),
    ("Plain3Net", "fashion-mnist"): ("17-17-17", 94.49, 0.56),
}
TABLE11 = {1.0: ("20-20-20", 99.66), 0.75: ("12-12-12", 99.54), 0.5: ("12-11-11", 99.46), 0.25: ("10-9-9", 99.33)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder holding mnist/ and fashion-mnist/ (IDX files)")
    parser.add_argument("--fraction", type=float, default=0.02, help="share of the training data (1.0 = paper)")
    parser.add_argument("--finetune-epochs", type=int, default=8, help="scratch and fine-tuning epochs (paper 200)")
    parser.add_argument("--J", type=int, default=4, help="stopping window, epochs (paper 100)")
    parser.add_argument("--K", type=int, default=2, help="growth period at the full fraction, epochs (paper 3)")
    parser.add_argument("--parts", default="table6,table11")
    args = parser.parse_args()
    root = Path(args.data_root)
    budget = {"fraction": args.fraction, "finetune_epochs": args.finetune_epochs, "J": args.J, "K": args.K}

    def config(family: str, data: str, share: float = 1.0) -> AutoGrowConfig:
        return AutoGrowConfig(seed_net=family, data=f"{data}:{root / data}", fraction=args.fraction * share,
                              K=max(1, round(args.K / share)), J=args.J, finetune_epochs=args.finetune_epochs,
                              test_every=0)  # the 10,000 test images only for the final nets

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if "table6" in args.parts:
            print(f"{'net':<13} {'data':<14} {'found':<22} {'acc %':>6} {'Delta':>6}  | paper: found, acc %, Delta")
            for (family, data), (paper_found, paper_acc, paper_delta) in TABLE6.items():
                row = {"part": "table6", **grow_and_scratch(config(family, data), Path(folder) / "table6"),
                       "paper": {"found": paper_found, "test_acc": paper_acc, "delta": paper_delta}}
                rows.append(row)
                print(f"{family:<13} {data:<14} {row['found']:<22} {row['autogrow_test_acc']:>6.2f} "
                      f"{row['delta']:>6.2f}  | {paper_found}, {paper_acc}, {paper_delta}", flush=True)
        if "table11" in args.parts:
            print(f"{'share':>5} {'found':<22} {'blocks':>6} {'acc %':>6}  | paper: found, acc %")
            for share, (paper_found, paper_acc) in TABLE11.items():
                row = {"part": "table11", "share": share,
                       **grow_and_scratch(config("Plain3Net", "mnist", share), Path(folder) / "table11"),
                       "paper": {"found": paper_found, "test_acc": paper_acc}}
                rows.append(row)
                print(f"{share:>5.0%} {row['found']:<22} {sum(parse_arch(row['found'])[1]):>6} {row['autogrow_test_acc']:>6.2f}  "
                      f"| {paper_found}, {paper_acc}", flush=True)
    sizes = [(r["share"], sum(parse_arch(r["found"])[1])) for r in rows if r["part"] == "table11"]
    summary = {"budget": budget,
               "table11_blocks_by_share": dict(sizes),
               "table11_shallower_with_less_data": all(a[1] >= b[1] for a, b in zip(sizes, sizes[1:])) if sizes else None}
    print("wrote", save("accuracy", rows, summary))


if __name__ == "__main__":
    main()
