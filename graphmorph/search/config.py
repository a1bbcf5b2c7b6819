"""Reading a search's settings from a dict (a saved config.json, or command-line options)."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, TypeVar

from graphmorph.errors import ConfigError

__all__ = ["config_from_dict", "require"]

Config = TypeVar("Config")


def config_from_dict(cls: type[Config], values: dict[str, Any], label: str) -> Config:
    """`cls(**values)`, validated; unknown names are a ConfigError listing the known ones, and
    lists (as JSON stores tuples) become tuples."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {label} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    config.validate()
    return config


def require(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise ConfigError with the message of the first check that failed."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
