"""Hypothesis strategies and assertion helpers for property tests of graphmorph's rewrites and of
users' own morphisms (guide: docs/your-models.md).

Strategies draw plain, printable specs (`CNNSpec`, `SeedNetSpec`, `EnvelopeNetSpec`): a failing
example shrinks to a small recipe such as `CNNSpec(pieces=(('dense', 2, 1),), ...)` that
`.build()` turns back into the net. The helpers raise AssertionError with the measured error and
the tolerance, and compare in float64 on copies, so the models given are never changed.

Importable without pytest; needs hypothesis (`pip install graphmorph[test]`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch

try:
    from hypothesis import strategies as st
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("graphmorph.testing needs hypothesis: pip install 'graphmorph[test]'") from err

from graphmorph.errors import RewriteError
from graphmorph.grammar import PIECES, CNNSpec
from graphmorph.models import BRANCH_TYPES, FAMILIES, EnvelopeNet, SeedNet, build
from graphmorph.verify import output_differences, verify

__all__ = ["SeedNetSpec", "seed_nets", "EnvelopeNetSpec", "envelope_nets", "CNNSpec", "cnns", "inputs_for",
           "assert_preserves_function", "assert_prune_equals_mask", "assert_valid_rewrite"]


@dataclass(frozen=True)
class _NetSpec:
    arch: str
    input_size: int
    in_channels: int
    num_classes: int

    def example_input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """Seeded random images of the net's input shape."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.in_channels, self.input_size, self.input_size, generator=generator)


@dataclass(frozen=True)
class SeedNetSpec(_NetSpec):
    """A seed network to build, and the input it takes."""

    widths: tuple[int, ...] = ()

    def build(self) -> SeedNet:
        return build(self.arch, num_classes=self.num_classes, in_channels=self.in_channels, widths=self.widths)


@dataclass(frozen=True)
class EnvelopeNetSpec(_NetSpec):
    """An EnvelopeNet to build, and the input it takes."""

    def build(self) -> EnvelopeNet:
        return build(self.arch, num_classes=self.num_classes, in_channels=self.in_channels)


@st.composite
def envelope_nets(draw, max_stages: int = 2, max_cells: int = 3, min_branches: int = 1,
                  widths: tuple[int, ...] = (2, 3, 4), min_size: int = 4, max_size: int = 12) -> EnvelopeNetSpec:
    """Random EnvelopeNets `EnvelopeNet-C/n1-.../M`: narrow stems, 1..max_cells cells per stage,
    min_branches..6 branches per cell, small square inputs."""
    depths = draw(st.lists(st.integers(1, max_cells), min_size=1, max_size=max_stages))
    branches = draw(st.integers(min_branches, len(BRANCH_TYPES)))
    return EnvelopeNetSpec(
        arch=f"EnvelopeNet-{draw(st.sampled_from(widths))}/{'-'.join(map(str, depths))}/{branches}",
        input_size=draw(st.integers(min_size, max_size)),
        in_channels=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(2, 10)),
    )


@st.composite
def cnns(draw, max_pieces: int = 4, kinds: tuple[str, ...] = PIECES, widths: tuple[int, ...] = (2, 3, 4, 6),
         sizes: tuple[int, ...] = (4, 6, 8), min_pieces: int = 1) -> CNNSpec:
    """Random fx-traceable CNNs from `graphmorph.grammar`'s pieces (plain, residual, pre-activation,
    bottleneck, projection, DenseNet-style concat, depthwise, grouped, squeeze-excitation,
    inverted-residual, split, functional), min_pieces..max_pieces of them, strided or not, with a
    pooling or a flattening head, on small square inputs. Shrinks towards fewer, earlier-listed
    kinds and smaller widths."""
    unknown = set(kinds) - set(PIECES)
    if unknown:
        raise ValueError(f"unknown piece kind(s) {sorted(unknown)}; known: {', '.join(PIECES)}")
    pieces = draw(st.lists(
        st.tuples(st.sampled_from(kinds), st.sampled_from(widths), st.sampled_from((1, 2))),
        min_size=min_pieces, max_size=max_pieces))
    return CNNSpec(
        pieces=tuple(pieces),
        head=draw(st.sampled_from(("pool", "flatten"))),
        in_channels=draw(st.integers(1, 3)),
        input_size=draw(st.sampled_from(sizes)),
        num_classes=draw(st.integers(2, 5)),
    )


