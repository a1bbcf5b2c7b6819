"""Channel dependencies on the fx graph: which channels must be removed (or added) together, and
which cannot be.

Every data tensor of rank >= 2 (batch first) has one *slot* per channel along its channel axis:
dim 1 as the model's input has it, moved by permutes and transposes (channels-last blocks), kept
whole through reshapes, and the last dim after a Linear on tokens. Each node's
handler (`graphmorph.graph.channel_ops`) relates its output's slots to its inputs': the same channel
(BatchNorm, activations, residual adds, squeeze-excitation gates), an offset (concatenation,
split), a range (flatten into a Linear), or fresh channels (the outputs of a convolution or a
linear layer: the *producers*). Slots related this way form *classes*; a class is removed as a
whole. A *group* is the set of classes that a producer's output channels fall into, joined with
every other producer sharing a class, so `prune_channels` edits exactly one group.

A group is refused, with a reason naming the node, when its channels come from the model's input,
reach its output, or pass through an op the registry cannot follow (a channel shuffle, a softmax
over channels, an op without a handler).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import torch
from torch import fx

from graphmorph.graph import ops
from graphmorph.graph.analysis import _require_shapes
from graphmorph.graph.channel_ops import ChannelLayout, TensorQuestions
from graphmorph.graph.memo import memoized
from graphmorph.graph.registry import Registry
from graphmorph.errors import Refusal, RewriteError, first_line

__all__ = ["ChannelGroup", "ChannelDependencies", "Coupling", "channel_dependencies", "channel_groups"]


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled output channels of one or more layers: removing channel k of one removes it in all."""

    index: int
    producers: tuple[str, ...]     # the layers (module names, or node names for F.conv2d) making the channels
    size: int                      # channels that can be removed one by one
    refused: Refusal | None        # why this group cannot be pruned (and the node that says so), or None
    readers: tuple[str, ...]       # layers whose input channels shrink with the group

    @property
    def prunable(self) -> bool:
        return self.refused is None


@memoized
def channel_dependencies(gm: fx.GraphModule, registry: Registry | None = None) -> "ChannelDependencies":
    """Analyse a captured GraphModule (shapes in node.meta) with the ops `registry` knows
    (default: `Registry.default()`)."""
    _require_shapes(gm)
    return ChannelDependencies(gm, registry or Registry.default())


def channel_groups(gm: fx.GraphModule, registry: Registry | None = None) -> list[ChannelGroup]:
    """Every group of coupled channels, prunable or refused (with the reason), in graph order."""
    return channel_dependencies(gm, registry).groups


