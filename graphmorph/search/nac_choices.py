"""The decisions of NAC (EnvelopeNets, Algorithm 1) as pure functions of the statistics, the skip
weights and the structure (`envelope_arch`'s JSON form), so they can be tested on their own."""
from __future__ import annotations

import math
import random
from typing import Any

from graphmorph.models import BRANCH_TYPES

__all__ = ["branches_to_prune", "skips_to_prune", "random_structure"]


def branches_to_prune(stage: dict[str, Any], statistics: dict[str, dict[str, float]], max_prune: int,
                      prune_best: bool = False) -> dict[str, list[str]]:
    """{cell: [branches]} to prune in one stage: the branches with the lowest statistic (the
    highest with `prune_best`, the paper's worst case), at most min(max_prune, branches // 3),
    never a cell's last branch. Branches without a statistic (NaN: never trained) are kept."""
    candidates = [(statistics[cell["name"]][branch], cell["name"], branch)
                  for cell in stage["cells"] for branch in cell["branches"]
                  if not math.isnan(statistics.get(cell["name"], {}).get(branch, math.nan))]
    candidates.sort(key=lambda item: (-item[0] if prune_best else item[0], item[1], item[2]))
    budget = min(max_prune, sum(len(cell["branches"]) for cell in stage["cells"]) // 3)
    left = {cell["name"]: len(cell["branches"]) for cell in stage["cells"]}
    chosen: dict[str, list[str]] = {}
    for _, cell, branch in candidates:
        if sum(map(len, chosen.values())) == budget:
            break
        if left[cell] > 1:
            chosen.setdefault(cell, []).append(branch)
            left[cell] -= 1
    return chosen


def skips_to_prune(weights: dict[tuple[str, str], float]) -> list[tuple[str, str]]:
    """Half (rounded down) of the given skips, `(reduction, source)`, those with the smallest |w|."""
    ranked = sorted(weights, key=lambda skip: (abs(weights[skip]), skip))
    return ranked[: len(ranked) // 2]


def random_structure(structure: dict[str, Any], rng: random.Random,
                     branch_set: tuple[str, ...] = BRANCH_TYPES) -> dict[str, Any]:
    """A random net like `structure` (the paper's Figure 3 baseline): per stage the same cells and
    the same number of branches in all, spread over the cells at random (at least one each, at
    most the branch set), each cell's branches drawn at random; the same skips."""
    stages = []
    for stage in structure["stages"]:
        cells = stage["cells"]
        total = sum(len(cell["branches"]) for cell in cells)
        counts = [1] * len(cells)
        for _ in range(total - len(cells)):
            counts[rng.choice([k for k, c in enumerate(counts) if c < len(branch_set)])] += 1
        stages.append({
            "cells": [{**cell, "branches": rng.sample(branch_set, count)} for cell, count in zip(cells, counts)],
            "output_skips": list(stage["output_skips"]),
        })
    return {**structure, "stages": stages}
