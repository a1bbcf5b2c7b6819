"""Graph rewrites on captured models.

Each rewrite is a frozen dataclass registered by name (`transforms.protocol`): it checks before it
edits, `apply` verifies the result (`graphmorph.graph.verify`) and appends the rewrite's record to the
graph's history, and `replay` rebuilds rewrites from records to apply them again to a fresh model.
The functions below (`grow`, `prune_channels`, ...) build and apply one. This package imports only
the graphmorph core.
"""
from transforms.cells import CELL_INITS, AddCell, add_cell
from transforms.channel_pruning import (PruneChannels, PruneFilters, head_units, mask_channels, prune_channels,
                                        prune_filters, prune_heads)
from transforms.criteria import CRITERIA, Criterion, register_criterion
from transforms.dense import GrowDense, dense_layer, grow_dense
from transforms.growth import Grow, grow, growth_refusal
from transforms.initializers import GROWTH_INITS, INITS, AdamInitOptions, GrowthInit, register_growth_init
from transforms.protocol import REWRITES, Edit, Rewrite, Step, apply, register, rewrite_of
from transforms.pruning import PruneBranches, PruneSkips, prune_branches, prune_skips
from transforms.replayer import replay, replay_architecture
from transforms.skips import PruneSkipEdges, RemoveBlock, prune_skip_edges, remove_block
from transforms.widening import WIDEN_INITS, Widen, widen
from transforms.statistics import branch_statistics, instrument_branches, remove_instrumentation, reset_statistics

__all__ = ["grow", "growth_refusal", "replay_architecture", "prune_channels", "prune_filters", "prune_heads",
           "head_units", "mask_channels",
           "CRITERIA", "Criterion", "register_criterion", "prune_branches", "prune_skips", "prune_skip_edges", "remove_block", "add_cell", "CELL_INITS",
           "replay", "INITS", "GROWTH_INITS", "GrowthInit", "register_growth_init", "AdamInitOptions",
           "instrument_branches", "branch_statistics", "reset_statistics", "remove_instrumentation",
           "apply", "register", "rewrite_of", "Rewrite", "Edit", "Step", "REWRITES",
           "Grow", "PruneChannels", "PruneFilters", "PruneBranches", "PruneSkips", "PruneSkipEdges", "RemoveBlock",
           "AddCell", "grow_dense", "GrowDense", "dense_layer", "widen", "Widen", "WIDEN_INITS"]
