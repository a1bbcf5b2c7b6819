"""Several processes, one search: torch.distributed under torchrun, and a world of one without it.

`joined()` joins the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): gloo for CPU tensors, NCCL for CUDA ones. Without torchrun
it yields a world of one whose collectives return their input, so the searches have one code path.

Replicas stay identical by construction: every rank builds the model from the same seed, draws the
same batch order and rewrite initialisations from the same generators, averages gradients (DDP)
and buffers (`average_buffers`), and takes its decisions from all-reduced metrics. `check_replicas`
verifies it after every rewrite with a digest of each tensor, before DDP's broadcast could hide a
difference.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from graphmorph.errors import ConfigError, GraphmorphError

__all__ = ["World", "ReplicasDiverged", "RankFailed", "joined"]

T = TypeVar("T")

# How long a rank waits in a collective for a peer before giving up (rank 0's ONNX export included).
TIMEOUT = datetime.timedelta(minutes=30)


DDP = nn.parallel.DistributedDataParallel
# The option that stops DDP broadcasting rank 0's buffers before every forward (renamed in torch 2.13)
_NO_BUFFER_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                   else "broadcast_buffers")


class ReplicasDiverged(GraphmorphError):
    """The ranks' models differ where they must be identical."""


class RankFailed(GraphmorphError):
    """Rank 0 failed in a step that every rank waits for; carries its message."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def main_only(self, report: Callable[[str], None]) -> Callable[[str], None]:
        """`report` on rank 0, a no-op on the others (every rank would say the same)."""
        return report if self.is_main else _ignore

    def device(self, device: torch.device) -> torch.device:
        """The CUDA device of this rank (its LOCAL_RANK) when `device` is CUDA; else `device`."""
        if device.type != "cuda" or not self.distributed:
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's share of `items` (every size-th, from its rank)."""
        return items[self.rank:: self.size] if self.distributed else items

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `values` over the ranks (a new tensor)."""
        if not self.distributed:
            return values
        total = values.clone()
        dist.all_reduce(total)
        return total

    def average_buffers(self, model: nn.Module) -> None:
        """Replace each floating-point buffer (BatchNorm running statistics, featuremap sums) by
        its mean over the ranks, so every replica holds the same state."""
        if not self.distributed:
            return
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.size)

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` in DistributedDataParallel (gradients averaged over the ranks); buffers are not
        broadcast from rank 0 before each step but averaged by `average_buffers`."""
        if not self.distributed:
            return model
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, **{_NO_BUFFER_SYNC: False})

    def from_main(self, work: Callable[[], T]) -> T:
        """Run `work` on rank 0 and give its value to every rank; if it raises, every rank raises
        (rank 0 the original error, the others a RankFailed with its message)."""
        if not self.distributed:
            return work()
        value, failure = None, None
        if self.is_main:
            try:
                value = work()
            except Exception as err:  # handed to the other ranks, then raised here too
                failure = err
        message = [(value, None if failure is None else f"{type(failure).__name__}: {failure}")]
        dist.broadcast_object_list(message, src=0, device=torch.device("cpu"))
        if failure is not None:
            raise failure
        value, error = message[0]
        if error is not None:
            raise RankFailed(f"rank 0 failed: {error}")
        return value

    def check_same(self, label: str, settings: dict[str, Any]) -> None:
        """Refuse to go on when the ranks were started with different `settings`."""
        if not self.distributed:
            return
        every = [None] * self.size
        dist.all_gather_object(every, settings)
        for rank, theirs in enumerate(every):
            differing = sorted(k for k in set(settings) | set(theirs) if settings.get(k) != theirs.get(k))
            if differing:
                shown = "; ".join(f"{k}: {every[0].get(k)!r} on rank 0, {theirs.get(k)!r} on rank {rank}"
                                  for k in differing)
                raise ConfigError(f"the ranks were started with different {label} ({shown}); "
                                  "start every rank with the same command")

    def check_replicas(self, model: nn.Module, after: str) -> None:
        """Stop with ReplicasDiverged when any rank's parameters or buffers differ from rank 0's."""
        if not self.distributed:
            return
        mine = tensor_digests(model)
        every = [None] * self.size
        dist.all_gather_object(every, mine)
        for rank, theirs in enumerate(every):
            if theirs != every[0]:
                names = [n for n in every[0] if every[0][n] != theirs.get(n)] or sorted(set(theirs) - set(every[0]))
                raise ReplicasDiverged(
                    f"after {after}, rank {rank}'s model differs from rank 0's ({len(names)} tensor(s), first "
                    f"{names[0]}). Every rank must run the same graphmorph version and command with the same "
                    "seed and data; the last checkpoint is kept, so the run can be resumed once that holds")


def _ignore(_: str) -> None:
    """What the ranks other than 0 do with a progress line."""


def tensor_digests(model: nn.Module) -> dict[str, str]:
    """{name: digest of dtype, shape and bytes} for each parameter and buffer of `model`."""
    digests = {}
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu()
        digest = hashlib.blake2b(f"{data.dtype}{tuple(data.shape)}".encode(), digest_size=12)
        digest.update(data.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        digests[name] = digest.hexdigest()
    return digests


@contextlib.contextmanager
def joined() -> Iterator[World]:
    """The world of this process: torchrun's process group (joined here, and left at the end if
    joined here), or a world of one when the environment names no WORLD_SIZE above 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        yield World()
        return
    created = not dist.is_initialized()
    if created:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        if created:      # no rank tears gloo down while a peer still talks to it (an abort at exit)
            dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()
