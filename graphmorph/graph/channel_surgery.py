"""Apply a channel edit to a graph: check every node first, then resize each one with its handler.

One edit serves both verbs of the channel engine. It maps node names to an *index*: for each
channel of the node's new tensor, the old channel it takes. A removal keeps some channels
(`kept_index` turns `ChannelDependencies.removal` into one); a widening takes every old channel
and some of them again, as copies (`ChannelDependencies.widening`). Handlers see the edit through
the `Editing` protocol. Resizing keeps a record, per parameter name, of how the old tensor maps to
the new one, so optimizer state can follow the same way (`graphmorph.run.optim`).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import fx, nn

from graphmorph.errors import Refusal, as_refusal
from graphmorph.graph import ops
from graphmorph.graph.channel_ops import ChannelLayout, TensorQuestions
from graphmorph.graph.channels import ChannelDependencies
from graphmorph.graph.registry import Registry

__all__ = ["ChannelEdit", "WidthInit", "kept_index", "check_edit", "apply_edit", "check_removal", "apply_removal", "KEPT_KEY",
           "compose_kept",
           "apply_kept", "copies"]

KEPT_KEY = "graphmorph.kept_indices"   # gm.meta: {parameter name: {"old_shape": [...], "steps": [...]}}


class WidthInit(Protocol):
    """How a widening sets what it adds (`transforms.widening` holds the inits)."""

    def weights(self, weight: torch.Tensor, rows: list[int], columns: list) -> None:
        """Set, in place, the rows and columns of an out-first weight that copy others (`copies`)."""

    def entry(self, path: str) -> float | None:
        """The value of a per-channel tensor's copied entries (a BatchNorm's), or None to keep the copies."""


class ChannelEdit(TensorQuestions):
    """The edit of one graph for one channel index map; handlers call its methods from `check` and
    `resize`. `grows` says the edit adds channels (copies of old ones), else it removes some;
    `init` sets what a widening adds."""

    def __init__(self, gm: fx.GraphModule, index: dict[str, list[int]], registry: Registry,
                 layout: ChannelLayout | None = None, init: WidthInit | None = None):
        self.gm, self._index, self.registry = gm, index, registry
        self.layout = layout or ChannelLayout()
        self.grows = any(len(set(i)) < len(i) for i in index.values())
        self.init = init
        self.param_delta = 0
        self.kept_indices: dict[str, dict] = {}
        self._done: set[str] = set()

    def changed(self, node) -> bool:
        """Whether the node's channels change."""
        return isinstance(node, fx.Node) and node.name in self._index

    def index(self, node: fx.Node) -> list[int]:
        """The old channel each channel of the node's new tensor takes."""
        return list(self._index[node.name]) if self.changed(node) else list(range(self.channels(node)))

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def select_tensor(self, path: str, dim: int, index: Sequence[int]) -> None:
        """Take `index` along `dim` of the parameter or buffer at `path` (once per path and dimension:
        an experts' weight loses input and output channels in two selections)."""
        if (path, dim) in self._done:
            return
        self._done.add((path, dim))
        old = ops.attribute(self.gm, path)
        selected = old.detach().index_select(dim, torch.as_tensor(list(index), dtype=torch.long, device=old.device))
        added = copies(list(index))
        value = self.init.entry(path) if self.init is not None and added else None
        if value is not None:
            selected.index_fill_(dim, torch.as_tensor(added, device=old.device), value)
        self._store(path, selected, [_step(dim, list(index))])

    def resize_weighted(self, node: fx.Node, rows: list[int], columns: list[int] | list[list[int]],
                        groups: int | None = None, stored: tuple[str, int, int] | None = None) -> None:
        """Give a convolution or linear node the weight rows (output channels) `rows` and, per row or
        for all rows, the input columns `columns` (old indices, repeated where a widening copies
        them); the bias follows the rows; `groups` is updated. `stored` is (path, output dimension,
        input dimension) of a weight kept another way (experts' `[experts, out, in]`), without bias."""
        module = ops.module_of(self.gm, node) if stored is None else None
        key = str(node.target) if module is not None else node.name
        if key in self._done:
            return
        self._done.add(key)
        if stored is not None:
            weight_path, bias_path = stored[0], None
            order = [stored[1], stored[2], *(d for d in range(3) if d not in stored[1:])]
        else:
            weight_path, bias_path = self._weight_paths(node, module)
            order = [1, 0] if ops.stores_weight_transposed(module) else None
        old = ops.attribute(self.gm, weight_path).detach()
        if order is not None:
            order += [d for d in range(old.dim()) if d not in order]
            old = old.permute(order)
        steps = _weight_steps(rows, columns)
        new = apply_kept(old, steps)
        if self.init is not None:
            self.init.weights(new, rows, columns)
        if order is not None:   # back to the stored layout; the steps named by its dimensions
            new = new.permute([order.index(d) for d in range(new.dim())])
            steps = [{**s, "dim": order[s["dim"]]} for s in steps]
        if module is not None:
            self._resize_module(module, new, groups)
        self._store(weight_path, new.contiguous(), steps)
        if bias_path is not None:
            self.select_tensor(bias_path, 0, rows)
        if module is None and stored is None and groups is not None and _functional_groups(node) != groups:
            if len(node.args) > 6:
                node.args = (*node.args[:6], groups, *node.args[7:])
            else:
                node.kwargs = {**node.kwargs, "groups": groups}

    def replace_call(self, node: fx.Node, function: Callable, args: tuple) -> None:
        node.op, node.target, node.args, node.kwargs = "call_function", function, args, {}

    # ---- helpers

    def _weight_paths(self, node, module) -> tuple[str, str | None]:
        if module is not None:
            return f"{node.target}.weight", (f"{node.target}.bias" if getattr(module, "bias", None) is not None
                                             else None)
        weight, bias = ops.layer_weight(node), ops.layer_bias(node)
        return weight.target, (bias.target if isinstance(bias, fx.Node) and bias.op == "get_attr" else None)

    @staticmethod
    def _resize_module(module, weight, groups) -> None:
        """Update a convolution's or linear layer's size attributes (in place: the graph is a copy)."""
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
            return
        if not isinstance(module, (*ops.CONV_MODULES, *ops.CONV_TRANSPOSE_MODULES)):   # GPT-2's Conv1D
            module.nx, module.nf = weight.shape
            return
        module.groups = groups if groups is not None else module.groups
        if isinstance(module, ops.CONV_TRANSPOSE_MODULES):
            module.in_channels, module.out_channels = weight.shape[0], weight.shape[1] * module.groups
        else:
            module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups

    def _store(self, path: str, new: torch.Tensor, steps: list[dict]) -> None:
        owner_path, _, name = path.rpartition(".")
        owner = self.gm.get_submodule(owner_path) if owner_path else self.gm
        old = getattr(owner, name)
        if isinstance(old, nn.Parameter):
            self.param_delta += new.numel() - old.numel()
            owner._parameters[name] = nn.Parameter(new.clone(), requires_grad=old.requires_grad)
            record = self.kept_indices.setdefault(path, {"old_shape": list(old.shape), "steps": []})
            record["steps"].extend(steps)
        else:
            owner._buffers[name] = new.clone()


