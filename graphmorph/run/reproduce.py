"""What a rerun needs to repeat a run's arithmetic, as config.json records it: the seed, the thread
count and why, the versions that compute, and the machine.

The same settings, seed and thread count on the same machine and versions give the same run, bit
for bit on the CPU (the tests check the found net and the log). Another thread count, CPU, or
torch or oneDNN version sums reductions in another order: accuracies move in their last digits,
and a search deciding on them can take another path (the README says more).
"""
from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

import torch

from graphmorph.run.threads import ThreadPolicy, available_cores

__all__ = ["reproduction_record"]

VERSIONS = ("graphmorph", "torch", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx")


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _processor() -> str:
    """The CPU's model name (Linux tells it in /proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
    return f"cpu ({_processor()})"


def reproduction_record(seed: int, threads: ThreadPolicy, device: torch.device, world_size: int) -> dict[str, Any]:
    """config.json's "reproduce" section: the seed and thread count to pass again, the rest to compare."""
    return {
        "seed": seed,
        "threads": threads.threads,
        "rerun_with": f"--seed {seed} --threads {threads.threads}",
        "thread_choice": threads.record(),
        "device": _device_name(device),
        "world_size": world_size,
        "cores_available": available_cores(),
        "platform": platform.platform(),
        "versions": _versions(),
    }
