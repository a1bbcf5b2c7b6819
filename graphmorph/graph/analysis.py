"""Graph analysis: the dataflow view of a captured model, its blocks and its stages.

How blocks are found, structure first and names second:

1. The *dataflow graph* holds the nodes that carry tensors from an input to the output.
2. Its *spine* is the chain of dominators of the output: nodes every input-to-output path
   crosses. Between two consecutive spine nodes lies a *segment*: one op, or a parallel region
   that ends in a merge (`add`: residual, `cat`: dense or parallel branches, `mul`: a gate such as
   squeeze-excitation).
3. A *core* is an `add`/`cat` segment with a weighted layer inside. A core's block is the smallest
   module that covers a contiguous run of segments containing that core and no other, so a
   block's leading pre-activation and trailing ReLU join it; a core without such a module is a
   block of its own, named after its first weighted layer.
4. In nets with cores, glue modules of the same class as a core block (a MobileNetV2 block with
   stride 2 has no shortcut) are blocks too. Nets without cores use the modules holding exactly
   one weighted layer (conv-BN-ReLU sub-modules), or else, for flat `nn.Sequential` nets, units
   made of a weighted layer and the non-pooling ops that follow it.
5. Stages are maximal runs of blocks with the same output spatial size.
"""
from __future__ import annotations

import bisect
import operator
from dataclasses import dataclass
from typing import Collection, Literal

import networkx as nx
import torch
from torch import fx, nn

from graphmorph.graph.memo import memoized
from graphmorph.graph import ops
from graphmorph.graph.capture import INPUT_SPEC_KEY, example_inputs
from graphmorph.graph.registry import Registry
from graphmorph.errors import AnalysisError, RewriteError
from graphmorph.graph.shapes import annotate_shapes, has_shapes

__all__ = ["Block", "Stage", "dataflow_graph", "find_blocks", "block_named", "find_stages", "upstream", "common_prefix"]

BlockKind = Literal["residual", "dense", "branches", "plain"]
Shortcut = Literal["identity", "projection"]

_SOURCE = "__graphmorph_source__"


@dataclass(frozen=True)
class Block:
    """One sub-module of a network (AutoGrow's unit of growth).

    Shapes exclude the batch dimension. `last_affine` is the fx node of the last affine layer on the
    residual (or new-features) branch, or of a plain block's own path: a BatchNorm, a conv/linear
    when the branch ends in one, or a layer scale (a product with a parameter, ConvNeXt's gamma).
    It is None when a non-zero-preserving op follows it. `last_affine_module` is what an init sets:
    that layer's module, the layer scale's parameter, or an attention module's output projection.
    A block of several residual branches (a transformer layer: attention, then an MLP) has one such
    target per branch in `initialised`, in graph order; `last_affine` is the last branch's, and both
    are None when any branch has none. A target silences its branch at zero, or at the value in
    `silent_at` (a norm scaling by `1 + weight`: -1). Where a branch has none, `unsilenced` names
    the node the walk back from its end could not pass.
    """

    name: str                      # qualified module name, or its first weighted layer's name
    kind: BlockKind
    nodes: tuple[str, ...]         # fx node names, in graph order
    input_node: str                # the node whose output enters the block
    output_node: str               # the node whose output leaves the block
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    shortcut: Shortcut | None
    shortcut_nodes: tuple[str, ...]
    last_affine: str | None
    last_affine_module: str | None
    named_by_module: bool          # True when `name` is a module that holds exactly this block
    initialised: tuple[str, ...] = ()
    silent_at: tuple[float, ...] = ()   # per `initialised` target, the value filling it silences its branch
    unsilenced: str | None = None      # where no target was found: the node a branch's walk could not pass

    @property
    def residual(self) -> bool:
        return self.kind == "residual"

    @property
    def growable(self) -> bool:
        """Shape-preserving, so a copy can be stacked after it."""
        return self.in_shape is not None and self.in_shape == self.out_shape

    @property
    def reduces(self) -> bool:
        """Changes the spatial size (the first block of a stage usually does)."""
        return _spatial(self.in_shape) != _spatial(self.out_shape)


