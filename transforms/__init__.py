"""Graph rewrites on captured models.

Each rewrite is a pure function from a GraphModule to a new one: it checks before it edits,
verifies after (`graphmorph.verify`), and appends a record to the graph's history so that
`replay` can apply it again to a fresh model. This package imports only the graphmorph core.
"""
from transforms.cells import CELL_INITS, add_cell
from transforms.channel_pruning import CRITERIA, mask_channels, prune_channels, prune_filters
from transforms.growth import PRESERVED_MODES, grow, growth_refusal
from transforms.initializers import INITS, AdamInitOptions
from transforms.pruning import prune_branches, prune_skips
from transforms.replayer import replay, replay_architecture
from transforms.skips import prune_skip_edges, remove_block
from transforms.statistics import branch_statistics, instrument_branches, remove_instrumentation, reset_statistics

__all__ = ["grow", "growth_refusal", "replay_architecture", "prune_channels", "prune_filters", "mask_channels", "CRITERIA", "prune_branches", "prune_skips",
           "prune_skip_edges", "remove_block", "add_cell", "CELL_INITS", "replay", "INITS", "AdamInitOptions", "PRESERVED_MODES",
           "instrument_branches", "branch_statistics", "reset_statistics", "remove_instrumentation"]
