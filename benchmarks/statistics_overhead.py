"""Cost of branch-statistics instrumentation: a training step with and without it (target <= 10%).

EnvelopeNet-16/2-2-2/6 on 16x16 inputs, batch 64; plain and instrumented steps interleaved,
medians compared. Run: python benchmarks/statistics_overhead.py [--repeats 15]
Writes benchmarks/results/statistics_overhead-<device>.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphmorph  # noqa: E402
from common import save, start, time_call  # noqa: E402
from transforms.statistics import instrument_branches  # noqa: E402


def main() -> None:
    args = start(__doc__, repeats=15)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    plain = graphmorph.capture(graphmorph.models.build("EnvelopeNet-16/2-2-2/6"), x)
    instrumented = instrument_branches(plain)
    timings = {"plain": [], "instrumented": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for label, model in (("plain", plain), ("instrumented", instrumented)):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            model.train()

            def step():
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()

            timings[label].append(time_call(step, warmup=1, repeats=1)["median_s"])
    medians = {k: sorted(v)[len(v) // 2] for k, v in timings.items()}
    overhead = medians["instrumented"] / medians["plain"] - 1
    print(f"train step: plain {medians['plain'] * 1e3:.1f} ms, instrumented {medians['instrumented'] * 1e3:.1f} ms, "
          f"overhead {overhead:+.1%} (target <= 10%)")
    print("wrote", save("statistics_overhead", [{"label": k, "step_s": v} for k, v in medians.items()],
                        {"overhead": round(overhead, 4), "target": 0.10}))


if __name__ == "__main__":
    main()
