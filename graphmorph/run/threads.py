"""How many CPU threads a job computes with: a number the user gives, or `auto`, decided by measurement.

PyTorch's intra-op pool starts one thread per core. On a machine where another process keeps a
core busy, every parallel region then waits for a thread the scheduler has parked: graphmorph's
default jobs ran 2-36x slower so (by machine), while on an idle machine every core buys them 20-30%
(the evaluation, the float64 verification and the grown nets gain more than the seed net's
training step). So `auto` times training steps of the job's own net (a copy: the run's weights and
random streams untouched) on one thread and on every core this process may use, alternately, and
keeps every core unless they are slower (by `TOLERANCE`, so that an idle machine, where the two
measure alike on a tiny net, gets PyTorch's default). It keeps watching: when a training pass runs
at more than `SLOWDOWN` times the pace it had (another job started beside it), it measures again and
falls back to one thread if that is now faster; it never goes back up.

The count holds for everything the job computes: training, evaluation, the float64 verification of
every rewrite (all torch, which reads the process's setting) and onnxruntime's parity checks
(`graphmorph.graph.export` reads the same setting). The choice, its reason and every later switch
are recorded, so a rerun with `--threads N` repeats the arithmetic of a run: results depend on the
thread count, since a reduction split over threads sums in another order.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

__all__ = ["AUTO", "TOLERANCE", "ThreadPolicy", "threads_option", "threads_check", "available_cores", "compare_threads"]

AUTO = "auto"
TOLERANCE = 1.05      # every core is kept unless its step takes over 105% of one thread's
ROUNDS = 4            # turns each thread count takes, alternately
TIMED = 2             # timed steps per turn, after one that wakes the pool's threads
GIVE_UP = 3.0         # more threads that take this many times one thread's step have lost: stop timing them
SLOWDOWN = 2.0        # a training pass this many times slower than expected is measured again


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def _cores_per_process() -> int:
    """This process's share of the cores: under torchrun, the machine's ranks share them."""
    return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def threads_option(text: str) -> int | str:
    """The command line's `--threads N|auto`."""
    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads or auto, got {text!r}")
    return value


def threads_check(value: Any) -> tuple[bool, str]:
    """A config's check of its `threads` setting, as `graphmorph.search.config.require` takes them."""
    valid = value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    return valid, f"threads must be a positive number or auto, got {value!r}"


