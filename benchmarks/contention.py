"""The default jobs on a CPU that another process is using: `graphmorph autogrow` and `graphmorph prune`
with their defaults, alone and beside a busy process, with one thread per core (PyTorch's default, and
graphmorph's before `--threads`) against `--threads auto`.

    python benchmarks/contention.py [--jobs autogrow,prune] [--cap 8]

The busy process is a plain single-threaded Python loop that this script starts before a case and
stops after it. Each case runs the command line in a fresh process with its own run directory, and
is stopped at `--cap` times the same job's time alone with auto (a run that slow is recorded as
stopped, its time a lower bound). Targets (issue 38): beside the busy process, auto takes at most
2x its time alone; alone, auto is no slower than one thread per core within noise.
Writes results/contention-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from graphmorph.run.threads import available_cores  # noqa: E402

BUSY_LOOP = "while True:\n    pass\n"


def timed_job(job: str, threads: str, busy: bool, folder: Path, limit: float | None) -> dict:
    """One run of `graphmorph JOB --threads THREADS` (its defaults otherwise): wall seconds, whether
    it finished within `limit`, and what it found and chose."""
    run_dir = folder / f"{job}-{threads}-{'busy' if busy else 'alone'}"
    hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        time.sleep(0.5 if busy else 0.0)  # the loop is running before the job starts
        began = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "graphmorph", job, "--threads", threads,
                                   "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=limit)
            finished, output = done.returncode == 0, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            finished, output = False, "stopped at the cap"
        seconds = time.perf_counter() - began
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    row = {"job": job, "threads": threads, "load": "busy" if busy else "alone", "seconds": round(seconds, 1),
           "finished": finished}
    config = run_dir / "config.json"
    if config.is_file():
        choice = json.loads(config.read_text())["reproduce"]["thread_choice"]
        row["chosen_threads"], row["reason"] = choice["threads"], choice["reason"]
    log = run_dir / "log.json"
    if finished and log.is_file():
        row["switches"] = _switches(json.loads(log.read_text()))
        result = json.loads((run_dir / "result.json").read_text())
        row["found"] = result.get("found")
    if not finished:
        row["tail"] = output.strip().splitlines()[-1:] if output.strip() else []
    print(f"{job:<9} --threads {threads:<5} {row['load']:<6} {seconds:7.1f} s"
          + ("" if finished else "  (stopped: a lower bound)")
          + (f"  chose {row['chosen_threads']}" if "chosen_threads" in row else ""), flush=True)
    return row


def _switches(rows: list[dict]) -> int:
    """How often the thread count changed between the log's rows."""
    counts = [row.get("threads") for row in rows]
    return sum(a != b for a, b in zip(counts, counts[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="autogrow,prune")
    parser.add_argument("--cap", type=float, default=8.0,
                        help="stop a case at this multiple of the job's time alone with auto (default 8)")
    args = parser.parse_args()
    every_core = str(available_cores())
    rows, summary = [], {"cores": int(every_core), "default_threads": int(every_core), "cap": args.cap}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for job in args.jobs.split(","):
            alone_auto = timed_job(job, "auto", False, folder, None)
            alone_default = timed_job(job, every_core, False, folder, None)
            limit = args.cap * alone_auto["seconds"]
            busy_auto = timed_job(job, "auto", True, folder, limit)
            busy_default = timed_job(job, every_core, True, folder, limit)
            rows += [alone_auto, alone_default, busy_auto, busy_default]
            summary[job] = {
                "auto_busy_over_alone": round(busy_auto["seconds"] / alone_auto["seconds"], 2),
                "default_busy_over_alone": round(busy_default["seconds"] / alone_default["seconds"], 2),
                "default_busy_stopped_at_cap": not busy_default["finished"],
                "auto_alone_over_default_alone": round(alone_auto["seconds"] / alone_default["seconds"], 2),
            }
            print(f"{job}: {json.dumps(summary[job])}", flush=True)
    summary["target"] = "auto_busy_over_alone <= 2; auto_alone_over_default_alone ~ 1 within noise"
    print("wrote", save("contention", rows, summary))


if __name__ == "__main__":
    main()
