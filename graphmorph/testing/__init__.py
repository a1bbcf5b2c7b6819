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

from graphmorph.graph import ops
from graphmorph.errors import RewriteError
from graphmorph.testing.grammar import PIECES, CNNSpec, TransformerSpec
from graphmorph.models import BRANCH_TYPES, FAMILIES, EnvelopeNet, SeedNet, build
from graphmorph.graph.verify import output_differences, verify

__all__ = ["SeedNetSpec", "seed_nets", "EnvelopeNetSpec", "envelope_nets", "CNNSpec", "cnns", "inputs_for",
           "assert_preserves_function", "assert_prune_equals_mask", "assert_valid_rewrite", "assert_state_carried",
           "randomize_state", "merge_edges", "TransformerSpec", "transformer_nets", "assert_widened", "output_shapes"]


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
    """Random fx-traceable CNNs from `graphmorph.testing.grammar`'s pieces (plain, residual, pre-activation,
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
def transformer_nets(draw, max_layers: int = 2, max_heads: int = 3, max_head_dim: int = 3,
                     max_grid: int = 3) -> TransformerSpec:
    """Random pre-norm transformer nets on tokens (`graphmorph.testing.grammar.TransformerSpec`):
    1..max_layers layers, 1..max_heads heads of 2..max_head_dim features, plain or gated MLPs."""
    return TransformerSpec(
        layers=draw(st.integers(1, max_layers)),
        heads=draw(st.integers(1, max_heads)),
        head_dim=draw(st.integers(2, max_head_dim)),
        mlp=draw(st.integers(1, 8)),
        gated=draw(st.booleans()),
        grid=draw(st.integers(1, max_grid)),
        in_channels=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(2, 4)),
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


def output_shapes(gm: torch.fx.GraphModule, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> dict[str, tuple]:
    """The shape of every node's tensor output on `inputs` (eval mode, on a copy), by node name and,
    for module calls, by module name too."""
    shapes: dict[str, tuple] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if isinstance(value, torch.Tensor):
                shapes[node.name] = tuple(value.shape)
                if node.op == "call_module":
                    shapes.setdefault(str(node.target), tuple(value.shape))
            return value

    model = copy.deepcopy(gm).eval()
    with torch.no_grad():
        Recorder(model).run(*(inputs if isinstance(inputs, tuple) else (inputs,)))
    return shapes


def assert_widened(
    before: torch.fx.GraphModule,
    after: torch.fx.GraphModule,
    target: str,
    n: int,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    modes: tuple[str, ...] = ("eval", "train"),
    atol: float = 1e-10,
    copies_only: bool = True,
) -> dict[str, float]:
    """Assert a widening: `target`'s output (a module or node name) has `n` more channels along one
    dimension, measured by running both graphs; every parameter and buffer of `before` is in
    `after` with no dimension smaller; with `copies_only` (zero-init widening), each is an ordered
    selection of the new one's slices (old values untouched, BatchNorm statistics included); and
    `after` computes what `before` does in float64 in each mode. Returns the largest difference per mode."""
    old, new = output_shapes(before, inputs)[target], output_shapes(after, inputs)[target]
    grown = [d for d, (a, b) in enumerate(zip(old, new)) if a != b]
    assert len(old) == len(new) and len(grown) == 1 and new[grown[0]] - old[grown[0]] == n, \
        f"{target}'s output went from {old} to {new}; expected {n} more channels along one dimension"
    state, widened = before.state_dict(), after.state_dict()
    for name, tensor in state.items():
        assert name in widened, f"the widening lost {name}"
        assert tensor.dim() == widened[name].dim() and all(
            a <= b for a, b in zip(tensor.shape, widened[name].shape)), \
            f"{name} went from {tuple(tensor.shape)} to {tuple(widened[name].shape)}: a widening only grows tensors"
    if copies_only:
        assert_state_carried(before, after, resized=True)
    return assert_preserves_function(before, after, inputs, modes, atol)


def merge_edges(gm: torch.fx.GraphModule) -> list[tuple[str, str]]:
    """Every (merge node, input node) pair of a captured graph's adds and concatenations: the
    edges `transforms.prune_skip_edges` may be asked to drop."""
    return [(m.name, i.name) for m in gm.graph.nodes if ops.is_add(m) or ops.is_cat(m) for i in m.all_input_nodes]


def randomize_state(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer of `model` distinct seeded random values, in place (running
    variances positive, counters random integers), so that a state comparison cannot pass by
    accident on freshly initialised BatchNorm ones and zeros. Returns `model`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in (*model.named_parameters(), *model.named_buffers()):
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator, dtype=torch.float64) + 0.5
                tensor.copy_(values if name.endswith("running_var") else values - 1.0)
            else:
                tensor.copy_(torch.randint(1, 1000, tensor.shape, generator=generator))
    return model


def assert_state_carried(
    before: torch.nn.Module,
    after: torch.nn.Module,
    added: tuple[str, ...] = (),
    removed: tuple[str, ...] = (),
    resized: bool = False,
) -> dict[str, list[list[int] | None]]:
    """Assert that every parameter and buffer of `after` that the rewrite did not add equals the
    one of `before` with the same name bit for bit (BatchNorm statistics and counters included).

    `added` and `removed` are name prefixes (module paths) of the state the rewrite added or took
    away; no other name may appear or vanish. With `resized`, a tensor may shrink (pruned channels)
    or grow (a new input) along some dimensions: the smaller one must then be an ordered selection
    of the larger one's slices along those dimensions, found here by matching values, not from
    the rewrite's own bookkeeping. Returns, per resized tensor, the kept (or inserted) indices per
    dimension (None where the size did not change)."""
    old, new = before.state_dict(), after.state_dict()

    def under(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    appeared = sorted(n for n in set(new) - set(old) if not under(n, added))
    vanished = sorted(n for n in set(old) - set(new) if not under(n, removed))
    assert not appeared, f"the rewrite added state it did not declare: {appeared[:5]}"
    assert not vanished, f"the rewrite lost state it did not declare: {vanished[:5]}"
    selections = {}
    for name in sorted(set(old) & set(new)):
        if under(name, added) or under(name, removed):
            continue
        a, b = old[name], new[name]
        assert a.dtype == b.dtype, f"{name}: dtype {b.dtype}, was {a.dtype}"
        if a.shape == b.shape:
            assert torch.equal(a, b), f"{name} changed: max |diff| {_max_diff(a, b):.3g} (expected bit-for-bit equal)"
            continue
        assert resized, f"{name} changed shape from {tuple(a.shape)} to {tuple(b.shape)}"
        assert a.dim() == b.dim(), f"{name} changed rank from {a.dim()} to {b.dim()}"
        small, large = (b, a) if all(x <= y for x, y in zip(b.shape, a.shape)) else (a, b)
        assert all(x <= y for x, y in zip(small.shape, large.shape)), \
            f"{name} grew along some dimensions and shrank along others: {tuple(a.shape)} -> {tuple(b.shape)}"
        dims = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
        groups = _kept_groups(before, after, name)
        if groups > 1:  # each group reads its own inputs: its block of the weight is selected alone
            blocks = [_ordered_selection(s, l, dims) for s, l in zip(small.chunk(groups), large.chunk(groups))]
            kept = None if None in blocks else {0: [i for b in blocks for i in b.get(0, [])]}
        else:
            kept = _ordered_selection(small, large, dims)
        assert kept is not None, (f"{name} ({tuple(a.shape)} -> {tuple(b.shape)}) is not an ordered selection of "
                                  f"the {'old' if large is a else 'new'} tensor's slices: its values changed")
        selections[name] = [kept.get(d) for d in range(a.dim())]
    return selections


def _kept_groups(before: torch.nn.Module, after: torch.nn.Module, name: str) -> int:
    """The group count of the grouped convolution whose weight `name` is, when pruning kept it."""
    path, _, leaf = name.rpartition(".")
    if leaf != "weight":
        return 1
    try:
        old, new = before.get_submodule(path), after.get_submodule(path)
    except AttributeError:
        return 1
    groups = getattr(new, "groups", 1)
    return groups if isinstance(old, torch.nn.modules.conv._ConvNd) and getattr(old, "groups", 1) == groups else 1


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _ordered_selection(small: torch.Tensor, large: torch.Tensor, dims: list[int]) -> dict[int, list[int]] | None:
    """Increasing indices per dimension in `dims` such that `large` indexed by them equals `small`
    bit for bit, or None. Greedy per dimension (the earliest matching slice is always a safe
    choice), recursing into the remaining dimensions, whose choice must agree across slices."""
    if not dims:
        return {} if torch.equal(small, large) else None
    dim, rest = dims[0], dims[1:]
    chosen, inner = [], None
    j = 0
    for i in range(small.shape[dim]):
        while j < large.shape[dim]:
            found = _ordered_selection(small.select(dim, i), large.select(dim, j), [d - 1 if d > dim else d for d in rest])
            j += 1
            if found is not None and (inner is None or found == inner):
                chosen.append(j - 1)
                inner = found
                break
        else:
            return None
    result = {dim: chosen}
    result.update({d + 1 if d >= dim else d: v for d, v in (inner or {}).items()})
    return result