@dataclass(frozen=True)
class Stage:
    """A maximal run of blocks with the same output spatial size (AutoGrow's sub-network)."""

    index: int
    blocks: tuple[str, ...]
    out_shape: tuple[int, ...]
    block_info: tuple[Block, ...]


def dataflow_graph(gm: fx.GraphModule) -> nx.DiGraph:
    """A networkx view of the nodes that carry tensors from the inputs to the output.

    Vertices are fx nodes; parameters (get_attr), constants and non-tensor values such as
    `x.size(0)` are left out, and so are computations that do not reach the output.
    """
    _require_shapes(gm)
    nodes = list(gm.graph.nodes)
    output = nodes[-1]
    reached: set[fx.Node] = set()
    for n in nodes:
        carries = n.op == "output" or "tensor_meta" in n.meta
        if n.op == "placeholder" and carries:
            reached.add(n)
        elif carries and n.op != "get_attr" and any(i in reached for i in n.all_input_nodes):
            reached.add(n)
    live = {output}
    for n in reversed(nodes):
        if n in live:
            live.update(i for i in n.all_input_nodes if i in reached)
    graph = nx.DiGraph()
    for n in nodes:
        if n in live:
            graph.add_node(n)
            graph.add_edges_from((i, n) for i in n.all_input_nodes if i in live)
    return graph


@memoized
def find_blocks(gm: fx.GraphModule, registry: Registry | None = None) -> list[Block]:
    """Every block of the network in graph order, spatial or not (see the module docstring);
    `registry` says which ops keep zero at zero (default: `Registry.default()`)."""
    return _Analysis(gm, registry or Registry.default()).blocks()


def block_named(gm: fx.GraphModule, name: str, what: str = "block", registry: Registry | None = None) -> Block:
    """The block `name` of `find_blocks`; RewriteError listing the net's blocks when there is none."""
    blocks = find_blocks(gm, registry)
    found = next((block for block in blocks if block.name == name), None)
    if found is None:
        shown = ", ".join(b.name for b in blocks[:12]) + (", ..." if len(blocks) > 12 else "")
        raise RewriteError(f"no {what} named {name!r}; the net's blocks are: {shown}")
    return found


def find_stages(gm: fx.GraphModule, registry: Registry | None = None) -> list[Stage]:
    """The ordered stages: maximal runs of blocks with the same output spatial size."""
    stages: list[list[Block]] = []
    for block in find_blocks(gm, registry):
        if _spatial(block.out_shape) is None:
            continue
        if stages and _spatial(stages[-1][-1].out_shape) == _spatial(block.out_shape):
            stages[-1].append(block)
        else:
            stages.append([block])
    return [
        Stage(i, tuple(b.name for b in blocks), blocks[-1].out_shape, tuple(blocks))
        for i, blocks in enumerate(stages)
    ]


# --------------------------------------------------------------------------- implementation


@dataclass(frozen=True)
class _Segment:
    entry: fx.Node
    exit: fx.Node
    inner: frozenset[fx.Node]
    merge: str                     # "op" | "add" | "cat" | "gate" | "other"
    weighted: int                  # weighted layers among inner + exit

    @property
    def nodes(self) -> list[fx.Node]:
        return [*self.inner, self.exit]

    @property
    def is_core(self) -> bool:
        return self.merge in ("add", "cat") and self.weighted > 0


@dataclass(frozen=True)
class _Unit:
    lo: int                        # first segment
    hi: int                        # last segment
    name: str
    named_by_module: bool


