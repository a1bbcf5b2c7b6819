"""The callable a user names as `package.module:attribute` on the command line (a model or data
factory), imported with the current directory on `sys.path`, as `python -m` would.

A file graphmorph reads (a rewrite history, a run's saved settings) may name such a callable too,
but a file is data: its code is imported only when the user names the same callable as well
(`--allow-code`, or `allow_code=` in Python), as transformers' `trust_remote_code` asks."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Collection

__all__ = ["import_callable", "is_factory", "require_named"]


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


def require_named(spec: str, allow_code: Collection[str], where: str, error: type[Exception]) -> None:
    """Refuse to import `spec`, which the file `where` names, unless the user named it in `allow_code`."""
    if spec not in allow_code:
        raise error(f"{where} names the code {spec!r} to import and run; graphmorph runs only code you name: "
                    f"if you trust it, pass --allow-code {spec} (in Python: allow_code=[{spec!r}])")
