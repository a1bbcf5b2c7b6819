"""The errors graphmorph raises on purpose: each names its cause and, where one exists, the fix."""
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class GraphmorphError(Exception):
    """Base class of every error graphmorph raises deliberately."""


class CaptureError(GraphmorphError):
    """A model could not be captured as a torch.fx graph."""


class ShapeError(GraphmorphError, ValueError):
    """An example input does not fit the model."""


class AnalysisError(GraphmorphError):
    """A graph lacks what an analysis needs (for example shapes in node.meta)."""


class RewriteError(GraphmorphError):
    """A graph rewrite cannot apply, or its result failed verification."""


class ExportError(GraphmorphError):
    """ONNX export failed, or the exported model disagrees with PyTorch."""


class ArchError(GraphmorphError, ValueError):
    """An architecture string or build option is not valid."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's messages run long)."""
    lines = [line for line in _ANSI.sub("", str(err)).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class ConfigError(GraphmorphError, ValueError):
    """A search or command-line option is unknown, out of range or not allowed here."""