def kept_index(gm: fx.GraphModule, removal: dict[str, list[int]], layout: ChannelLayout | None = None
               ) -> dict[str, list[int]]:
    """A removal (node name -> removed channels) as the index of the channels each node keeps."""
    questions = ChannelEdit(gm, {}, Registry.default(), layout)
    nodes = ops.nodes_by_name(gm.graph)
    index = {}
    for name, removed in removal.items():
        node, gone = nodes[name], set(removed)
        index[name] = [c for c in range(questions.shape(node)[questions.channel_axis(node)]) if c not in gone]
    return index


def check_edit(gm: fx.GraphModule, deps: ChannelDependencies, index: dict[str, list[int]]) -> Refusal | None:
    """Why the edit cannot be applied to `gm` (a node left without channels, a handler's refusal), or None."""
    edit = ChannelEdit(gm, index, deps.registry, deps.layout)
    for node in deps.near(index):
        if edit.changed(node) and not edit.is_constant(node) and not index[node.name]:
            return Refusal(f"it would remove every channel of {edit.describe(node)}", (node.name,))
        handler = edit.handler(node) if node.op in ("call_module", "call_function", "call_method") else None
        reason = as_refusal(handler.check(edit, node)) if handler is not None else None
        if reason:
            return reason if reason.nodes else Refusal(str(reason), (node.name,))
    return None