class Relations(TensorQuestions):
    """What handlers tell the analysis: a union-find over channel slots plus what they mark."""

    def __init__(self, gm: fx.GraphModule, registry: Registry):
        self.gm, self.registry = gm, registry
        self.base: dict[fx.Node, int] = {}
        self.width: dict[fx.Node, int] = {}
        self.parent: list[int] = []
        self.producers: list[fx.Node] = []
        self.readers: list[tuple[fx.Node, fx.Node]] = []
        self.refusals: list[tuple[fx.Node, str, bool]] = []
        self.evens: list[tuple[fx.Node, int]] = []
        self.parameter_dim: dict[fx.Node, int] = {}
        self.axis: dict[fx.Node, int] = {}
        self.data: set[fx.Node] = set()     # nodes computed from the model's input
        self.constants: set[fx.Node] = set()  # nodes computed from parameters and sizes alone
        self.free: set[fx.Node] = set()       # data without channels (attention scores), and ops on it alone
        self.flows: dict[fx.Node, list[tuple[fx.Node, list[int], list[int]]]] = {}  # out <- (input, out slots, in slots)
        self.held: dict[fx.Node, list[fx.Node]] = {}   # node -> the constants indexed by its channels
        self.meetings: list[tuple[fx.Node, fx.Node]] = []  # channels that go together without flowing
        self.layout = ChannelLayout()        # filled in by `layout_of` once the analysis is done

    def is_constant(self, node: fx.Node) -> bool:
        return node.op == "get_attr" or node in self.constants

    def channels(self, node) -> int | None:
        return None if node in self.free else super().channels(node)

    def channel_axis(self, node: fx.Node) -> int:
        return self.parameter_dim[node] if node in self.parameter_dim else self.axis.get(node, 1)

    def set_axis(self, node: fx.Node, axis: int) -> None:
        """The node's channels run along `axis` (a handler says so before relating them)."""
        self.axis[node] = axis

    def layout_of(self) -> ChannelLayout:
        return ChannelLayout({n.name: a for n, a in self.axis.items() if a != 1},
                             {n.name: d for n, d in self.parameter_dim.items()})

    # ---- what handlers declare

    def same(self, out: fx.Node, inp: fx.Node, out_index: Iterable[int] | None = None,
             in_index: Iterable[int] | None = None) -> None:
        """Output slot out_index[k] is input slot in_index[k] (default: channel c is channel c)."""
        self._slots(out), self._slots(inp)
        out_index = list(range(self.width[out]) if out_index is None else out_index)
        in_index = list(range(self.width[inp]) if in_index is None else in_index)
        self._join(out, inp, out_index, in_index)
        self.flows.setdefault(out, []).append((inp, out_index, in_index))

    def meets(self, a: fx.Node, b: fx.Node) -> None:
        """Channel c of `a` and channel c of `b` go together, though neither computes the other
        (q's and k's features in attention, two calls of one module)."""
        self._slots(a), self._slots(b)
        self._join(a, b, range(self.width[a]), range(self.width[b]))
        self.meetings.append((a, b))

    def _join(self, a: fx.Node, b: fx.Node, a_index: Iterable[int], b_index: Iterable[int]) -> None:
        first, second = self._slots(a), self._slots(b)
        for i, j in zip(a_index, b_index):
            self._union(first + i, second + j)

    def fresh(self, node: fx.Node) -> None:
        """The node's output channels are new: it is a producer."""
        self._slots(node)
        self.producers.append(node)

    def reads(self, node: fx.Node, source: fx.Node) -> None:
        """The node reads `source`'s channels through a weight it can drop input channels from."""
        self._slots(source)
        self.readers.append((node, source))

    def refuse(self, node: fx.Node, reason: str, inputs: bool = True) -> None:
        """The node's channels (and, with `inputs`, its inputs') cannot be removed."""
        self.refusals.append((node, reason, inputs))

    def couple_parameter(self, node: fx.Node, constant: fx.Node, dim: int) -> None:
        """A parameter or buffer read by `node`, or a view of one (`gamma.view(1, -1, 1, 1)`,
        `cls_token.expand(n, -1, -1)`), is indexed by the node's channels along `dim`."""
        chain = [(constant, dim)]
        while chain[-1][0].op != "get_attr":
            current, at = chain[-1]
            sources = [a for a in current.all_input_nodes if self.shape(a) is not None]
            size = self.shape(current)[at]
            dims = [d for d, s in enumerate(self.shape(sources[0]) or ()) if s == size] if len(sources) == 1 else []
            if current.op not in ("call_method", "call_function") or len(dims) != 1:
                self.refuse(node, f"{self.describe(node)} reads {current.name}, computed from parameters in a "
                                  f"way the channel analysis does not follow")
                return
            chain.append((sources[0], dims[0]))
        for held, at in chain:
            if self.parameter_dim.setdefault(held, at) != at:
                self.refuse(node, f"{held.name} is indexed by channels along two different dimensions")
                return
        previous = self._slots(node)
        self.held.setdefault(node, []).extend(held for held, _ in chain)
        for held, at in chain:
            if held not in self.base:
                self.base[held], self.width[held] = len(self.parent), self.shape(held)[at]
                self.parent.extend(range(len(self.parent), len(self.parent) + self.width[held]))
            for c in range(self.width[held]):
                self._union(previous + c, self.base[held] + c)
            previous = self.base[held]

    def even(self, node: fx.Node, groups: int) -> None:
        """The node's channels fall into `groups` equal runs that must keep equal counts (grouped conv)."""
        self._slots(node)
        self.evens.append((node, groups))

    # ---- union-find

    def _slots(self, node: fx.Node) -> int:
        if node not in self.base:
            width = self.channels(node)
            if width is None:
                raise RewriteError(f"{self.describe(node)} has no channel dimension")
            self.base[node], self.width[node] = len(self.parent), width
            self.parent.extend(range(len(self.parent), len(self.parent) + width))
        return self.base[node]

    def find(self, slot: int) -> int:
        parent = self.parent
        root = slot
        while parent[root] != root:
            root = parent[root]
        while parent[slot] != root:
            parent[slot], slot = root, parent[slot]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class ChannelDependencies:
    """The channel classes and groups of one graph; maps pruning requests to per-node removals."""

    def __init__(self, gm: fx.GraphModule, registry: Registry):
        self.gm, self.registry = gm, registry
        self.rel = rel = Relations(gm, registry)
        for node in gm.graph.nodes:
            self._relate(node)
        self._couple_shared_modules()
        self.root = {node: [rel.find(rel.base[node] + c) for c in range(rel.width[node])] for node in rel.base}
        self._slots_of_class: dict[int, list[tuple[fx.Node, int]]] = {}
        for node, roots in self.root.items():
            for channel, root in enumerate(roots):
                self._slots_of_class.setdefault(root, []).append((node, channel))
        self._layout = rel.layout = rel.layout_of()
        self.by_name = ops.nodes_by_name(gm.graph)
        self.order = {node: k for k, node in enumerate(gm.graph.nodes)}
        self._build_groups()

    # ---- public questions

    def group_of(self, target: str) -> ChannelGroup:
        """The group holding the output channels of a layer (module name) or node (node name)."""
        return self.groups[self._group_index[self._root_of(self.node(target), 0)]]

    def classes(self, target: str, channels: Sequence[int]) -> list[int]:
        """The classes of the given output channels of `target`, checked against its channel count."""
        node = self.node(target)
        width = self.rel.width[node]
        bad = [c for c in channels if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < width]
        if bad:
            raise RewriteError(f"{target} has channels 0..{width - 1}; there is no channel {bad[0]!r}")
        if not channels:
            raise RewriteError(f"no channels of {target} to prune")
        return sorted({self.root[node][c] for c in channels})

    def group_classes(self, group: ChannelGroup) -> list[int]:
        return self._classes[group.index]

    def output_channels(self, target: str, classes: Iterable[int]) -> list[int]:
        """The output channels of `target` that belong to `classes` (the inverse of `classes`)."""
        picked = set(classes)
        return [c for c, root in enumerate(self.root[self.node(target)]) if root in picked]

    @property
    def layout(self) -> ChannelLayout:
        """Where the channels run in each tensor (the channel axes, and the constants' dims)."""
        return self._layout

    def removal(self, classes: Iterable[int]) -> dict[str, list[int]]:
        """Per node name, the channel indices (of that node's tensor) that go with `classes`."""
        removal: dict[str, list[int]] = {}
        for root in set(classes):
            for node, channel in self._slots_of_class[root]:
                removal.setdefault(node.name, []).append(channel)
        return {name: sorted(channels) for name, channels in removal.items()}

    def widening(self, copies: Sequence[int]) -> dict[str, list[int]]:
        """Per node name, the old channel each channel of its widened tensor takes: each class in
        `copies` (repeated for several copies) gains a channel that copies it. In every tensor the
        copy of a run of the class's slots follows that run, as the ops in between produce it (a
        concatenation keeps each input's copies beside it, a flatten a channel's features together,
        a depthwise convolution a channel's outputs)."""
        count: dict[int, int] = {}
        for root in copies:
            count[root] = count.get(root, 0) + 1
        touched = {node for root in count for node, _ in self._slots_of_class[root]}
        return {node.name: _with_copies(self.root[node], [count.get(r, 0) for r in self.root[node]])
                for node in sorted(touched, key=self.order.__getitem__)}

    def downstream(self, start: fx.Node, channels: Iterable[int],
                   within: Collection[fx.Node] | None = None) -> dict[str, list[int]]:
        """Per node name, the channels computed from `start`'s `channels`, followed forward (inside
        `within`, default everywhere) through every op that passes them on, to the layers that read
        them; with the constants indexed by them (a functional norm's statistics, a layer scale).
        RewriteError naming the node where they meet channels that do not come from `start` (a
        residual add with another tensor, a gate): those cannot change with them alone."""
        reached: dict[fx.Node, set[int]] = {start: set(channels)}
        for node in self.gm.graph.nodes:      # graph order: a node's inputs come before it
            if node is start or node not in self.rel.flows or (within is not None and node not in within):
                continue
            passed, joined = set(), set()
            for source, outputs, inputs in self.rel.flows[node]:
                have = reached.get(source, ())
                for out, inp in zip(outputs, inputs):
                    (passed if inp in have else joined).add(out)
            if passed & joined:
                raise RewriteError(f"the channels of {start.name} reach {self.rel.describe(node)}, which joins them "
                                   f"with channels that do not come from there, so they cannot change alone")
            if passed:
                reached[node] = passed
        for a, b in self.rel.meetings:
            if reached.get(a, set()) != reached.get(b, set()):
                raise RewriteError(f"the channels of {start.name} reach {a.name} but not {b.name} (or the other way "
                                   f"round), whose channels go with them, so they cannot change alone")
        refused = {node: reason for node, reason, inputs in self.rel.refusals if inputs}
        reads = set(self.rel.readers)
        for node in list(reached):
            for user in node.users:
                if user.op == "output":
                    raise RewriteError(f"the channels of {start.name} reach the model's output through "
                                       f"{self.rel.describe(node)}, so they cannot change alone")
                if user in refused and user not in reached and (user, node) not in reads:
                    raise RewriteError(f"the channels of {start.name} reach {self.rel.describe(user)}, so they "
                                       f"cannot change alone: {refused[user]}")
            for held in self.rel.held.get(node, ()):
                reached.setdefault(held, set()).update(reached[node])
        return {node.name: sorted(channels) for node, channels in reached.items()}

    def copied_downstream(self, start: fx.Node, added: int) -> dict[str, list[int]]:
        """`downstream` as a widening: `added` channels appended to `start` (a concatenation that
        gains an input), so every tensor computed from its last channel takes `added` copies of it
        after it, and every layer reading them as many inputs."""
        reached = self.downstream(start, [self.rel.width[start] - 1])
        index = {}
        for name, channels in reached.items():
            node, last = self.by_name[name], set(channels)
            marks = [c in last for c in range(self.rel.width[node])]
            index[name] = _with_copies(marks, [added if m else 0 for m in marks])
        return index

    def coupled(self, start: fx.Node, within: Collection[fx.Node]) -> "Coupling":
        """What inside `within` goes with `start`'s channels: the nodes carrying them (BatchNorms,
        depthwise convolutions, activations), the layers making them (a gate's expanding layer), the
        layers reading them, and the constants indexed by them."""
        classes = set(self.root.get(start, ()))
        carriers = {n for n in within if n is not start and classes & set(self.root.get(n, ()))}
        makers = {n for n in carriers if n in self.rel.producers}
        readers = {node for node, source in self.rel.readers if node in within and (source is start or source in carriers)}
        constants = {held for n in carriers | {start} for held in self.rel.held.get(n, ())}
        return Coupling(carriers - makers, makers, readers, constants)

    def near(self, removal: dict[str, list[int]]) -> list[fx.Node]:
        """The nodes a removal touches and the nodes that read them, in graph order."""
        nodes = {self.by_name[name] for name in removal}
        nodes.update(user for node in list(nodes) for user in node.users)
        return sorted(nodes, key=self.order.__getitem__)

    def members(self, group: ChannelGroup) -> list[tuple[fx.Node, list[int]]]:
        """(producer node, class position of each of its output channels) for scoring."""
        position = {root: k for k, root in enumerate(self._classes[group.index])}
        return [(p, [position[r] for r in self.root[p]]) for p in self._producers[group.index]]

    def partition(self, group: ChannelGroup) -> list[list[int]]:
        """Class positions in runs that must keep equal counts (a grouped convolution's groups; the
        finest such split where several grouped convolutions meet the group, runs that share classes,
        as after a channel shuffle, constraining nothing); one run holding every class when nothing
        constrains the group."""
        position = {root: k for k, root in enumerate(self._classes[group.index])}
        finest = [list(range(group.size))]
        for node, parts in self.rel.evens:
            roots = self.root[node]
            if roots and self._group_index.get(roots[0]) == group.index:
                per = len(roots) // parts
                runs = [sorted({position[r] for r in roots[k * per:(k + 1) * per]}) for k in range(parts)]
                disjoint = sum(map(len, runs)) == len({p for run in runs for p in run})
                if disjoint and len(runs) > len(finest):
                    finest = runs
        return finest

    # ---- analysis

    def _relate(self, node: fx.Node) -> None:
        rel = self.rel
        if node.op == "get_attr":
            return
        if node.op == "placeholder":
            rel.data.add(node)
            if not _is_floating(node):
                rel.free.add(node)   # token ids, a mask: data without channels
            elif rel.channels(node) is not None:
                rel._slots(node)
                rel.refuse(node, f"its channels come from the model's input {node.name!r}")
            return
        if node.op == "output":
            for arg in node.all_input_nodes:
                if rel.channels(arg) is not None:
                    rel.refuse(arg, "its channels reach the model's output", inputs=False)
            return
        inputs = [a for a in node.all_input_nodes if a in rel.data]
        if not inputs or not _holds_tensors(node):
            rel.constants.add(node)  # a view of a parameter, arithmetic on sizes, a size read from a tensor
            return
        rel.data.add(node)
        if all(a in rel.free for a in inputs) and not (ops.is_conv(self.gm, node) or ops.is_linear(self.gm, node)
                                                       or getattr(rel.handler(node), "makes_channels", False)):
            rel.free.add(node)   # softmax, scaling, views, a bias or mask added, dropout: still no channels
            return
        rank = rel.rank(node)
        inherited = rel.axis.get(inputs[0], 1)
        if node not in rel.axis:   # a split or unbind has set its pieces' axis already
            rel.set_axis(node, inherited if rank == 0 or inherited < rank else 1)
        touches = rel.channels(node) is not None or any(rel.channels(a) is not None for a in node.all_input_nodes)
        if not touches:
            return
        handler = rel.handler(node)
        if handler is None:
            rel.refuse(node, f"{rel.describe(node)} has no channel handler (register one: "
                             f"graphmorph.Registry.default().copy().register(...), passed as registry=)")
            return
        try:
            handler.relate(rel, node)
        except Exception as err:  # a form the handler does not know: refused with the reason, never a crash
            rel.refuse(node, f"{rel.describe(node)} is a form the channel analysis does not handle "
                             f"({type(err).__name__}: {first_line(err)})")
        if node not in rel.base and None not in (rel.shape(node), rel.shape(inputs[0])) \
                and rel.shape(node) != rel.shape(inputs[0]):
            rel.set_axis(node, 1)    # channels not followed through a reshaping node: along dim 1 after it

    def _couple_shared_modules(self) -> None:
        """A module with parameters called more than once has one set of channels for all calls."""
        rel, calls = self.rel, {}
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and node in rel.base:
                calls.setdefault(node.target, []).append(node)
        for target, nodes in calls.items():
            module = self.gm.get_submodule(target)
            if len(nodes) > 1 and any(True for _ in module.parameters()):
                for other in nodes[1:]:
                    rel.meets(nodes[0], other)
                    if nodes[0].args[0] in rel.base and other.args[0] in rel.base:
                        rel.meets(nodes[0].args[0], other.args[0])

    def _build_groups(self) -> None:
        rel = self.rel
        parent: dict[int, int] = {}    # union-find over classes: a producer joins all its classes

        def find(x):
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for producer in rel.producers:
            roots = self.root[producer]
            for r in roots[1:]:
                a, b = find(roots[0]), find(r)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            find(roots[0])
        refused: dict[int, Refusal] = {}
        for node, reason, inputs in rel.refusals:
            for n in [node, *node.all_input_nodes] if inputs else [node]:
                for r in self.root.get(n, ()):
                    refused.setdefault(r, Refusal(f"{reason} ({n.name})" if n is not node else reason,
                                                  (node.name, n.name)))
        order: dict[int, int] = {}
        classes: list[list[int]] = []
        producers: list[list[fx.Node]] = []
        for producer in rel.producers:
            g = find(self.root[producer][0])
            if g not in order:
                order[g] = len(classes)
                classes.append([])
                producers.append([])
            producers[order[g]].append(producer)
        for producer in rel.producers:
            k = order[find(self.root[producer][0])]
            seen = set(classes[k])
            for r in self.root[producer]:
                if r not in seen:
                    seen.add(r)
                    classes[k].append(r)
        self._group_index = {r: k for k, rs in enumerate(classes) for r in rs}
        readers: list[list[str]] = [[] for _ in classes]
        for node, source in rel.readers:
            k = self._group_index.get(self.root[source][0]) if self.root.get(source) else None
            if k is not None:
                readers[k].append(_target(node))
        self._classes, self._producers = classes, producers
        self.groups = [
            ChannelGroup(
                index=k,
                producers=tuple(dict.fromkeys(_target(p) for p in producers[k])),
                size=len(classes[k]),
                refused=next((refused[r] for r in classes[k] if r in refused), None),
                readers=tuple(dict.fromkeys(readers[k])),
            )
            for k in range(len(classes))
        ]

    def node(self, target: str) -> fx.Node:
        """The node of a layer (module name) or node (node name) with channels; RewriteError if none."""
        for node in self.gm.graph.nodes:
            if node in self.root and (node.name == target or (node.op == "call_module" and node.target == target)):
                return node
        producers = ", ".join(g.producers[0] for g in self.groups[:8])
        raise RewriteError(f"no layer or node named {target!r} with channels; layers with output channels "
                           f"include: {producers}{', ...' if len(self.groups) > 8 else ''}")

    def _root_of(self, node: fx.Node, channel: int) -> int:
        root = self.root[node][channel]
        if root not in self._group_index:
            raise RewriteError(f"{_target(node)} has no prunable output channels of its own (they come from "
                               f"the model's input or an op without a weight)")
        return root


