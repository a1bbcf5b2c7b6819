"""The trainer: epochs of SGD over in-memory tensors, on CUDA when present, else on the CPU.

On a GPU, the fast path: data kept on the device when it fits, bf16 autocast, channels_last,
batch-level random crop + flip on the device, and optionally `torch.compile` (re-applied after
every rewrite, its cost measured); each part can be switched off to measure it. On the CPU the
same code runs in float32 and is deterministic for a seed and a thread count.

In a distributed `world` each global batch is split between the ranks, gradients are averaged by
DDP, buffers averaged after training, and every metric is summed over the ranks, so all ranks see
the same numbers and take the same decisions.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from graphmorph.run.distributed import World
from graphmorph.run.threads import ThreadPolicy
from graphmorph.errors import GraphmorphError

__all__ = ["Trainer", "TrainingDiverged", "pick_device", "staircase_lr"]


class TrainingDiverged(GraphmorphError):
    """The loss became NaN or infinite, or exploded past `EXPLODED` times a uniform guess's."""


EXPLODED = 1000   # a mean loss above this many times log(classes), a uniform guess's loss, has diverged


def pick_device(requested: str = "auto", world: World = World()) -> torch.device:
    """"auto" is CUDA when present, else the CPU; in a distributed world, the rank's own GPU."""
    if requested == "auto":
        return world.device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GraphmorphError("--device cuda was asked for, but no CUDA device is available")
    return world.device(device)


def staircase_lr(base: float, epoch: int, epochs: int) -> float:
    """The paper's schedule: base, x0.1 from half way, x0.01 from three quarters."""
    if epoch >= math.ceil(0.75 * epochs):
        return base * 0.01
    if epoch >= math.ceil(0.5 * epochs):
        return base * 0.1
    return base


