"""Seed networks by name: `build("Basic3ResNet-3-3-3")` and back with `arch_of`."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import fx, nn

from graphmorph.errors import ArchError
from graphmorph.graph import ops
from graphmorph.graph.verify import parameter_count
from graphmorph.models.blocks import BasicBlock, Bottleneck, PlainBlock
from graphmorph.models.envelope import BRANCH_TYPES, EnvelopeNet, envelope_arch, envelope_structure, parse_envelope
from graphmorph.models.seeds import FAMILIES, STEMS, SeedNet
from graphmorph.models.size import check_size, meta_parameters, size_limits

__all__ = [
    "FAMILIES", "SeedNet", "BasicBlock", "Bottleneck", "PlainBlock", "EnvelopeNet", "BRANCH_TYPES",
    "build", "arch_of", "parse_arch", "valid_forms", "envelope_arch", "envelope_structure", "check_arch", "read_structure",
    "structure_label", "size_limits",
]

_ARCH = re.compile(r"^([A-Za-z0-9]+)-(\d+(?:-\d+)*)$")


def valid_forms() -> str:
    """The accepted architecture strings, for error messages and --help."""
    forms = (
        f"{name}-" + "-".join("N" for _ in cls.default_widths) for name, cls in FAMILIES.items()
    )
    return (", ".join(forms) + " (N >= 1 blocks per stage, e.g. Basic3ResNet-3-3-3), "
            "EnvelopeNet-C/n1-n2-.../M (e.g. EnvelopeNet-128/2-2-2/6), or a NAC run's architecture.json")


def check_arch(arch: str) -> None:
    """Raise ArchError unless `arch` names a net `build` can make: a seed net, an EnvelopeNet
    string, or the path of an EnvelopeNet structure file (a NAC run's architecture.json)."""
    if isinstance(arch, str) and arch.endswith(".json"):
        EnvelopeNet.from_structure(read_structure(arch))
    elif isinstance(arch, str) and arch.startswith("EnvelopeNet-"):
        parse_envelope(arch)
    else:
        parse_arch(arch)


def read_structure(path: str | Path) -> dict:
    """The EnvelopeNet structure in a JSON file (`envelope_arch`'s form, as NAC writes it)."""
    try:
        structure = json.loads(Path(path).read_text())
    except OSError as err:
        raise ArchError(f"cannot read the architecture file {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise ArchError(f"{path} is not JSON: {err}") from None
    if not isinstance(structure, dict) or structure.get("family") != "EnvelopeNet":
        raise ArchError(f"{path} is not an EnvelopeNet structure (a NAC run's architecture.json)")
    return structure


def structure_label(structure: dict) -> str:
    """A name for a constructed EnvelopeNet that tells apart nets the EnvelopeNet-C/n1-.../M form
    cannot: stem width, cells per stage, branch and skip counts, and a digest of the structure."""
    cells = [cell for stage in structure["stages"] for cell in stage["cells"]]
    branches = sum(len(cell["branches"]) for cell in cells)
    skips = sum(len(cell["skips"]) for cell in cells) + sum(len(s["output_skips"]) for s in structure["stages"])
    depths = "-".join(str(len(stage["cells"])) for stage in structure["stages"])
    digest = hashlib.sha1(json.dumps(structure, sort_keys=True).encode()).hexdigest()[:6]
    return f"EnvelopeNet-{structure['width']}/{depths} ({branches} branches, {skips} skips, #{digest})"


def parse_arch(arch: str) -> tuple[type[SeedNet], tuple[int, ...]]:
    """Split 'Family-n1-n2-...' into the seed-net class and per-stage depths; ArchError if invalid."""
    match = _ARCH.match(arch.strip()) if isinstance(arch, str) else None
    if not match or match.group(1) not in FAMILIES:
        raise ArchError(f"unknown architecture {arch!r}; valid forms: {valid_forms()}")
    cls = FAMILIES[match.group(1)]
    depths = tuple(int(d) for d in match.group(2).split("-"))
    stages = len(cls.default_widths)
    if len(depths) != stages or min(depths) < 1:
        raise ArchError(
            f"{arch!r}: {cls.family} needs {stages} depths of at least 1; valid forms: {valid_forms()}"
        )
    return cls, depths


def build(
    arch: str | dict,
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Sequence[int] | None = None,
    stem: str | None = None,
    branches: Sequence[str] | None = None,
) -> nn.Module:
    """Build a network from its name, e.g. `build("Plain4Net-2-1-1-1", widths=(16, 32, 64, 128))`
    or `build("EnvelopeNet-128/2-2-2/6")`.

    Seed nets: `widths` are the per-stage channel counts (bottleneck blocks output 4x that); `stem`
    is "cifar" (3x3 stride 1, the default) or "imagenet" (7x7 stride 2 and a max-pool).
    EnvelopeNets: the first M of `branches` (default `BRANCH_TYPES`) form every cell; a dict in
    `envelope_arch`'s JSON form builds a constructed EnvelopeNet with fresh weights.

    A net past the size limits (`graphmorph.models.size`: 100M parameters, 2,000 blocks or
    branches) is refused before anything is allocated.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ArchError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ArchError(f"in_channels must be a positive integer, got {in_channels!r}")
    if isinstance(arch, str) and arch.endswith(".json"):
        arch = read_structure(arch)
    if isinstance(arch, dict):
        if widths is not None or stem is not None or branches is not None:
            raise ArchError("widths=, stem= and branches= do not apply to an EnvelopeNet structure")
        make = lambda: EnvelopeNet.from_structure(arch, num_classes=num_classes, in_channels=in_channels)
        layers = sum(len(cell.get("branches", ())) for stage in arch.get("stages", ()) for cell in stage.get("cells", ()))
        check_size(structure_label(arch) if layers else "the EnvelopeNet structure", layers,
                   lambda: meta_parameters(make))
        return make()
    if isinstance(arch, str) and arch.startswith("EnvelopeNet-"):
        return _build_envelope(arch, num_classes, in_channels, widths, stem, branches)
    if branches is not None:
        raise ArchError("branches= applies to EnvelopeNets only")
    stem = stem or "cifar"
    cls, depths = parse_arch(arch)
    if widths is not None:
        widths = tuple(widths)
        if len(widths) != len(depths) or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ArchError(
                f"widths must be {len(depths)} positive integers for {cls.family}, got {widths!r}"
            )
    if stem not in STEMS:
        raise ArchError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")

    def make(stage_depths):
        return cls(stage_depths, num_classes=num_classes, in_channels=in_channels, widths=widths, stem=stem)

    check_size(f"{arch} with {num_classes:,} classes", sum(depths), lambda: _seed_parameters(make, depths))
    return make(depths)


def _seed_parameters(make, depths: tuple[int, ...]) -> int:
    """A seed net's parameters from one net of two blocks per stage, built on the meta device:
    every block after a stage's first is the same, so the count is linear in the depths."""
    with torch.device("meta"):
        net = make((2,) * len(depths))
    repeated = [stage[1] for stage in net.stage_modules()]   # a stage's second block, as every later one
    return parameter_count(net) + sum((depth - 2) * parameter_count(block) for depth, block in zip(depths, repeated))


def _build_envelope(arch, num_classes, in_channels, widths, stem, branches) -> EnvelopeNet:
    if widths is not None or stem is not None:
        raise ArchError("widths= and stem= apply to seed nets; an EnvelopeNet's width is its C")
    width, depths, count = parse_envelope(arch)
    branch_set = tuple(branches) if branches is not None else BRANCH_TYPES
    if count > len(branch_set):
        raise ArchError(f"{arch!r} asks for {count} branches per cell, but the branch set has {len(branch_set)}: "
                        f"{', '.join(branch_set)}")
    make = lambda: EnvelopeNet(width, depths, branch_set[:count], num_classes=num_classes, in_channels=in_channels)
    check_size(f"{arch} with {num_classes:,} classes", sum(depths) * count, lambda: meta_parameters(make))
    return make()


def arch_of(model: nn.Module) -> str:
    """The architecture string of a seed net, an EnvelopeNet, or a captured (possibly rewritten)
    GraphModule of either.

    For a GraphModule the depths are the block counts of `graphmorph.find_stages`, so grown nets
    read back correctly; its name is its original model class (e.g. a user model's class name).
    """
    if isinstance(model, SeedNet):
        return f"{model.family}-" + "-".join(str(len(s)) for s in model.stage_modules())
    if isinstance(model, EnvelopeNet):
        return _envelope_string(model)
    if isinstance(model, fx.GraphModule):
        from graphmorph.graph.analysis import find_stages
        from graphmorph.graph.capture import model_name

        family = model_name(model)
        if family == "EnvelopeNet":
            return _envelope_string(model)
        nodes = ops.nodes_by_name(model.graph)
        depths = [sum(_holds_parameters(model, nodes, block) for block in stage.block_info)
                  for stage in find_stages(model)]
        expected = len(FAMILIES[family].default_widths) if family in FAMILIES else None
        if expected is not None and len(depths) != expected:
            raise ArchError(
                f"found {len(depths)} stage{'' if len(depths) == 1 else 's'} in this {family}, expected {expected}: "
                f"capture it with an "
                f"input of at least {2 ** (expected - 1)} pixels so every stage has its own size"
            )
        return f"{family}-" + "-".join(map(str, depths))
    raise ArchError(
        f"arch_of expects a seed network or a captured GraphModule, got {type(model).__name__}"
    )


def _holds_parameters(gm: fx.GraphModule, nodes: dict[str, fx.Node], block) -> bool:
    """Whether a block has a layer with parameters (`nodes`: the graph's, by name): what
    `remove_block` leaves of a block (the activation after its add) is no block of the depth."""
    for name in block.nodes:
        node = nodes[name]
        if node.op == "get_attr" or (node.op == "call_module" and
                                     next(gm.get_submodule(node.target).parameters(), None) is not None):
            return True
    return False


def _envelope_string(model: nn.Module) -> str:
    """EnvelopeNet-C/n1-n2-.../M with M the most branches of any cell (constructed nets vary:
    `envelope_arch` gives the per-cell detail)."""
    arch = envelope_arch(model)
    width = model.get_submodule("stem.0").out_channels
    depths = "-".join(str(len(stage["cells"])) for stage in arch["stages"])
    most = max(len(cell["branches"]) for stage in arch["stages"] for cell in stage["cells"])
    return f"EnvelopeNet-{width}/{depths}/{most}"
