"""Run the benchmark suite, one script after another (never in parallel: they time the machine).

    python benchmarks/run.py [--only rewrite,train_throughput,...] [--data-root ../shared/data] [--record]

Each script prints its table and writes results/local/<name>-<device>.json (ignored by git), or
with --record results/<name>-<device>.json, the numbers the README quotes; `accuracy` needs
`--data-root` (a folder with mnist/ and fashion-mnist/) and is skipped without it. `nac_compare`
(about an hour on 2 CPU cores) and `contention` (the default jobs beside a busy process, about 15
minutes) run only when named in --only.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RECORD

HERE = Path(__file__).resolve().parent
SUITE = ("rewrite", "analysis", "channel_pruning", "statistics_overhead", "testing_helpers", "train_throughput", "export",
         "search_cost", "accuracy", "distributed")
ON_REQUEST = ("nac_compare", "contention")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SUITE), help=f"comma-separated, from {', '.join(SUITE + ON_REQUEST)}")
    parser.add_argument("--data-root", default=None, help="folder with mnist/ and fashion-mnist/ (for accuracy)")
    parser.add_argument("--record", action="store_true",
                        help="replace the recorded results in benchmarks/results/ (default: benchmarks/results/local/)")
    args = parser.parse_args()
    environment = {**os.environ, RECORD: "1" if args.record else "0"}
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in SUITE + ON_REQUEST]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SUITE + ON_REQUEST)}")
    failed = []
    for name in names:
        command = [sys.executable, str(HERE / f"{name}.py")]
        if name == "accuracy":
            if args.data_root is None:
                print("== accuracy skipped: pass --data-root DIR (with mnist/ and fashion-mnist/)", flush=True)
                continue
            command += ["--data-root", args.data_root]
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        if subprocess.run(command, env=environment).returncode != 0:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - began:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
