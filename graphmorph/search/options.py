"""Command-line options generated from a config dataclass: a field with `option(...)` metadata is an
option whose help (and unit) is written once, beside the field, and whose default is the field's.

    K: int = field(default=3, metadata=option("epochs between growth checks", type=int))

`add_options(parser, AutoGrowConfig)` adds `--K` with help "epochs between growth checks
(default 3)" and default None, so `given_options(args, AutoGrowConfig)` returns only what the
user typed, and the config's own default applies to the rest.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable

from graphmorph.run.threads import threads_option

__all__ = ["option", "add_options", "given_options", "flag_of", "positive", "positive_float", "non_negative_float",
           "fraction", "sizes", "shape", "DATA", "FRACTION", "VAL_FRACTION", "BATCH_SIZE", "SEED", "DEVICE", "THREADS"]


def option(help: str, *, type: Callable[[str], Any] | None = None, default_text: str | None = None,
           flag: str | None = None, exclusive: str | None = None, **argparse_options: Any) -> dict[str, Any]:
    """Field metadata that makes the field a command-line option. `default_text` says the default
    where the field's own value (often None) does not; `flag` replaces `--field-name`; fields with
    the same `exclusive` group are mutually exclusive; the rest go to `add_argument`."""
    extra = {"type": type} if type is not None else {}
    return {"option": {"help": help, "default_text": default_text, "flag": flag, "exclusive": exclusive,
                       **extra, **argparse_options}}


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["option"]["flag"] or "--" + f.name.replace("_", "-")


def _options(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "option" in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls, only: tuple[str, ...] | None = None) -> None:
    """Add an option to `parser` for every option field of `cls` (or those named in `only`)."""
    groups: dict[str, Any] = {}
    for f in _options(cls):
        if only is not None and f.name not in only:
            continue
        spec = dict(f.metadata["option"])
        help_text, default_text, flag, exclusive = (spec.pop(k) for k in ("help", "default_text", "flag", "exclusive"))
        default = default_text if default_text is not None else _default(f)
        if default is not None:
            help_text += f" (default {default})"
        if exclusive is not None and exclusive not in groups:
            groups[exclusive] = parser.add_mutually_exclusive_group()
        target = groups[exclusive] if exclusive is not None else parser
        target.add_argument(flag or "--" + f.name.replace("_", "-"), dest=f.name, default=None, help=help_text, **spec)


def given_options(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The option fields of `cls` that the command line set, by field name."""
    return {f.name: getattr(args, f.name) for f in _options(cls) if getattr(args, f.name, None) is not None}


def _default(f: dataclasses.Field) -> Any:
    value = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(value, bool) or value is None or value == ():
        return None
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


# ---- parsers of option values: argparse turns their errors into a usage message and exit code 2


def _float_above(bound: float, strict: bool, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > bound if strict else value >= bound)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


positive_float = _float_above(0.0, True, "a positive number")
non_negative_float = _float_above(0.0, False, "a number >= 0")


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def sizes(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers: per-stage widths or counts."""
    return tuple(positive(part) for part in text.split(","))


def shape(text: str) -> tuple[int, int, int]:
    found = sizes(text.replace("x", ","))
    if len(found) != 3:
        raise argparse.ArgumentTypeError(f"expected C,H,W (three sizes, e.g. 1,8,8), got {text!r}")
    return found


# ---- options both searches take

DATA = option("digits (embedded), mnist:DIR, fashion-mnist:DIR, cifar10:DIR, cifar100:DIR, svhn:DIR, folder:DIR, "
              "or your own: package.module:factory returning (train, val, test) datasets or loaders",
              metavar="NAME[:DIR]|MODULE:FACTORY")
FRACTION = option("share of the training data to use", type=fraction)
VAL_FRACTION = option("validation share of the training data, held out for decisions", type=fraction)
BATCH_SIZE = option("batch size", type=positive)
SEED = option("random seed", type=int)
DEVICE = option("device", choices=("auto", "cpu", "cuda"), default_text="auto: cuda when present")
THREADS = option("CPU threads for training, verification and onnxruntime: N, or auto (time training steps of the net "
                 "on 1 thread and on all cores, keep all unless slower, fall back to 1 if the machine gets busy)",
                 type=threads_option, metavar="N|auto")