@st.composite
def seed_nets(
    draw,
    families: tuple[str, ...] = tuple(FAMILIES),
    max_depth: int = 4,
    min_size: int = 8,
    max_size: int = 64,
    base_widths: tuple[int, ...] = (2, 4, 8),
) -> SeedNetSpec:
    """Random seed networks: any family, 1..max_depth blocks per stage, square inputs of
    min_size..max_size pixels (keep min_size >= 2**(stages-1) so every stage has its own size),
    and narrow widths (base, 2 x base, ...) so examples stay fast on a CPU."""
    family = draw(st.sampled_from(families))
    stages = len(FAMILIES[family].default_widths)
    depths = draw(st.lists(st.integers(1, max_depth), min_size=stages, max_size=stages))
    base = draw(st.sampled_from(base_widths))
    return SeedNetSpec(
        arch=f"{family}-" + "-".join(map(str, depths)),
        widths=tuple(base * 2**i for i in range(stages)),
        input_size=draw(st.integers(min_size, max_size)),
        in_channels=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(2, 10)),
    )


def inputs_for(spec: _NetSpec | CNNSpec, max_batch: int = 4) -> st.SearchStrategy[torch.Tensor]:
    """Example inputs for a drawn spec: a batch of 1..max_batch seeded random images of its shape."""
    return st.builds(lambda batch, seed: spec.example_input(batch, seed),
                     st.integers(1, max_batch), st.integers(0, 2**16))


def assert_preserves_function(
    before: torch.nn.Module,
    after: torch.nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    modes: tuple[str, ...] = ("eval", "train"),
    atol: float = 1e-10,
) -> dict[str, float]:
    """Assert `after` computes what `before` computes, in float64, in each mode (train mode on the
    same batch, with the same dropout masks). Returns the largest difference per mode."""
    diffs = output_differences(before, after, inputs, modes)
    for mode, diff in diffs.items():
        assert diff <= atol, f"outputs differ by {diff:.3g} in {mode} mode (float64, atol {atol:g})"
    return diffs


def assert_prune_equals_mask(
    before: torch.nn.Module,
    pruned: torch.nn.Module,
    mask: torch.nn.Module | Callable[[torch.nn.Module], None],
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    modes: tuple[str, ...] = ("eval", "train"),
    atol: float = 1e-10,
) -> dict[str, float]:
    """Assert `pruned` computes what `before` computes with the pruned parts masked to zero, in
    float64, in each mode. `mask` is that masked model (zeroed weights, or a graph that feeds
    zeros), or a function that zeroes those parts in place on the copy of `before` it is given. A
    mask equal to `before` is refused: the test would pass for a rewrite that prunes nothing.
    Returns the largest difference per mode."""
    if callable(mask) and not isinstance(mask, torch.nn.Module):
        masked = copy.deepcopy(before)
        with torch.no_grad():
            mask(masked)
    else:
        masked = mask
    assert _differs(before, masked), \
        "the mask changed no parameter, buffer or graph of the model: it must zero what the rewrite removes"
    diffs = output_differences(masked, pruned, inputs, modes)
    for mode, diff in diffs.items():
        assert diff <= atol, (f"the pruned model differs from the masked one by {diff:.3g} in {mode} mode "
                              f"(float64, atol {atol:g})")
    return diffs


def _differs(before: torch.nn.Module, masked: torch.nn.Module) -> bool:
    """Whether `masked` has other state or (for GraphModules) another graph than `before`."""
    if isinstance(before, torch.fx.GraphModule) and isinstance(masked, torch.fx.GraphModule) \
            and before.code != masked.code:
        return True
    original, state = before.state_dict(), masked.state_dict()
    return set(original) != set(state) or any(not torch.equal(value, original[name]) for name, value in state.items())


def assert_valid_rewrite(
    before: torch.fx.GraphModule,
    after: torch.fx.GraphModule,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    param_delta: int,
) -> None:
    """Assert the structural contract: lint, shapes, same output shape, exact parameter delta, no
    dangling submodules, and `before` left as it was (its parameters are not shared with `after`)."""
    try:
        verify(before, after, inputs, param_delta=param_delta)
    except RewriteError as err:
        raise AssertionError(str(err)) from None
    shared = {id(p) for p in before.parameters()} & {id(p) for p in after.parameters()}
    assert not shared, f"{len(shared)} parameters are shared between the old and the new graph"
