"""AutoGrow in one process against N processes under torchrun (gloo on the CPU, NCCL on GPUs), on
the same machine, with the same global batch and a fixed growth budget (tau 0: growth ends on the
budget, so every run finds the same net and the times compare like for like).

    python benchmarks/distributed.py [--nproc 2] [--repeats 3] [--batch-size 128] [--data digits]

On a CPU the single process gets all cores as threads and each of N processes cores/N threads.
Runs alternate (one, N, one, N, ...); the table gives median wall seconds of the whole command
(start-up included) and of the training epochs. Writes results/distributed-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def one_run(nproc: int, arguments: list[str], run_dir: Path) -> dict[str, float | str]:
    threads = max(1, (os.cpu_count() or 1) // nproc)
    launcher = [sys.executable, "-m", "graphmorph"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "graphmorph"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    subprocess.run([*launcher, *arguments, "--run-dir", str(run_dir)], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    result = json.loads((run_dir / "result.json").read_text())
    return {"wall_s": wall, "train_s": result["growth_seconds"] + result["finetune_seconds"],
            "found": result["found"], "test_acc": result["test_acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data", default="digits")
    args = parser.parse_args()
    arguments = ["autogrow", "--data", args.data, "--seed-net", "Basic3ResNet", "--K", "1", "--tau", "0",
                 "--max-growth-epochs", "6", "--finetune-epochs", "6", "--batch-size", str(args.batch_size)]
    samples: dict[int, list[dict]] = {1: [], args.nproc: []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for nproc in samples:
                samples[nproc].append(one_run(nproc, arguments, Path(folder) / f"run-{nproc}-{repeat}"))
    rows = []
    for nproc, runs in samples.items():
        rows.append({"processes": nproc, "found": runs[0]["found"],
                     "test_acc": [r["test_acc"] for r in runs],
                     "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 3),
                     "train_s_median": round(statistics.median(r["train_s"] for r in runs), 3)})
    base = rows[0]
    print(f"{'processes':>9} {'found':<22} {'wall s':>8} {'train s':>8} {'train vs 1':>10}  test %")
    for row in rows:
        row["train_vs_one_process"] = round(row["train_s_median"] / base["train_s_median"], 3)
        print(f"{row['processes']:>9} {row['found']:<22} {row['wall_s_median']:>8.1f} {row['train_s_median']:>8.1f} "
              f"{row['train_vs_one_process']:>10.2f}  {', '.join(f'{a:.1f}' for a in row['test_acc'])}")
    summary = {"settings": " ".join(arguments), "repeats": args.repeats,
               "train_vs_one_process": rows[1]["train_vs_one_process"]}
    print("wrote", save("distributed", rows, summary))


if __name__ == "__main__":
    main()
