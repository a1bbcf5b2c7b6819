"""Measured inference latency: a net exported to ONNX (the exporter `graphmorph export` uses) and
timed in onnxruntime's CPU provider on one thread, the fastest of repeated timed blocks after a
warm-up. One thread, so the number is the work the net costs and not how the machine's cores are
shared out; the fastest block, because noise on a shared machine only ever adds time (the
estimator Chen and Revels, "Robust benchmarking in noisy environments", 2016, recommend): on
2 shared cores the median of 15 blocks moved by 40% between repeats, the minimum by under 4%."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from graphmorph.graph.copying import deep_copy
from graphmorph.graph.export import export_onnx, onnx_session

__all__ = ["LatencyTimer", "onnx_latency", "latency_ratio"]

WARMUP_SECONDS = 0.05      # runs before timing, and the runs per block measured from them
BLOCK_SECONDS = 0.01       # each timed block runs the net about this long
BLOCKS = 21


class LatencyTimer:
    """`model` (a CPU copy of it when it lives on a GPU) exported to ONNX for `example` (its batch
    fixed) and loaded in onnxruntime's CPU provider on `threads` threads; `block()` times one
    block of runs."""

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int = 1):
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = deep_copy(model).cpu()
        example = example.detach().cpu().float()
        with tempfile.TemporaryDirectory(prefix="graphmorph-latency-") as folder:
            path = Path(folder) / "model.onnx"
            export_onnx(model, path, example, dynamic_batch=False)
            self.session = onnx_session(path, threads=threads)
        self.feed = {self.session.get_inputs()[0].name: example.numpy()}
        began, runs = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - began) < WARMUP_SECONDS:
            self.session.run(None, self.feed)
            runs += 1
        self.runs = max(1, round(BLOCK_SECONDS * runs / elapsed))

    def block(self) -> float:
        """Seconds one run took, averaged over one timed block."""
        began = time.perf_counter()
        for _ in range(self.runs):
            self.session.run(None, self.feed)
        return (time.perf_counter() - began) / self.runs


def onnx_latency(model: nn.Module, example: torch.Tensor, threads: int = 1) -> float:
    """Seconds onnxruntime's CPU provider takes for one forward pass of `example` through `model`:
    the fastest of `BLOCKS` timed blocks."""
    timer = LatencyTimer(model, example, threads)
    return min(timer.block() for _ in range(BLOCKS))


def latency_ratio(model: nn.Module, base: nn.Module, example: torch.Tensor, threads: int = 1) -> float:
    """`model`'s latency as a fraction of `base`'s, their timed blocks interleaved so that both see
    the same machine: the ratio of the two fastest blocks."""
    timers = LatencyTimer(model, example, threads), LatencyTimer(base, example, threads)
    samples = [[], []]
    for _ in range(BLOCKS):
        for timer, kept in zip(timers, samples):
            kept.append(timer.block())
    return min(samples[0]) / min(samples[1])
