"""FLOP and parameter counting on a captured graph.

Convention: `macs` are the multiply-accumulates of convolutions, transposed
convolutions, linear layers and matrix products of every form (matmul, bmm, baddbmm, einsum,
scaled_dot_product_attention, experts' grouped products); `flops` = 2 x `macs`, what `torch.utils.flop_counter.FlopCounterMode`
counts. Convolutions and linear layers are counted from their shapes. When the graph holds a node
whose cost does not follow from shapes (a leaf module, an `fx.wrap`-ped attention function, a
matrix product, an op this module does not list), every node is measured with FlopCounterMode
while the graph runs once on the example input, so the total equals FlopCounterMode on the
model, with autograd on (eval-mode attention's fused fast path is not counted) and with the
attention kernel of the CPU counted as FlopCounterMode counts the CUDA ones (it has no formula for
the CPU's, and would leave attention out on the CPU only). Everything else is counted apart
as `elementwise` operations, one per output element (normalisation: 2, scale and shift; pooling:
kernel area per output element, adaptive pooling: one per input element; a layer's bias: 1).
Counts are for the example input as given, batch included: pass batch size 1 for per-image numbers.
A mixture-of-experts layer is counted as it runs: each token through the top-k experts its router
picks for it (the grouped product's rows), not through every expert; the report says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from graphmorph.graph import ops
from graphmorph.graph.analysis import find_stages
from graphmorph.graph.capture import capture, example_inputs
from graphmorph.graph.registry import Registry
from graphmorph.graph.shapes import Inputs, with_shapes
from graphmorph.graph.verify import parameter_count

__all__ = ["Cost", "NodeCost", "FlopReport", "count_flops"]


@dataclass(frozen=True)
class Cost:
    """Work and size of a part of the network."""

    macs: int = 0
    elementwise: int = 0
    params: int = 0

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.macs + other.macs, self.elementwise + other.elementwise, self.params + other.params)


@dataclass(frozen=True)
class NodeCost:
    """The cost of one fx node and the part of the network (stem, stageN, head) it belongs to."""

    node: str
    target: str
    part: str
    cost: Cost


@dataclass(frozen=True)
class FlopReport:
    """MACs, FLOPs (2 x MACs), elementwise ops and parameters, in total, per part and per node."""

    input_shapes: tuple[tuple[int, ...], ...]
    total: Cost
    by_stage: dict[str, Cost]
    by_node: tuple[NodeCost, ...]
    stage_blocks: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()    # what the counts mean where that is not plain (routed experts)

    @property
    def macs(self) -> int:
        return self.total.macs

    @property
    def flops(self) -> int:
        return self.total.flops

    @property
    def elementwise(self) -> int:
        return self.total.elementwise

    @property
    def params(self) -> int:
        return self.total.params

    def table(self) -> str:
        """A per-part table with totals, as `graphmorph flops` prints it."""
        header = f"{'part':<8} {'blocks':>6} {'MACs':>10} {'FLOPs':>10} {'elementwise':>12} {'params':>10}"
        rows = [header, "-" * len(header)]
        for part, cost in [*self.by_stage.items(), ("total", self.total)]:
            blocks = self.stage_blocks.get(part, "")
            rows.append(
                f"{part:<8} {blocks!s:>6} {si(cost.macs):>10} {si(cost.flops):>10} "
                f"{si(cost.elementwise):>12} {si(cost.params):>10}"
            )
        return "\n".join([*rows, *self.notes])


def count_flops(model: nn.Module, example_input: torch.Tensor | Inputs | None = None, *,
                registry: Registry | None = None) -> FlopReport:
    """Count MACs, FLOPs, elementwise ops and parameters of `model` for `example_input`.

    `model` is a captured GraphModule (its captured example input is used when `example_input` is
    None) or any nn.Module, which is captured first. Breakdowns are per stage (plus `stem` and
    `head`) and per node. `registry` says which ops are activations or free of MACs (default:
    `Registry.default()`); an op it does not know is measured.
    """
    registry = registry or Registry.default()
    if not isinstance(model, fx.GraphModule):
        model = capture(model, example_input)
    # a node that may hide matrix products: measure every node, in the one run that gives the shapes
    measured = {} if any(_hides_macs(model, node, registry) for node in model.graph.nodes) else None
    if example_input is not None or measured is not None:
        model = with_shapes(model, example_inputs(model) if example_input is None else example_input, measured)
    part_of, stage_blocks = _parts(model, registry)
    seen_modules: set[int] = set()
    by_node, by_stage = [], {}
    for node in model.graph.nodes:
        # FlopCounterMode has no formula for experts' grouped products: counted from shapes
        by_measure = measured is not None and not ops.is_grouped_product(node)
        macs = measured.get(node.name, 0) // 2 if by_measure else _shape_macs(model, node)
        cost = Cost(macs, _elementwise(model, node, registry), _params(model, node, seen_modules))
        part = part_of[node]
        by_stage[part] = by_stage.get(part, Cost()) + cost
        by_node.append(NodeCost(node.name, _target_name(node), part, cost))
    total = sum(by_stage.values(), Cost())
    shapes = tuple(tuple(n.meta["tensor_meta"].shape) for n in model.graph.nodes
                   if n.op == "placeholder" and "tensor_meta" in n.meta)  # not an unused optional input
    routed = any(ops.is_grouped_product(node) for node in model.graph.nodes)
    notes = ("experts: MACs of the top-k experts each token is routed to, not of every expert",) if routed else ()
    return FlopReport(shapes, total, by_stage, tuple(by_node), stage_blocks, notes)


def si(value: float) -> str:
    """41223168 -> '41.22M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


