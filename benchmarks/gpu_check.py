"""The GPU measurements in one prepared script, under 8 minutes on one GPU: the trainer's fast path
against a plain fp32 eager loop, AutoGrow's growth phase against training the found net,
onnxruntime's CUDA provider (parity, latency) against PyTorch, and a `graphmorph prune` run.

    python benchmarks/gpu_check.py                 # on a machine with CUDA: records results/*-cuda.json
    python benchmarks/gpu_check.py --smoke         # any machine: every part with tiny settings, nothing recorded

Each part runs as its own process under a time limit (a hung part cannot eat the others' time)
with GRAPHMORPH_RECORD=1, so the benchmarks it calls write their `results/<name>-cuda.json`; this
script writes `results/gpu_check-<device>.json` with each part's status, seconds and last lines.
Without CUDA it refuses unless `--smoke` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def parts(smoke: bool, folder: Path) -> dict[str, tuple[list[str], int]]:
    """Each part: its command and its time limit in seconds (the full limits add up to 7.5 minutes)."""
    bench = lambda name: [PYTHON, str(ROOT / "benchmarks" / f"{name}.py")]  # noqa: E731
    if smoke:
        return {
            "train_throughput": (bench("train_throughput") + ["--nets", "Basic3ResNet-1-1-1", "--steps", "1",
                                                             "--repeats", "1"], 600),
            "search_cost": (bench("search_cost") + ["--families", "Basic3ResNet", "--K", "1", "--J", "1"], 600),
            "export": (bench("export") + ["--nets", "Basic3ResNet-1-1-1", "--repeats", "2"], 600),
            "prune": ([PYTHON, "-m", "graphmorph", "prune", "--seed-net", "Basic3ResNet-1-1-1", "--fraction", "0.2",
                       "--train-epochs", "1", "--finetune-epochs", "1", "--macs", "0.5", "--run-dir",
                       str(folder / "prune")], 600),
        }
    return {
        "train_throughput": (bench("train_throughput") + ["--repeats", "3"], 150),
        "search_cost": (bench("search_cost") + ["--families", "Basic3ResNet,Plain3Net"], 120),
        "export": (bench("export") + ["--repeats", "20"], 90),
        "prune": ([PYTHON, "-m", "graphmorph", "prune", "--device", "cuda", "--run-dir", str(folder / "prune")], 90),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings on any device; records nothing")
    parser.add_argument("--only", default=None, help="comma-separated parts (default: all)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA device here; run it on a GPU machine, or pass --smoke to try every part on this "
              "one", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRAPHMORPH_RECORD": "0" if args.smoke else "1"}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (command, limit) in parts(args.smoke, Path(folder)).items():
            if args.only and name not in args.only.split(","):
                continue
            began = time.perf_counter()
            try:
                done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
                status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
                output = done.stdout + done.stderr
            except subprocess.TimeoutExpired as err:
                status, output = f"timed out after {limit} s", (err.stdout or b"").decode(errors="replace")
            seconds = round(time.perf_counter() - began, 1)
            rows.append({"part": name, "status": status, "seconds": seconds,
                         "last_lines": output.strip().splitlines()[-12:]})
            print(f"{name:<17} {status:<24} {seconds:>7.1f} s", flush=True)
    summary = {"all_ok": all(r["status"] == "ok" for r in rows), "seconds": round(sum(r["seconds"] for r in rows), 1),
               "smoke": args.smoke}
    if args.smoke:
        print(json.dumps(summary))
    else:
        print("wrote", save("gpu_check", rows, summary))
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
