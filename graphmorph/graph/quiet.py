"""Silence torch.export and the ONNX exporter, whose failures graphmorph reports once, in its own error."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

_LOGGERS = ("torch.export", "torch._dynamo", "torch.fx.experimental", "torch.onnx", "onnxscript")


@contextlib.contextmanager
def quiet_torch_export() -> Iterator[None]:
    """Within the block: the exporters' loggers, warnings and progress prints are silenced."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
