"""The errors graphmorph raises on purpose: each names its cause and, where one exists, the fix;
and `Refusal`, the value a check returns when something cannot be done."""
import re
from typing import Iterable

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class GraphmorphError(Exception):
    """Base class of every error graphmorph raises deliberately."""


class CaptureError(GraphmorphError):
    """A model could not be captured as a torch.fx graph."""


class ShapeError(GraphmorphError, ValueError):
    """An example input does not fit the model."""


class AnalysisError(GraphmorphError):
    """A graph lacks what an analysis needs (for example shapes in node.meta)."""


class Refusal(str):
    """Why a rewrite or a channel group cannot go ahead, as a value: the sentence users read (a
    Refusal is that string, so it prints and matches as before) and `nodes`, the fx node names or
    module paths that caused it."""

    nodes: tuple[str, ...]

    def __new__(cls, reason: str, nodes: Iterable[str] = ()):
        refusal = super().__new__(cls, reason)
        refusal.nodes = tuple(dict.fromkeys(nodes))
        return refusal

    def __getnewargs__(self):
        return str(self), self.nodes

    def __repr__(self) -> str:
        return f"Refusal({str(self)!r}, nodes={self.nodes!r})"


def as_refusal(reason: "str | Refusal | None") -> "Refusal | None":
    """`reason` as a Refusal (a plain string names no nodes); None stays None."""
    return reason if reason is None or isinstance(reason, Refusal) else Refusal(reason)


class RewriteError(GraphmorphError):
    """A graph rewrite cannot apply, or its result failed verification; `refusal` keeps the
    reason with the nodes that caused it."""

    def __init__(self, message: str, refusal: Refusal | None = None):
        super().__init__(message)
        self.refusal = refusal if refusal is not None else Refusal(message)


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
