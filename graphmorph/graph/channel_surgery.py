"""Apply a channel removal to a graph: check every node first, then cut each one with its handler.

A removal maps node names to the channel indices of that node's tensor that go (from
`ChannelDependencies.removal`). Cutting keeps a record, per parameter name, of how the old
tensor maps to the new one, so optimizer state can be sliced the same way (`graphmorph.run.optim`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import fx, nn

from graphmorph.graph import ops
from graphmorph.graph.channel_ops import ChannelLayout, TensorQuestions
from graphmorph.graph.channels import ChannelDependencies
from graphmorph.graph.registry import Registry

__all__ = ["Cut", "check_removal", "apply_removal", "KEPT_KEY", "apply_kept"]

KEPT_KEY = "graphmorph.kept_indices"   # gm.meta: {parameter name: {"old_shape": [...], "steps": [...]}}


class Cut(TensorQuestions):
    """The edit of one graph for one removal; handlers call its methods from `check` and `cut`."""

    def __init__(self, gm: fx.GraphModule, removal: dict[str, list[int]], registry: Registry,
                 layout: ChannelLayout | None = None):
        self.gm, self._removal, self.registry = gm, removal, registry
        self.layout = layout or ChannelLayout()
        self.param_delta = 0
        self.kept_indices: dict[str, dict] = {}
        self._done: set[str] = set()

    def removed(self, node) -> list[int]:
        return self._removal.get(node.name, []) if isinstance(node, fx.Node) else []

    def kept(self, node: fx.Node) -> list[int]:
        removed = set(self.removed(node))
        return [c for c in range(self.channels(node)) if c not in removed]

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def slice_tensor(self, path: str, dim: int, keep: Sequence[int]) -> None:
        """Keep `keep` along `dim` of the parameter or buffer at `path` (once per path)."""
        if path in self._done:
            return
        self._done.add(path)
        old = ops.attribute(self.gm, path)
        index = torch.as_tensor(list(keep), dtype=torch.long, device=old.device)
        self._store(path, old.detach().index_select(dim, index), [{"dim": dim, "index": list(keep)}])

    def resize_weighted(self, node: fx.Node, rows: list[int], columns: list[int] | list[list[int]],
                        groups: int | None = None) -> None:
        """Give a convolution or linear node the weight rows (output channels) `rows` and, per row or
        for all rows, the input columns `columns`; the bias follows the rows; `groups` is updated."""
        module = ops.module_of(self.gm, node)
        key = str(node.target) if module is not None else node.name
        if key in self._done:
            return
        self._done.add(key)
        transposed = isinstance(module, ops.CONV_TRANSPOSE_MODULES)
        weight_path, bias_path = self._weight_paths(node, module)
        old = ops.attribute(self.gm, weight_path).detach()
        steps = _weight_steps(rows, columns)
        new = apply_kept(old.transpose(0, 1) if transposed else old, steps)
        if transposed:
            new, steps = new.transpose(0, 1), [{**s, "dim": 1 - s["dim"]} for s in steps]
        if module is not None:
            self._resize_module(module, new, groups)
        self._store(weight_path, new, steps)
        if bias_path is not None:
            self.slice_tensor(bias_path, 0, rows)
        if module is None and groups is not None and _functional_groups(node) != groups:
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


def check_removal(gm: fx.GraphModule, deps: ChannelDependencies, removal: dict[str, list[int]]) -> str | None:
    """Why `removal` cannot be applied to `gm` (a node left without channels, a handler's refusal), or None."""
    cut = Cut(gm, removal, deps.registry, deps.layout)
    for node in deps.near(removal):
        removed = removal.get(node.name)
        if removed and not cut.is_constant(node) and len(removed) >= cut.channels(node):
            return f"it would remove every channel of {cut.describe(node)}"
        handler = cut.handler(node) if node.op in ("call_module", "call_function", "call_method") else None
        reason = handler.check(cut, node) if handler is not None else None
        if reason:
            return reason
    return None


def apply_removal(work: fx.GraphModule, removal: dict[str, list[int]], registry: Registry | None = None,
                  layout: ChannelLayout | None = None) -> Cut:
    """Cut every node of `work` (a copy of the analysed graph, same node names) in place with the
    handlers of `registry` (default: `Registry.default()`); recompiles. `layout` says where the
    channels run (`ChannelDependencies.layout`; default: dim 1 everywhere, no parameters coupled)."""
    cut = Cut(work, removal, registry or Registry.default(), layout)
    dims = cut.layout.parameter_dims
    for node in list(work.graph.nodes):
        if node.op == "get_attr" and node.name in dims and removal.get(node.name):
            keep = [c for c in range(cut.shape(node)[dims[node.name]]) if c not in set(removal[node.name])]
            cut.slice_tensor(str(node.target), dims[node.name], keep)
        elif node.op in ("call_module", "call_function", "call_method"):
            handler = cut.handler(node)
            if handler is not None:
                handler.cut(cut, node)
    work.recompile()
    return cut


def apply_kept(tensor: torch.Tensor, steps: list[dict]) -> torch.Tensor:
    """Apply recorded index steps to a tensor shaped like the old parameter (weights or optimizer state).
    A step keeps `index` along `dim`; a nested index keeps, for each row, its own columns."""
    for step in steps:
        index = step["index"]
        if index and isinstance(index[0], list):
            gather = torch.as_tensor(index, dtype=torch.long, device=tensor.device)
            gather = gather.view(*gather.shape, *([1] * (tensor.dim() - 2))).expand(-1, -1, *tensor.shape[2:])
            tensor = tensor.gather(step["dim"], gather)
        else:
            tensor = tensor.index_select(step["dim"], torch.as_tensor(index, dtype=torch.long, device=tensor.device))
    return tensor


def _weight_steps(rows: list[int], columns) -> list[dict]:
    """Steps that turn an out-first weight into the kept rows and columns."""
    steps = [{"dim": 0, "index": list(rows)}]
    if columns and isinstance(columns[0], list):
        if all(c == columns[0] for c in columns):
            steps.append({"dim": 1, "index": list(columns[0])})
        else:
            steps.append({"dim": 1, "index": [list(c) for c in columns]})
    else:
        steps.append({"dim": 1, "index": list(columns)})
    return steps


def _functional_groups(node: fx.Node) -> int:
    return node.kwargs.get("groups", node.args[6] if len(node.args) > 6 else 1)