def _set(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def compare_threads(time_step: Callable[[], float], counts: tuple[int, ...]) -> dict[int, float]:
    """The fastest of the seconds `time_step()` took at each thread count in `counts` (one thread
    first), over `ROUNDS` rounds in which the counts take turns: each turn one untimed step (the
    pool's threads wake up) and `TIMED` timed ones. The fastest, because noise on a shared machine
    only adds time, while a busy core slows every step at more threads. Timing stops early once more
    threads take `GIVE_UP` times one thread's step. Leaves the process at the first count."""
    timed: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for _ in range(ROUNDS):
            for n in counts:
                _set(n)
                time_step()
                timed[n] += [time_step() for _ in range(TIMED)]
            if all(min(timed[n]) > GIVE_UP * min(timed[counts[0]]) for n in counts[1:]):
                break
    finally:
        _set(counts[0])
    return {n: min(seconds) for n, seconds in timed.items()}


def _size(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class ThreadPolicy:
    """A job's thread count: `requested` (a number, or "auto"), the count in force, why, what was
    measured, and every switch since. `held()` applies it for the job and restores the process's
    setting after; `settle` decides an "auto" count, `watch` follows each training pass."""

    requested: int | str = AUTO
    threads: int | None = None                 # None: "auto", not decided yet
    reason: str = ""
    step_ms: dict[int, float] = field(default_factory=dict)   # the last comparison: ms per step at each count
    switches: list[dict[str, Any]] = field(default_factory=list)
    say: Callable[[str], None] = field(default=print, repr=False, compare=False)
    watching: bool = True                      # False in a distributed run: ranks would decide apart
    announced: bool = field(default=False, repr=False, compare=False)    # the choice was printed
    _pace: tuple[int, float] | None = field(default=None, repr=False, compare=False)  # last pass: (net size, s/step)

    def __post_init__(self):
        if self.requested != AUTO and self.threads is None:
            cores = available_cores()
            self.threads = self.requested
            self.reason = f"{self.requested} as asked" + (
                f"; more than the {cores} core(s) this process may use, which oversubscribes them"
                if self.requested > cores else "")

    @property
    def settled(self) -> bool:
        """Decided and announced: nothing left for `settle` to do."""
        return self.threads is not None and self.announced

    @contextlib.contextmanager
    def held(self) -> Iterator["ThreadPolicy"]:
        """The policy's count for the duration (one thread while "auto" is undecided: safe on a
        busy machine while data loads and the net is built); the process's own count after."""
        before = torch.get_num_threads()
        _set(self.threads or 1)
        try:
            yield self
        finally:
            _set(before)

    def settle(self, time_step: Callable[[], float]) -> None:
        """Decide an "auto" count by timing `time_step` (a training step of a copy of the net), and
        say the count in force and why, once."""
        if self.threads is None:
            self._decide(time_step)
        if not self.announced:
            self.announced = True
            self.say(f"threads: {self.threads} ({self.reason})")

    def _decide(self, time_step: Callable[[], float]) -> None:
        cores = _cores_per_process()
        if cores == 1:
            self.threads, self.reason = 1, "auto: this process may use one core (its share of them)"
            _set(1)
            return
        measured = compare_threads(time_step, (1, cores))
        self.step_ms = {n: round(s * 1e3, 3) for n, s in measured.items()}
        every = measured[cores] <= TOLERANCE * measured[1]
        self.threads = cores if every else 1
        _set(self.threads)
        self.reason = (f"auto: a training step took {self.step_ms[1]:.1f} ms on 1 thread and "
                       f"{self.step_ms[cores]:.1f} ms on {cores}; "
                       + (f"keeping {cores}" if every else f"{cores} are slower: another process is using the cores"))

    def watch(self, model: nn.Module, seconds_per_step: float, time_step: Callable[[], Callable[[], float]]) -> None:
        """Follow a training pass of `model` that took `seconds_per_step`: if an "auto" count above
        one runs it `SLOWDOWN` times slower than the last pass (scaled by the net's size), compare
        again (`time_step()` gives the timer) and fall back to one thread when that is faster. The
        first pass sets the pace: a pass times batch gathering too, which the comparison's steps do not."""
        if self.requested != AUTO or not self.watching or (self.threads or 1) == 1:
            return
        size = _size(model)
        if self._pace is not None:
            pace_size, pace = self._pace
            if seconds_per_step > SLOWDOWN * pace * max(1.0, size / pace_size):
                measured = compare_threads(time_step(), (1, self.threads))
                self._switch_if_slower(measured, seconds_per_step)
                if self.threads == 1:
                    return
        self._pace = (size, seconds_per_step)

    def _switch_if_slower(self, measured: dict[int, float], seconds_per_step: float) -> None:
        many = self.threads
        self.step_ms = {n: round(s * 1e3, 3) for n, s in measured.items()}
        if measured[many] <= TOLERANCE * measured[1]:
            _set(many)
            return
        _set(1)
        self.threads = 1
        why = (f"a training step took {seconds_per_step * 1e3:.1f} ms, slower than its pace; measured again: "
               f"{self.step_ms[1]:.1f} ms on 1 thread, {self.step_ms[many]:.1f} ms on {many} (another process is "
               "using the cores)")
        self.switches.append({"from": many, "to": 1, "reason": why})
        self.say(f"threads: {many} -> 1 ({why})")

    def record(self) -> dict[str, Any]:
        """What config.json and the checkpoint keep: enough to resume with, or rerun at, the same count."""
        return {"requested": self.requested, "threads": self.threads, "reason": self.reason,
                "step_ms": {str(n): ms for n, ms in self.step_ms.items()}, "switches": list(self.switches)}

    @classmethod
    def restored(cls, record: dict[str, Any] | None, requested: int | str,
                 say: Callable[[str], None] = print) -> "ThreadPolicy":
        """The policy a checkpoint recorded (a resume keeps its count); without a record (runs from
        before the policy), `requested` decided anew."""
        if not record or record.get("threads") is None:
            return cls(requested, say=say)
        return cls(record["requested"], record["threads"], record["reason"],
                   {int(n): ms for n, ms in record.get("step_ms", {}).items()}, list(record.get("switches", [])),
                   say=say, announced=True)
