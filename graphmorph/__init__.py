"""graphmorph: change the architecture of PyTorch models while they train, every change a
verified torch.fx graph rewrite.

The core (this package's top level) captures models, analyses their graphs, counts FLOPs and
exports ONNX. Rewrites live in `transforms`; the search algorithms and the command line import
the core, never the other way round.
"""
from graphmorph import models
from graphmorph.analysis import Block, Stage, dataflow_graph, find_blocks, find_stages
from graphmorph.capture import capture
from graphmorph.channels import ChannelGroup, channel_groups
from graphmorph.errors import (
    AnalysisError, ArchError, CaptureError, ConfigError, ExportError, GraphmorphError, RewriteError, ShapeError,
)
from graphmorph.export import ExportReport, export_onnx
from graphmorph.flops import FlopReport, count_flops
from graphmorph.history import HistoryError, history, history_document, read_history
from graphmorph.optim import rebuild_optimizer
from graphmorph.sources import ModelError, ModelSource
from graphmorph.verify import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "models", "capture", "find_stages", "find_blocks", "dataflow_graph", "Block", "Stage",
    "count_flops", "FlopReport", "export_onnx", "ExportReport", "verify", "VerifyReport", "history",
    "history_document", "read_history", "ModelSource",
    "rebuild_optimizer", "channel_groups", "ChannelGroup",
    "GraphmorphError", "CaptureError", "ShapeError", "AnalysisError", "ExportError", "ArchError", "ConfigError",
    "RewriteError", "HistoryError", "ModelError",
]