@dataclass
class Trainer:
    """Runs epochs and evaluations; `model_for_training` wraps the model (compiled if asked)."""

    device: torch.device
    batch_size: int = 128
    augment: bool = False
    compile: bool = False
    bf16: bool = True               # GPU only: bf16 autocast
    channels_last: bool = True      # GPU only: NHWC memory format for model and batches
    data_on_device: bool = True     # GPU only: keep the dataset in device memory when it fits
    world: World = World()          # the processes sharing each batch (one without torchrun)
    threads: ThreadPolicy | None = None   # CPU threads: decided before the first training, then watched
    compile_seconds: list[float] = field(default_factory=list)   # first step after each (re)compile
    _runners: dict[tuple[int, bool], nn.Module] = field(default_factory=dict, repr=False)
    _untimed: set[int] = field(default_factory=set, repr=False)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def place_data(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Move the dataset to the GPU when it fits in half the free memory; else keep it in host memory."""
        if not (self.on_gpu and self.data_on_device):
            return tensors
        free, _ = torch.cuda.mem_get_info(self.device)
        if sum(t.numel() * t.element_size() for t in tensors) < free // 2:
            return tuple(t.to(self.device) for t in tensors)
        return tensors

    def place_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self._nhwc:
            model.to(memory_format=torch.channels_last)
        return model

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                    y: torch.Tensor, generator: torch.Generator, label: str | None = None) -> tuple[float, float]:
        """One epoch over (x, y) in a seeded random order; returns (mean loss, accuracy %). When
        compiling, the last partial batch is left out: one batch shape, so one compile per graph.
        With `label`, a progress bar (rate and ETA) on a terminal."""
        order = torch.randperm(len(y), generator=generator)
        batches = [order[start: start + self.batch_size] for start in range(0, len(y), self.batch_size)]
        if self.compile and len(batches) > 1 and len(batches[-1]) < self.batch_size:
            batches.pop()
        return self._train(model, optimizer, x, y, generator, self._bar(batches, len(batches), label))

    def train_steps(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                    generator: torch.Generator, steps: int,
                    on_step: Callable[[int], None] | None = None, label: str | None = None) -> tuple[float, float]:
        """`steps` optimizer steps on seeded random batches (a fresh order for each pass over the
        data), calling `on_step(step)` after each; returns (mean loss, accuracy %) over them. With
        `label`, a progress bar (rate and ETA) on a terminal."""
        if len(y) < 2 * self.world.size:  # no batch could train: the loop below would never end
            raise GraphmorphError(f"training needs {2 * self.world.size} examples at least, got {len(y)}")

        def batches():
            step = 0
            while True:
                order = torch.randperm(len(y), generator=generator)
                for start in range(0, len(y) - 1, self.batch_size):
                    if step == steps:
                        return
                    yield order[start: start + self.batch_size]
                    step += 1
        return self._train(model, optimizer, x, y, generator, self._bar(batches(), steps, label), on_step)

    def _bar(self, batches: Iterable[torch.Tensor], total: int, label: str | None) -> Iterable[torch.Tensor]:
        """`batches` behind a tqdm bar on rank 0's terminal; as they are elsewhere (a pipe, a log
        file, CI, other ranks) or without a label."""
        if label is None or not self.world.is_main:
            return batches
        return tqdm(batches, total=total, desc=label, unit="step", leave=False, disable=None, dynamic_ncols=True)

    def step_timer(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
        """A function that runs one training step of a copy of `model` (its own optimizer, this
        rank's share of the first batch of (x, y)) and returns its seconds; the model, its optimizer
        and the global random stream are left as they were."""
        twin = self.place_model(copy.deepcopy(model)).train()
        optimizer = torch.optim.SGD(twin.parameters(), lr=0.0)
        share = max(2, self.batch_size // self.world.size)
        xb, yb = self._batch(x, y, torch.arange(min(len(y), share)), torch.Generator().manual_seed(0))

        def timed_step() -> float:
            with torch.random.fork_rng(devices=[self.device] if self.on_gpu else []):
                began = time.perf_counter()
                self._step(twin, optimizer, xb, yb)
                if self.on_gpu:
                    torch.cuda.synchronize(self.device)
                return time.perf_counter() - began
        return timed_step

    def _step(self, runner: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor,
              yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch (xb, yb); returns (logits, loss)."""
        with self._autocast():
            out = runner(xb)
            loss = F.cross_entropy(out.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return out, loss

    def settle_threads(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """Decide an "auto" thread count on `model`'s training steps, and announce the count, once."""
        if self.threads is not None and not self.threads.settled:
            self.threads.settle(self.step_timer(model, x, y))

    def _train(self, model, optimizer, x, y, generator, batches: Iterable[torch.Tensor],
               on_step: Callable[[int], None] | None = None) -> tuple[float, float]:
        self.settle_threads(model, x, y)
        runner = self._runner(model)
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = done = classes = 0
        stepping = 0.0    # seconds in the steps, for the thread policy's watch
        for index in batches:
            if len(index) < 2 * self.world.size:  # BatchNorm needs two samples per rank in train mode
                continue
            began = time.perf_counter()
            xb, yb = self._batch(x, y, index, generator)
            first = id(model) in self._untimed
            out, loss = self._step(runner, optimizer, xb, yb)
            if first:
                if self.on_gpu:
                    torch.cuda.synchronize(self.device)
                self.compile_seconds.append(time.perf_counter() - began)
                self._untimed.discard(id(model))
            stepping += time.perf_counter() - began
            loss_sum += loss.detach() * len(yb)
            correct += (out.argmax(1) == yb).sum()
            seen, done, classes = seen + len(yb), done + 1, out.shape[1]
            if on_step is not None:
                on_step(done)
        if self.threads is not None and done and not (self.compile or self.on_gpu):
            self.threads.watch(model, stepping / done, lambda: self.step_timer(model, x, y))
        self.world.average_buffers(model)
        loss_sum, correct, seen = self.world.all_sum(torch.stack([
            loss_sum.double(), correct.double(), torch.tensor(float(seen), device=self.device, dtype=torch.float64)]))
        mean_loss = float(loss_sum) / max(1, float(seen))
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"the training loss became {mean_loss}")
        if classes > 1 and mean_loss > EXPLODED * math.log(classes):
            raise TrainingDiverged(f"the training loss exploded to {mean_loss:.3g} ({EXPLODED} times a uniform "
                                   f"guess's {math.log(classes):.3g})")
        return mean_loss, 100.0 * float(correct) / max(1, float(seen))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy %) in eval mode; in a distributed world each rank evaluates a share."""
        model.eval()
        total = len(y)
        x, y = self.world.shard(x), self.world.shard(y)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.float64)
        for start in range(0, len(y), 4 * self.batch_size):
            xb = x[start: start + 4 * self.batch_size].to(self.device, non_blocking=True)
            yb = y[start: start + 4 * self.batch_size].to(self.device, non_blocking=True)
            if self._nhwc:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out = model(xb).float()
            loss_sum += F.cross_entropy(out, yb, reduction="sum").double()
            correct += (out.argmax(1) == yb).sum()
        loss_sum, correct = self.world.all_sum(torch.stack([loss_sum, correct])).tolist()
        return loss_sum / total, 100.0 * correct / total

    # ---- internals

    def _runner(self, model: nn.Module) -> nn.Module:
        """`model` as trained: in DDP when distributed, compiled when asked; a new graph after a
        rewrite (or switching compile on) wraps and compiles again."""
        if not (self.compile or self.world.distributed):
            return model
        key = (id(model), self.compile)
        if key not in self._runners:
            runner = self.world.wrap(model)
            self._runners = {key: torch.compile(runner) if self.compile else runner}
            self._untimed = {id(model)} if self.compile else set()
        return self._runners[key]

    @property
    def _nhwc(self) -> bool:
        return self.on_gpu and self.channels_last

    def _autocast(self):
        if self.on_gpu and self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batch(self, x, y, index, generator):
        """This rank's share of the global batch `index`; the augmentation is drawn for the whole
        batch, so every rank's generator advances alike."""
        draws = _crop_and_flip_draws(len(index), generator) if self.augment else None
        index = self.world.shard(index)
        xb = x[index.to(x.device)].to(self.device, non_blocking=True)
        yb = y[index.to(y.device)].to(self.device, non_blocking=True)
        if draws is not None:
            xb = _crop_and_flip(xb, self.world.shard(draws))
        if self._nhwc:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb


def _crop_and_flip_draws(n: int, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per sample: row offset, column offset (0..2*pad) and flip (0 or 1), as an (n, 3) tensor."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return torch.cat([offsets.T, flips[:, None].long()], dim=1)


def _crop_and_flip(x: torch.Tensor, draws: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Per-sample crops from a zero-padded batch, and horizontal flips, as `draws` say, on x's device."""
    n, _, h, w = x.shape
    draws = draws.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = torch.arange(h, device=x.device)[None, :] + draws[:, 0:1]
    cols = torch.arange(w, device=x.device)[None, :] + draws[:, 1:2]
    cols = torch.where(draws[:, 2:3].bool(), cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