class _Analysis:
    """One pass over a GraphModule: spine, segments, aligned modules, units and blocks."""

    def __init__(self, gm: fx.GraphModule, registry: Registry):
        self.gm, self.registry = gm, registry
        self.graph = dataflow_graph(gm)
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.segments = self._segments()
        self.classes = self._module_classes()
        self.aligned = self._aligned_modules()

    # ---- spine and segments

    def _segments(self) -> list[_Segment]:
        graph = self.graph.copy()
        for p in [n for n in graph if n.op == "placeholder"]:
            graph.add_edge(_SOURCE, p)
        output = max(self.graph, key=self.order.__getitem__)
        idom = nx.immediate_dominators(graph, _SOURCE)
        chain = [output]
        while chain[-1] != _SOURCE:
            chain.append(idom[chain[-1]])
        spine = chain[::-1]
        spine_index = {n: k for k, n in enumerate(spine)}
        segment_of: dict[fx.Node, int] = {}
        inner: list[set[fx.Node]] = [set() for _ in spine[:-1]]
        for n in sorted(self.graph, key=self.order.__getitem__):
            if n in spine_index:
                continue
            d = idom[n]
            segment_of[n] = spine_index[d] if d in spine_index else segment_of[d]
            inner[segment_of[n]].add(n)
        segments = []
        for k in range(len(spine) - 1):
            entry, exit_ = spine[k], spine[k + 1]
            if exit_.op == "output":
                break
            members = frozenset(inner[k])
            weighted = sum(self._learned(n) for n in [*members, exit_])
            segments.append(_Segment(entry, exit_, members, self._merge_kind(exit_, members), weighted))
        return segments

    @staticmethod
    def _merge_kind(exit_: fx.Node, inner: frozenset[fx.Node]) -> str:
        if not inner:
            return "op"
        if ops.is_add(exit_):
            return "add"
        if ops.is_cat(exit_):
            return "cat"
        if ops.is_mul(exit_):
            return "gate"
        return "other"

    # ---- modules that line up with the spine

    def _module_classes(self) -> dict[str, type]:
        classes: dict[str, type] = {}
        for n in self.gm.graph.nodes:
            for path, cls in (n.meta.get("nn_module_stack") or {}).values():
                classes.setdefault(path, cls)
            if n.op == "call_module":
                classes.setdefault(str(n.target), type(self.gm.get_submodule(n.target)))
        return classes

    def _aligned_modules(self) -> dict[str, tuple[int, int]]:
        """Modules whose dataflow nodes are exactly the nodes of a contiguous run of segments."""
        count: dict[str, int] = {}
        span: dict[str, tuple[int, int]] = {}
        for k, segment in enumerate(self.segments):
            for n in segment.nodes:
                path = ops.module_path(n)
                parts = path.split(".") if path else []
                for depth in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:depth])
                    count[prefix] = count.get(prefix, 0) + 1
                    lo, hi = span.get(prefix, (k, k))
                    span[prefix] = (min(lo, k), max(hi, k))
        self.node_count = count
        sizes = [0]
        for segment in self.segments:
            sizes.append(sizes[-1] + len(segment.nodes))
        return {
            p: (lo, hi) for p, (lo, hi) in span.items() if count[p] == sizes[hi + 1] - sizes[lo]
        }

    # ---- units

    def _units(self) -> list[_Unit]:
        cores = [k for k, s in enumerate(self.segments) if s.is_core]
        units = self._layers([self._core_unit(k, cores) for k in cores])
        if cores:
            classes = {self.classes.get(u.name) for u in units if u.named_by_module}
            classes.discard(None)
            units += self._module_units(units, lambda p, lo, hi: self.classes.get(p) in classes)
        else:
            leaves = {str(n.target) for n in self.gm.graph.nodes if n.op == "call_module"}
            units = self._module_units(
                [], lambda p, lo, hi: p not in leaves and self._weighted_in(lo, hi) == 1
            )
            if not units:
                units = self._structural_units()
        return sorted(units, key=lambda u: u.lo)

    def _core_unit(self, k: int, cores: list[int]) -> _Unit:
        """The smallest aligned module around core k that holds no other core."""
        segment = self.segments[k]
        path = ops.module_path(segment.exit)
        parts = path.split(".") if path else []
        best = None
        for depth in range(len(parts), 0, -1):
            prefix = ".".join(parts[:depth])
            if prefix not in self.aligned:
                continue
            lo, hi = self.aligned[prefix]
            if lo <= k <= hi and self._cores_in(cores, lo, hi) == 1:
                best = _Unit(lo, hi, prefix, True)
                break
        return best or _Unit(k, k, self._fallback_name(k, k), False)

    def _layers(self, units: list[_Unit]) -> list[_Unit]:
        """Join residual branches written one after another in one module's forward (a transformer
        layer: `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`) into one unit named by that module:
        first branches no module of their own holds, then what is left of them with branches the
        module's own children hold (BERT's `layer.0.attention` beside the MLP written in `layer.0`)."""
        return self._sublayers(self._join(self._join(units, mixed=False), mixed=True))

    def _sublayers(self, units: list[_Unit]) -> list[_Unit]:
        """Join consecutive units of different module classes that start the one module around
        them and are all of it: a layer made of sublayers (T5's block of an attention and a
        feed-forward sublayer, DistilBERT's attention and FFN with its norms). Named by the
        outermost module of that span with a forward of its own (`block.0`, not its ModuleList
        `block.0.layer`); a container (Sequential, ModuleList) is a run of blocks, not a layer, so
        blocks of different classes in one stage (EdgeNeXt's) stay blocks."""
        joined: list[_Unit] = []
        for unit in units:
            if joined and joined[-1].lo <= unit.lo <= joined[-1].hi:
                continue
            parts, span, best = unit.name.split("."), None, None
            for depth in range(len(parts) - 1, 0, -1):
                prefix = ".".join(parts[:depth])
                lo, hi = self.aligned.get(prefix, (-1, -1))
                if span is not None and (lo, hi) != span:
                    break
                inside = [u for u in units if lo <= u.lo <= hi]
                classes = [self.classes.get(u.name) for u in inside]
                if lo == unit.lo and len(inside) > 1 and all(u.hi <= hi for u in inside) \
                        and None not in classes and len(set(classes)) == len(classes):
                    span = (lo, hi)
                    if _is_layer(self.classes.get(prefix)):
                        best = _Unit(lo, hi, prefix, True)
            joined.append(best or unit)
        return joined

    def _join(self, units: list[_Unit], mixed: bool) -> list[_Unit]:
        """One pass of `_layers`: the smallest aligned module around a loose branch that holds only
        loose branches (with `mixed`, also its children's), after ops without weights (a cast of
        the residual stream) and before more (BERT's norms after its adds)."""
        loose = {u.lo: u for u in units if not u.named_by_module and not self._held(u.lo, u.hi)}
        joined: list[_Unit] = []
        for unit in units:
            if joined and joined[-1].lo <= unit.lo <= joined[-1].hi:
                continue
            if unit.lo in loose or (mixed and any(u.lo in loose for u in units if u.lo > unit.lo)):
                path = ops.module_path(self.segments[unit.lo].exit)
                parts = path.split(".") if path else []
                for depth in range(len(parts), 0, -1):
                    prefix = ".".join(parts[:depth])
                    lo, hi = self.aligned.get(prefix, (-1, -1))
                    inside = [u for u in units if lo <= u.lo <= hi]
                    leading = all(self.segments[j].merge == "op" and not self.segments[j].weighted
                                  for j in range(max(lo, 0), unit.lo))   # a cast, a reshape before the first branch
                    held = all(u.lo in loose or (mixed and u.name.rpartition(".")[0] == prefix) for u in inside)
                    if 0 <= lo <= unit.lo and leading and len(inside) > 1 and held \
                            and any(u.lo in loose for u in inside):
                        unit = _Unit(lo, hi, prefix, True)
                        break
            joined.append(unit)
        return joined

    def _held(self, lo: int, hi: int) -> bool:
        """Whether one module holds exactly the segments' nodes other than the last merge."""
        return self._holder(lo, hi) is not None

    @staticmethod
    def _cores_in(cores: list[int], lo: int, hi: int) -> int:
        return bisect.bisect_right(cores, hi) - bisect.bisect_left(cores, lo)

    def _module_units(self, taken: list[_Unit], accept) -> list[_Unit]:
        """Aligned modules outside `taken` that `accept`: widest first, the deepest name on ties."""
        used = [False] * len(self.segments)
        for u in taken:
            used[u.lo: u.hi + 1] = [True] * (u.hi - u.lo + 1)
        candidates = sorted(
            ((p, lo, hi) for p, (lo, hi) in self.aligned.items() if accept(p, lo, hi)),
            key=lambda c: (c[1] - c[2], -c[0].count("."), c[1]),
        )
        units = []
        for p, lo, hi in candidates:
            if not any(used[lo: hi + 1]):
                used[lo: hi + 1] = [True] * (hi - lo + 1)
                units.append(_Unit(lo, hi, p, True))
        return units

    def _structural_units(self) -> list[_Unit]:
        """Flat nets: a weighted layer and the ops after it, up to a pooling or a change of rank."""
        units, start = [], None
        for k, segment in enumerate(self.segments):
            if segment.weighted:
                if start is not None:
                    units.append(_Unit(start, k - 1, self._fallback_name(start, k - 1), False))
                start = k
            elif start is not None and self._ends_unit(start, segment):
                units.append(_Unit(start, k - 1, self._fallback_name(start, k - 1), False))
                start = None
        if start is not None:
            end = len(self.segments) - 1
            units.append(_Unit(start, end, self._fallback_name(start, end), False))
        return units

    def _ends_unit(self, start: int, segment: _Segment) -> bool:
        rank = len(_shape(self.segments[start].exit) or ())
        return ops.is_pool(self.gm, segment.exit) or len(_shape(segment.exit) or ()) != rank

    def _weighted_in(self, lo: int, hi: int) -> int:
        return sum(self.segments[k].weighted for k in range(lo, hi + 1))

    def _holder(self, lo: int, hi: int) -> str | None:
        """The module holding exactly the segments' nodes other than the last merge (for
        `x = x + blk(x)` written in the parent), or None."""
        nodes = [n for k in range(lo, hi + 1) for n in self.segments[k].nodes]
        merge = self.segments[hi].exit if self.segments[hi].is_core else None
        paths = [ops.module_path(n).split(".") for n in nodes if n is not merge]
        common = ".".join(common_prefix(paths))
        if common and self.node_count.get(common) == sum(
            ".".join(p) == common or ".".join(p).startswith(common + ".") for p in paths
        ):
            return common
        return None

    def _fallback_name(self, lo: int, hi: int) -> str:
        """The module holding exactly the block's nodes other than its merge, else the block's
        first weighted layer."""
        held = self._holder(lo, hi)
        if held is not None:
            return held
        nodes = [n for k in range(lo, hi + 1) for n in self.segments[k].nodes]
        first = min(
            (n for n in nodes if ops.is_weighted(self.gm, n)), key=self.order.__getitem__, default=None
        )
        first = first or min(nodes, key=self.order.__getitem__)
        return ops.module_path(first) if first.op == "call_module" else first.name

    # ---- blocks

    def blocks(self) -> list[Block]:
        units = self._units()
        block_of: dict[fx.Node, int] = {}
        for b, unit in enumerate(units):
            for k in range(unit.lo, unit.hi + 1):
                block_of.update((n, b) for n in self.segments[k].nodes)
        for n in reversed(self.gm.graph.nodes):  # parameters and sizes used only inside a block
            if n not in self.graph and n.op not in ("placeholder", "output") and n.users:
                owners = {block_of.get(u) for u in n.users}
                if len(owners) == 1 and None not in owners:
                    block_of[n] = owners.pop()
        members: list[list[fx.Node]] = [[] for _ in units]
        for n, b in block_of.items():
            members[b].append(n)
        names: set[str] = set()
        blocks = []
        for unit, nodes in zip(units, members):
            name = unit.name if unit.name not in names else f"{unit.name}@{self.segments[unit.hi].exit.name}"
            names.add(name)
            blocks.append(self._block(unit, name, sorted(nodes, key=self.order.__getitem__)))
        return blocks

    def _block(self, unit: _Unit, name: str, nodes: list[fx.Node]) -> Block:
        first, last = self.segments[unit.lo], self.segments[unit.hi]
        cores = [s for s in self.segments[unit.lo: unit.hi + 1] if s.is_core]
        if cores:
            structures = [self._merge_structure(core) for core in cores]
            kind, shortcut, shortcut_nodes, _ = structures[0]
            ends = [end for core, (_, _, _, branch) in zip(cores, structures)
                    for end in (self._branch_ends(branch, core.inner) if branch is not None else [None])]
            if kind in ("branches", "dense"):   # silenced where the whole block is (an affine layer after its merge)
                whole = self._branch_ends(last.exit, frozenset(nodes))
                ends = whole if kind == "branches" or self._silenced(whole) else ends
        else:  # a plain block is all branch
            kind, shortcut, shortcut_nodes = "plain", None, ()
            ends = [self._walk(last.exit, frozenset(nodes))]
        complete = self._silenced(ends)
        targets = [self._initialised(end) for end in ends] if complete else []
        complete = complete and all(target is not None for target in targets)
        stop = next((e for e in ends if e is not None and not self._ends_branch(e)), None)
        affine = ends[-1] if complete else None
        return Block(
            name=name,
            kind=kind,
            nodes=tuple(n.name for n in nodes),
            input_node=first.entry.name,
            output_node=last.exit.name,
            in_shape=_shape(first.entry),
            out_shape=_shape(last.exit),
            shortcut=shortcut,
            shortcut_nodes=tuple(n.name for n in sorted(shortcut_nodes, key=self.order.__getitem__)),
            last_affine=affine.name if affine is not None else None,
            last_affine_module=targets[-1] if complete else None,
            named_by_module=unit.named_by_module,
            initialised=tuple(targets) if complete else (),
            silent_at=tuple(self._silent_at(end) for end in ends) if complete else (),
            unsilenced=stop.name if stop is not None and not complete else None,
        )

    def _merge_structure(self, core: _Segment):
        """(kind, shortcut, shortcut nodes, node that ends the residual branch) of a core."""
        inputs = [i for i in core.exit.all_input_nodes if i in self.graph]
        if len(inputs) != 2:
            return "branches", None, (), None
        if ops.is_cat(core.exit):
            if core.entry in inputs:
                other = inputs[1] if inputs[0] is core.entry else inputs[0]
                return "dense", "identity", (), other
            return "branches", None, (), None
        if core.entry in inputs:
            other = inputs[1] if inputs[0] is core.entry else inputs[0]
            return "residual", "identity", (), other
        branches = [upstream(i, core.inner) for i in inputs]
        weights = [sum(self._learned(n) for n in b) for b in branches]
        if weights[0] == weights[1]:
            return "branches", None, (), None
        short, long_ = (0, 1) if weights[0] < weights[1] else (1, 0)
        return "residual", "projection", branches[short], inputs[long_]

    def _last_affine(self, node: fx.Node, region: frozenset[fx.Node]) -> fx.Node | None:
        """The last op linear in a parameter on the branch ending at `node` (see `_walk`), or None."""
        end = self._walk(node, region)
        return end if end is not None and self._ends_branch(end) else None

    def _walk(self, node: fx.Node, region: frozenset[fx.Node]) -> fx.Node | None:
        """Walk back from the branch's end through zero-preserving ops and gates to the last op
        linear in a parameter (`_ends_branch`), or to the op the walk cannot pass (it neither ends
        the branch nor keeps zero at zero); None where the walk leaves `region`."""
        while node in region:
            if self._ends_branch(node):
                return node
            inputs = [i for i in node.all_input_nodes if i in self.graph]
            if node.target is operator.getitem and node.args[1] == 0 and ops.is_attention(self.gm, node.args[0]):
                node = node.args[0]          # attention's output, before its weights
                continue
            passed = self._gated(node, inputs, region) if ops.is_mul(node) and len(inputs) == 2 \
                else self._zero_operand(node, inputs)
            if passed is None:
                return node
            node = passed
        return None

    def _ends_branch(self, node: fx.Node) -> bool:
        """Linear in a parameter: an affine layer, an attention's output projection, or a product
        with a tensor made from one parameter (a layer scale, a norm's `(1 + weight)`, experts' weights)."""
        return ops.is_affine(self.gm, node) or self._parameter_factor(node) is not None \
            or ops.is_attention(self.gm, node)

    def _silenced(self, ends: list[fx.Node | None]) -> bool:
        return all(end is not None and self._ends_branch(end) for end in ends)

    def _gated(self, node: fx.Node, inputs: list[fx.Node], region: frozenset[fx.Node]) -> fx.Node | None:
        """The operand of a product of two data tensors to silence: the gated tensor where one is
        computed from the other (a squeeze-excitation gate: silencing the gate's layer leaves
        sigmoid(0)), else the one whose own walk reaches a layer (experts' outputs, not their
        routing weights)."""
        a, b = inputs
        if a in upstream(b, region):
            return a
        if b in upstream(a, region):
            return b
        return next((i for i in inputs if self._last_affine(i, region) is not None), None)

    def _zero_operand(self, node: fx.Node, inputs: list[fx.Node]) -> fx.Node | None:
        """The operand a zero passes through `node` from, or None: the one input of a zero-preserving
        op, the data of an op whose other operands give only indices, a shape or a dtype, or of a
        product or quotient by a number."""
        if len(inputs) == 1 and (self.registry.has(self.gm, node, "zero_preserving")
                                 or (ops.is_scaling(node) and ops.scaled_operand(node) is inputs[0])):
            return inputs[0]
        if ops.reads_first_operand_only(node) and self.registry.has(self.gm, node, "zero_preserving"):
            return node.args[0] if node.args[0] in inputs else None
        return None

    def _parameter_factor(self, node: fx.Node) -> tuple[fx.Node, float] | None:
        """(parameter, value) where `node` is linear in a tensor made from one parameter (`gamma * x`,
        `x * (1 + weight)`, `matmul(x, w.T)`, experts' `grouped_mm(x, w, offsets)`) that is zero
        when every element of the parameter has that value; None for any other node."""
        position = ops.parameter_operand(node)
        if position is None:
            return None
        constants = [i for i in node.all_input_nodes if i not in self.graph]
        if len(constants) != 1 or (ops.is_mul(node) and len(node.all_input_nodes) != 2):
            return None
        operand = constants[0]
        if position >= 0 and ops.argument(node, position, None) is not operand:
            return None
        return _filled_by(operand, self.registry, self.gm)

    def _branch_ends(self, node: fx.Node, region: frozenset[fx.Node]) -> list[fx.Node | None]:
        """Where the walks back from `node` end (`_walk`): its last op linear in a parameter, else,
        through zero-preserving ops to a merge (concatenation or add), those of every merged
        branch, nested merges included; an op a walk cannot pass where it stops; None for a branch
        that has no layer (the block's input, passed on)."""
        end = self._walk(node, region)
        if end is None or self._ends_branch(end):
            return [end]
        inputs = [i for i in end.all_input_nodes if i in self.graph]
        if (ops.is_cat(end) or ops.is_add(end)) and len(inputs) > 1:
            return [e for i in inputs for e in self._branch_ends(i, region)]
        return [end]

    def _learned(self, node: fx.Node) -> bool:
        """A layer with learned weights on the data path: conv, linear, attention or layer scale."""
        return ops.is_weighted(self.gm, node) or ops.is_attention(self.gm, node) \
            or self._parameter_factor(node) is not None

    def _silent_at(self, affine: fx.Node) -> float:
        factor = self._parameter_factor(affine)
        return factor[1] if factor is not None else 0.0

    def _initialised(self, affine: fx.Node | None) -> str | None:
        if affine is None:
            return None
        if ops.is_attention(self.gm, affine):
            return ops.attention_output(self.gm, affine)
        if affine.op == "call_module":
            return str(affine.target)
        factor = self._parameter_factor(affine)
        if factor is not None:
            return str(factor[0].target)
        return ops.weight_owner(self.gm, affine) or self._computed_weight(affine)

    def _computed_weight(self, node: fx.Node) -> str | None:
        """The parameter a functional layer without bias computes its weight from, where filling it
        with zeros makes the weight zero (a weight-standardised convolution's)."""
        weight = ops.layer_weight(node)
        if not isinstance(weight, fx.Node) or ops.layer_bias(node) is not None:
            return None
        found = _filled_by(weight, self.registry, self.gm)
        return str(found[0].target) if found is not None and found[1] == 0.0 else None


