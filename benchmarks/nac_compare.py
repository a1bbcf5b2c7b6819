"""NAC against its baselines (the paper's Figure 3): constructed net vs base EnvelopeNet vs random
nets vs the worst case, all trained from scratch the same way, and construction time over the
time of training the constructed net once.

    python benchmarks/nac_compare.py [--data digits] [--base EnvelopeNet-16/2-2-2/6] [--n 10]
                                     [--fraction 1.0] [--steps 150] [--epochs 15] [--retrain]
                                     [--baselines random,worst]

Writes benchmarks/results/nac_compare-<data>-<device>.json; the run directory goes to a temporary
folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from graphmorph.search.nac import NACConfig, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--base", default=NACConfig.base)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=NACConfig.steps)
    parser.add_argument("--epochs", type=int, default=NACConfig.epochs)
    parser.add_argument("--retrain", action="store_true", help="reset weights every iteration")
    parser.add_argument("--baselines", default="random,worst",
                        help="comma-separated baselines to train, or 'none' (to time the construction only)")
    args = parser.parse_args()
    config = NACConfig(base=args.base, data=args.data, fraction=args.fraction, steps=args.steps, epochs=args.epochs,
                       keep_weights=not args.retrain, n_random=args.n,
                        baselines=tuple(b for b in args.baselines.split(",") if b not in ("", "none")))
    with tempfile.TemporaryDirectory() as scratch:
        result = run(config, Path(scratch) / "nac", progress=lambda line: print(line, flush=True))
    summary = {key: result.get(key) for key in ("base", "found", "test_acc", "params", "macs", "construction_seconds",
                                                "train_seconds", "construction_to_training", "comparison")}
    name = (f"nac_compare-{args.data.partition(':')[0]}" + ("-retrain" if args.retrain else "")
            + ("" if config.baselines else "-construction"))
    print("wrote", save(name, [summary], {"config": dataclasses.asdict(config)}))


if __name__ == "__main__":
    main()
