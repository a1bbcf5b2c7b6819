"""The default jobs on a CPU that another process is using: `graphmorph autogrow` and `graphmorph prune`
with their defaults, alone and beside a busy process, with one thread per core (PyTorch's default, and
graphmorph's before `--threads`) against `--threads auto`.

    python benchmarks/contention.py [--jobs autogrow,prune] [--cap 8] [--late SECONDS]

The busy process is a plain single-threaded Python loop that this script starts before a case and
stops after it; with `--late S` it starts S seconds into the job instead (auto has decided on an
idle machine by then, and must notice). Each case runs the command line in a fresh process with its
own run directory, and is stopped at `--cap` times the same job's time alone with auto (a run that
slow is recorded as stopped, its time a lower bound). Targets (issue 38): beside the busy process,
auto takes at most 2x its time alone; alone, auto is no slower than one thread per core within noise.
Writes results/contention-<device>.json (contention-late-<device>.json with `--late`).
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


def timed_job(job: str, threads: str, busy: bool, folder: Path, limit: float | None, late: float = 0.0) -> dict:
    """One run of `graphmorph JOB --threads THREADS` (its defaults otherwise), beside a busy process
    when `busy` (started `late` seconds into the job): wall seconds, whether it finished within
    `limit`, and what it found and chose."""
    load = (f"busy from {late:g} s" if late else "busy") if busy else "alone"
    run_dir = folder / f"{job}-{threads}-{load.replace(' ', '-')}"
    hog = None
    try:
        if busy and not late:
            hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            time.sleep(0.5)  # the loop is running before the job starts
        began = time.perf_counter()
        command = subprocess.Popen([sys.executable, "-m", "graphmorph", job, "--threads", threads,
                                    "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        if busy and late:
            time.sleep(late)
            hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        try:
            output = command.communicate(timeout=None if limit is None else max(1.0, limit - late))[0]
            finished = command.returncode == 0
        except subprocess.TimeoutExpired:
            command.kill()
            finished, output = False, command.communicate()[0]
        seconds = time.perf_counter() - began
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    row = {"job": job, "threads": threads, "load": load, "seconds": round(seconds, 1), "finished": finished}
    config = run_dir / "config.json"
    if config.is_file():
        choice = json.loads(config.read_text())["reproduce"]["thread_choice"]
        row["chosen_threads"], row["reason"] = choice["threads"], choice["reason"]
    log = run_dir / "log.json"
    if finished and log.is_file():
        row["switches"] = _switches(json.loads(log.read_text()))
        result = json.loads((run_dir / "result.json").read_text())
        row["found"] = result.get("found")
    row["thread_lines"] = [line for line in output.splitlines() if line.startswith("threads: ")]
    if not finished:
        row["tail"] = output.strip().splitlines()[-1:] if output.strip() else []
    print(f"{job:<9} --threads {threads:<5} {row['load']:<15} {seconds:7.1f} s"
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
    parser.add_argument("--late", type=float, default=0.0,
                        help="start the busy process this many seconds into each job (default 0: before it)")
    args = parser.parse_args()
    every_core = str(available_cores())
    rows, summary = [], {"cores": int(every_core), "default_threads": int(every_core), "cap": args.cap}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for job in args.jobs.split(","):
            alone_auto = timed_job(job, "auto", False, folder, None)
            alone_default = timed_job(job, every_core, False, folder, None)
            limit = args.cap * alone_auto["seconds"]
            busy_auto = timed_job(job, "auto", True, folder, limit, args.late)
            busy_default = timed_job(job, every_core, True, folder, limit, args.late)
            rows += [alone_auto, alone_default, busy_auto, busy_default]
            summary[job] = {
                "auto_busy_over_alone": round(busy_auto["seconds"] / alone_auto["seconds"], 2),
                "default_busy_over_alone": round(busy_default["seconds"] / alone_default["seconds"], 2),
                "default_busy_stopped_at_cap": not busy_default["finished"],
                "auto_alone_over_default_alone": round(alone_auto["seconds"] / alone_default["seconds"], 2),
            }
            print(f"{job}: {json.dumps(summary[job])}", flush=True)
    summary["target"] = "auto_busy_over_alone <= 2; auto_alone_over_default_alone ~ 1 within noise"
    summary["busy_from_seconds"] = args.late
    print("wrote", save("contention-late" if args.late else "contention", rows, summary))


if __name__ == "__main__":
    main()
