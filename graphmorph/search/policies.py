"""AutoGrow's growing and stopping policies (paper section 2.3) and its circular list of stages,
as pure functions of the validation-accuracy history.

The metric is the running maximum of validation accuracy (in percent), one value per epoch;
"improvement over the last W epochs" is metric[t] - metric[t - W], with 0 before the first epoch.
"""
from __future__ import annotations

__all__ = ["running_max", "improvement", "meets_growing_policy", "meets_stopping_policy", "next_stage",
           "POLICIES"]

POLICIES = ("periodic", "convergent")


def running_max(accuracies: list[float]) -> list[float]:
    """The paper's metric: best validation accuracy so far, per epoch."""
    best, out = float("-inf"), []
    for acc in accuracies:
        best = max(best, acc)
        out.append(best)
    return out


def improvement(metric: list[float], window: int) -> float:
    """How much the metric rose over the last `window` epochs (from 0 if fewer have passed)."""
    if not metric:
        return 0.0
    before = metric[-1 - window] if len(metric) > window else 0.0
    return metric[-1] - before


def meets_growing_policy(policy: str, metric: list[float], K: int, tau: float) -> bool:
    """Periodic Growth: always (the caller checks every K epochs). Convergent Growth: when the
    metric rose by less than tau over the last K epochs."""
    if policy == "periodic":
        return True
    if policy == "convergent":
        return len(metric) >= K and improvement(metric, K) < tau
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")


def meets_stopping_policy(metric: list[float], window: int, tau: float, grown: int | None) -> bool:
    """Stop the most recently grown stage when the metric rose by less than tau over the last
    `window` epochs (J for periodic growth, K for convergent). Nothing to stop before a growth."""
    return grown is not None and len(metric) >= window and improvement(metric, window) < tau


def next_stage(growing: list[int], stage: int) -> int:
    """The stage after `stage` in the circular list of growing stages."""
    return growing[(growing.index(stage) + 1) % len(growing)]
