"""graphmorph: change the architecture of PyTorch models while they train, every change a
verified torch.fx graph rewrite.

The core (this package's top level) captures models, analyses their graphs, counts FLOPs and
exports ONNX and torch.export programs. Rewrites live in `transforms`; the search algorithms and the command line import
the core, never the other way round.
"""
from graphmorph import models
from graphmorph.graph.analysis import Block, Stage, dataflow_graph, find_blocks, find_stages
from graphmorph.graph.capture import capture
from graphmorph.graph.channels import ChannelGroup, channel_groups
from graphmorph.errors import (
    AnalysisError, ArchError, CaptureError, ConfigError, ExportError, GraphmorphError, Refusal, RewriteError,
    ShapeError,
)
from graphmorph.graph.export import ExportReport, export_onnx
from graphmorph.graph.program import ProgramReport, save_program
from graphmorph.graph.registry import Registry
from graphmorph.graph.flops import FlopReport, count_flops
from graphmorph.graph.history import history
from graphmorph.run.history_file import HistoryError, history_document, read_history
from graphmorph.run.data import DataError, Dataset, load as load_data
from graphmorph.run.optim import rebuild_optimizer
from graphmorph.run.sources import ModelError, ModelSource
from graphmorph.graph.verify import VerifyReport, verify

__version__ = "0.1.0"



def _controllers() -> dict[str, str]:
    """The controllers of the registered searches (`graphmorph.search.algorithms`): name -> module.
    Imported by name on first use: the core does not import the searches."""
    import importlib

    registry = importlib.import_module("graphmorph.search.algorithms")
    return dict(entry.controller for entry in registry.algorithms().values() if entry.controller is not None)


def __getattr__(name: str):
    """A registered search's controller (`graphmorph.AutoGrow`, `graphmorph.NAC`, `graphmorph.Prune`),
    imported on first use."""
    import importlib

    module = _controllers().get(name)
    if module is None:
        raise AttributeError(f"module 'graphmorph' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_controllers()})


__all__ = [
    "models", "capture", "find_stages", "find_blocks", "dataflow_graph", "Block", "Stage",
    "count_flops", "FlopReport", "export_onnx", "ExportReport", "save_program", "ProgramReport", "verify", "VerifyReport", "history",
    "history_document", "read_history", "ModelSource", "load_data", "Dataset", "DataError",
    "rebuild_optimizer", "channel_groups", "ChannelGroup", "Registry",
    "GraphmorphError", "CaptureError", "ShapeError", "AnalysisError", "ExportError", "ArchError", "ConfigError",
    "RewriteError", "Refusal", "HistoryError", "ModelError",
]