@dataclass(frozen=True)
class Coupling:
    """Nodes that go with a tensor's channels (`ChannelDependencies.coupled`)."""

    carriers: set[fx.Node]    # pass them on: BatchNorms, activations, depthwise convolutions, gates' products
    makers: set[fx.Node]      # make channels joined with them: a squeeze-excitation gate's expanding layer
    readers: set[fx.Node]     # read them through a weight: convolutions and linear layers
    constants: set[fx.Node]   # parameters and buffers indexed by them: a functional norm's statistics


def _with_copies(keys: list, counts: list[int]) -> list[int]:
    """Every position in order, and after each run of positions with one key, that run again as many
    times as the run's count."""
    widened, start = [], 0
    for end in range(1, len(keys) + 1):
        if end == len(keys) or keys[end] != keys[start]:
            widened += list(range(start, end)) * (1 + counts[start])
            start = end
    return widened


def _is_floating(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "dtype", torch.float32).is_floating_point


def _holds_tensors(node: fx.Node) -> bool:
    """A tensor, or a tuple holding tensors (a split, attention's output), as shape propagation recorded it."""
    meta = node.meta.get("tensor_meta")
    return hasattr(meta, "shape") or (isinstance(meta, (tuple, list)) and any(hasattr(m, "shape") for m in meta))


def _target(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name
