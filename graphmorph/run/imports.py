"""The callable a user names as `package.module:attribute` on the command line (a model or data
factory), imported with the current directory on `sys.path`, as `python -m` would."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__all__ = ["import_callable", "is_factory"]


def is_factory(spec: str) -> bool:
    """True for `package.module:factory` (a name with a colon that is no built-in form)."""
    return ":" in spec


def import_callable(spec: str, option: str, error: type[Exception]) -> Callable[..., Any]:
    """The callable named by `spec` (`attribute` may be dotted: `module:Class.make`); a failure
    raises `error` naming `option` and what to do."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise error(f"{option} {spec!r}: expected package.module:factory, e.g. mypackage.things:make")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise error(f"{option} {spec!r}: cannot import {module_name!r} ({err}); run from the folder that "
                    "holds it or add that folder to PYTHONPATH") from None
    except Exception as err:  # the user's module failed while importing
        raise error(f"{option} {spec!r}: importing {module_name!r} failed: {type(err).__name__}: {err}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise error(f"{option} {spec!r}: {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise error(f"{option} {spec!r}: {attribute!r} is a {type(target).__name__}, not a callable")
    return target