def _parts(gm: fx.GraphModule, registry: Registry) -> tuple[dict[fx.Node, str], dict[str, int]]:
    """Each node's part: its stage; glue before the first block is the stem, glue between stages
    goes to the stage it leads into, glue after the last block is the head."""
    stage_of: dict[str, str] = {}
    stage_blocks = {}
    for stage in find_stages(gm, registry):
        label = f"stage{stage.index}"
        stage_blocks[label] = len(stage.blocks)
        for block in stage.block_info:
            stage_of.update((name, label) for name in block.nodes)
    part_of: dict[fx.Node, str] = {}
    pending: list[fx.Node] = []
    seen_stage = False
    for node in gm.graph.nodes:
        label = stage_of.get(node.name)
        if label is None:
            pending.append(node)
            continue
        part_of.update((p, label if seen_stage else "stem") for p in pending)
        pending, seen_stage = [], True
        part_of[node] = label
    part_of.update((p, "head") for p in pending)
    return part_of, stage_blocks


def _numel(node: fx.Node | None) -> int:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return math.prod(shape) if shape is not None else 0


def _shape_macs(gm: fx.GraphModule, node: fx.Node) -> int:
    """MACs of a convolution, transposed convolution or linear layer from its shapes (what
    FlopCounterMode counts for it); 0 for any other node `_hides_macs` lets through."""
    if ops.is_conv(gm, node) or ops.is_linear(gm, node):
        return _numel(node) * math.prod(_weight_shape(gm, node)[1:])
    if ops.is_conv_transpose(gm, node):
        return _numel(node.all_input_nodes[0]) * math.prod(_weight_shape(gm, node)[1:])
    if ops.is_grouped_product(node):   # one row per token and expert it is routed to: rows x out x in
        return _numel(node) * node.args[0].meta["tensor_meta"].shape[-1]
    return 0



def _hides_macs(gm: fx.GraphModule, node: fx.Node, registry: Registry) -> bool:
    """Whether a node's MACs may not follow from its shapes: a leaf module, a wrapped function,
    einsum, attention, or any op the registry does not know as an activation or free of MACs;
    count_flops then measures them."""
    return not (ops.is_conv(gm, node) or ops.is_linear(gm, node) or ops.is_conv_transpose(gm, node)
                or ops.is_grouped_product(node) or node.op in ("placeholder", "get_attr", "output") or ops.is_norm(gm, node)
                or ops.is_pool(gm, node) or ops.is_elementwise_binary(node)
                or not {"activation", "no_macs"}.isdisjoint(registry.facts(gm, node)))


def _weight_shape(gm: fx.GraphModule, node: fx.Node) -> torch.Size:
    module = ops.module_of(gm, node)
    if module is not None and ops.is_linear(gm, node) and ops.stores_weight_transposed(module):
        return module.weight.shape[::-1]
    if module is not None:
        return module.weight.shape
    return ops.layer_weight(node).meta["tensor_meta"].shape


def _elementwise(gm: fx.GraphModule, node: fx.Node, registry: Registry) -> int:
    """Elementwise operations of one node: a layer's bias adds, normalisation, pooling, activations
    and binary arithmetic, one per output element (see the module docstring)."""
    out = _numel(node)
    if ops.is_conv(gm, node) or ops.is_linear(gm, node) or ops.is_conv_transpose(gm, node):
        return out if ops.has_bias(gm, node) else 0
    if ops.is_norm(gm, node):
        return 2 * out
    if ops.is_pool(gm, node):
        return _pool_work(gm, node, out)
    if registry.has(gm, node, "activation") or ops.is_elementwise_binary(node):
        return out
    return 0


def _pool_work(gm: fx.GraphModule, node: fx.Node, out: int) -> int:
    module = ops.module_of(gm, node)
    kernel = getattr(module, "kernel_size", None) if module is not None else ops.argument(node, 1, "kernel_size")
    is_adaptive = "adaptive" in (type(module).__name__.lower() if module is not None else node.target.__name__)
    if is_adaptive or kernel is None:
        return _numel(node.all_input_nodes[0])
    rank = len(node.meta["tensor_meta"].shape) - 2
    sizes = (kernel,) * rank if isinstance(kernel, int) else tuple(kernel)
    return out * math.prod(sizes)


def _params(gm: fx.GraphModule, node: fx.Node, seen_modules: set[int]) -> int:
    """Parameters a node owns: a called module's (once, even if called twice) or a get_attr's."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if id(module) in seen_modules:
            return 0
        seen_modules.add(id(module))
        return parameter_count(module)
    if node.op == "get_attr":
        value = ops.attribute(gm, node.target)
        return value.numel() if isinstance(value, nn.Parameter) else 0
    return 0


def _target_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