def apply_edit(work: fx.GraphModule, index: dict[str, list[int]], registry: Registry | None = None,
               layout: ChannelLayout | None = None, init: WidthInit | None = None) -> ChannelEdit:
    """Resize every node of `work` (a copy of the analysed graph, same node names) in place with the
    handlers of `registry` (default: `Registry.default()`); recompiles. `layout` says where the
    channels run (`ChannelDependencies.layout`; default: dim 1 everywhere, no parameters coupled);
    `init` sets what a widening adds (default: copies)."""
    edit = ChannelEdit(work, index, registry or Registry.default(), layout, init)
    dims = edit.layout.parameter_dims
    for node in list(work.graph.nodes):
        if node.op == "get_attr" and node.name in dims and edit.changed(node):
            edit.select_tensor(str(node.target), dims[node.name], index[node.name])
        elif node.op in ("call_module", "call_function", "call_method"):
            handler = edit.handler(node)
            if handler is not None:
                handler.resize(edit, node)
    work.recompile()
    return edit


def check_removal(gm: fx.GraphModule, deps: ChannelDependencies, removal: dict[str, list[int]]) -> Refusal | None:
    """Why `removal` (node name -> removed channels) cannot be applied to `gm`, or None."""
    return check_edit(gm, deps, kept_index(gm, removal, deps.layout))


def apply_removal(work: fx.GraphModule, removal: dict[str, list[int]], registry: Registry | None = None,
                  layout: ChannelLayout | None = None) -> ChannelEdit:
    """Remove `removal`'s channels (node name -> removed channels) from `work` (see `apply_edit`)."""
    return apply_edit(work, kept_index(work, removal, layout), registry, layout)


def apply_kept(tensor: torch.Tensor, steps: list[dict], fresh: float | None = None) -> torch.Tensor:
    """Apply recorded index steps to a tensor shaped like the old parameter (weights or optimizer state).
    A step takes `index` along `dim`; a nested index takes, for each row, its own columns. With
    `fresh`, the copies a widening added (a step's `copies` positions) are set to that value instead."""
    for step in steps:
        index = step["index"]
        if index and isinstance(index[0], list):
            gather = torch.as_tensor(index, dtype=torch.long, device=tensor.device)
            gather = gather.view(*gather.shape, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
            tensor = tensor.gather(step["dim"], gather)
        else:
            tensor = tensor.index_select(step["dim"], torch.as_tensor(index, dtype=torch.long, device=tensor.device))
            if fresh is not None and step.get("copies"):
                tensor = tensor.index_fill(step["dim"], torch.as_tensor(step["copies"], device=tensor.device), fresh)
    return tensor


def compose_kept(earlier: dict[str, dict], later: dict[str, dict]) -> dict[str, dict]:
    """The kept indices (`KEPT_KEY`) of two channel rewrites applied one after the other, as one:
    a parameter both changed takes the earlier's old shape and both's steps in order."""
    composed = dict(earlier)
    for name, entry in later.items():
        first = earlier.get(name)
        composed[name] = entry if first is None else {"old_shape": first["old_shape"],
                                                      "steps": [*first["steps"], *entry["steps"]]}
    return composed


def copies(index: list[int]) -> list[int]:
    """Positions of `index` that repeat an earlier one: the channels a widening added."""
    seen: set[int] = set()
    repeated = []
    for position, old in enumerate(index):
        if old in seen:
            repeated.append(position)
        seen.add(old)
    return repeated


def _step(dim: int, index: list[int]) -> dict:
    added = copies(index)
    return {"dim": dim, "index": index, **({"copies": added} if added else {})}


def _weight_steps(rows: list[int], columns) -> list[dict]:
    """Steps that turn an out-first weight into the given rows and columns."""
    steps = [_step(0, list(rows))]
    if columns and isinstance(columns[0], list):
        if all(c == columns[0] for c in columns):
            steps.append(_step(1, list(columns[0])))
        else:
            steps.append({"dim": 1, "index": [list(c) for c in columns]})
    else:
        steps.append(_step(1, list(columns)))
    return steps


def _functional_groups(node: fx.Node) -> int:
    return node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