def _is_layer(cls: type | str | None) -> bool:
    """A module class (or an exported graph's qualified class name) with a forward of its own that
    is not a container of blocks."""
    if isinstance(cls, str):
        return not cls.startswith("torch.nn.modules.container.")
    return cls is not None and not issubclass(cls, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def _filled_by(node: fx.Node, registry: Registry, gm: fx.GraphModule) -> tuple[fx.Node, float] | None:
    """(parameter, value) where `node` is computed from one parameter (a get_attr) alone and is zero
    when the parameter is filled with that value: `w.to(float32) + 1.0` at -1.0, a layer scale or
    experts' `w.transpose(-2, -1)` at 0, a weight-standardised convolution's weight at 0. The value
    is read back through views, casts and numbers added or multiplied (else 0), then checked by
    computing `node` from the filled parameter."""
    sources = _constant_sources(node)
    if sources is None or len(sources) != 1:
        return None
    parameter, value, walked = sources[0], 0.0, node
    while walked is not parameter and value is not None:
        if ops.is_scaling(walked) or ops.is_shift(walked):
            value = ops.inverse_of(walked, value)
        elif not (registry.has(gm, walked, "value_preserving") and len(walked.all_input_nodes) == 1):
            value = 0.0
            break
        walked = walked.all_input_nodes[0]
    if value is None:
        return None
    try:
        with torch.no_grad():
            silent = not bool(torch.count_nonzero(_computed(gm, node, parameter, value, {})))
    except Exception:  # noqa: BLE001 - a computation the check cannot redo: not a silencing target
        return None
    return (parameter, value) if silent else None


def _constant_sources(node: fx.Node) -> list[fx.Node] | None:
    """The get_attr nodes `node` is computed from, or None when it reads the model's input."""
    seen, stack, sources = set(), [node], []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "get_attr":
            sources.append(n)
        elif n.op in ("call_function", "call_method", "call_module"):
            stack.extend(n.all_input_nodes)
        else:
            return None
    return sources


def _computed(gm: fx.GraphModule, node: fx.Node, parameter: fx.Node, value: float, memo: dict):
    """`node`'s value with `parameter` filled with `value` (every input a constant)."""
    if node not in memo:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: _computed(gm, n, parameter, value, memo))
        if node.op == "get_attr":
            tensor = ops.attribute(gm, str(node.target))
            memo[node] = torch.full_like(tensor, value) if node is parameter else tensor
        elif node.op == "call_function":
            memo[node] = node.target(*args, **kwargs)
        elif node.op == "call_method":
            memo[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            memo[node] = gm.get_submodule(str(node.target))(*args, **kwargs)
    return memo[node]


def upstream(node: fx.Node, region: Collection[fx.Node]) -> set[fx.Node]:
    """`node` and its ancestors inside `region` (empty when `node` is outside it)."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen or n not in region:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def _require_shapes(gm: fx.GraphModule) -> None:
    if has_shapes(gm):
        return
    if INPUT_SPEC_KEY not in gm.meta:
        raise AnalysisError(
            "the graph has no shapes in node.meta; capture the model with "
            "graphmorph.capture(model, example_input) before analysing it"
        )
    annotate_shapes(gm, example_inputs(gm))


def common_prefix(paths: list[list[str]]) -> list[str]:
    """The longest list every one of `paths` starts with."""
    prefix = paths[0] if paths else []
    for path in paths[1:]:
        k = 0
        while k < min(len(prefix), len(path)) and prefix[k] == path[k]:
            k += 1
        prefix = prefix[:k]
    return prefix


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape[1:]) if shape is not None and len(shape) >= 1 else None


def _spatial(shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The spatial part (after channels) of a batch-less shape; None for vectors."""
    return tuple(shape[1:]) if shape is not None and len(shape) >= 2 else None
