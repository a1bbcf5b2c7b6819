"""Runs the graphmorph command line under torchrun for tests/test_distributed.py, optionally made to
misbehave on rank 1:

    torchrun --standalone --nproc-per-node 2 tests/distributed_driver.py MODE -- graphmorph arguments...

MODE is `plain`; `seed-by-rank` (each rank adds `--seed RANK`); or `diverge-growth` (rank 1 draws
its new blocks from a differently seeded generator, the divergence the replica check must catch).
"""
from __future__ import annotations

import os
import sys

import torch

import graphmorph.search.grower as grower
from graphmorph.cli import main

mode, arguments = sys.argv[1], sys.argv[3:]
rank = int(os.environ["RANK"])
if mode == "seed-by-rank":
    arguments += ["--seed", str(rank)]
elif mode == "diverge-growth":
    if rank == 1:
        grow = grower.grow
        grower.grow = lambda gm, **options: grow(gm, **{**options, "generator": torch.Generator().manual_seed(99)})
elif mode != "plain":
    raise SystemExit(f"unknown mode {mode!r}")
sys.exit(main(arguments))
