"""Dense-layer growth: one more layer at the end of a dense block (DenseNet), as a morphism.

A dense block ends in a concatenation along the channels, `out = cat([x, f1, ..., fn])`, whose
last part `fn` is its last layer's output computed from the parts before it (`cat([x, f1, ...,
f(n-1)])`, torchvision's form, or the first part itself for `x = cat([x, layer(x)])`). The new
layer is a fresh copy of the last one that reads all of `out`; the block then ends in
`cat([out, f(n+1)])`. Every layer that reads the block's output gets the new channels with zero
weights (BatchNorm passes them through with fresh statistics), so the net computes what it did,
in eval and train mode alike: the layers reading the new channels multiply them by zero.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from graphmorph.errors import RewriteError
from graphmorph.graph import ops
from graphmorph.graph.channel_ops import describe
from graphmorph.graph.analysis import block_named, common_prefix, upstream
from graphmorph.graph.copying import copied_meta
from graphmorph.graph.layers import fresh_copy
from graphmorph.graph.ops import attribute, has_attribute
from graphmorph.graph.registry import Registry
from graphmorph.graph.rng import seeded
from graphmorph.graph.shapes import Inputs
from graphmorph.graph.verify import annotate_rewritten, parameter_count
from transforms.protocol import Edit, Rewrite, Step, apply, register

__all__ = ["grow_dense", "GrowDense", "dense_layer", "is_dense_block"]


@dataclass(frozen=True)
class DenseLayer:
    """The last layer of a dense block: its nodes (in graph order), the node it reads (the parts
    before it, joined), its output, and the block's output concatenation."""

    nodes: tuple[fx.Node, ...]
    reads: fx.Node
    output: fx.Node
    joined: fx.Node


def grow_dense(gm: fx.GraphModule, block: str, *, seed: int = 0, example_input: torch.Tensor | Inputs | None = None,
               verify: bool = True, registry: Registry | None = None) -> fx.GraphModule:
    """A new graph with one more layer at the end of dense block `block` (a name from
    `find_blocks`), drawn from `seed`, its new channels read with zero weights: the same function."""
    return apply(gm, GrowDense(block=block, seed=seed, registry=registry), example_input=example_input, verify=verify)


def is_dense_block(gm: fx.GraphModule, block: str) -> bool:
    """Whether `grow_dense` can add a layer to block `block`."""
    try:
        dense_layer(gm, block)
    except RewriteError:
        return False
    return True


def dense_layer(gm: fx.GraphModule, block: str) -> DenseLayer:
    """The last layer of dense block `block` (a module path, or a name from `find_blocks`);
    RewriteError naming what is missing if it is not one."""
    inside = [n for n in gm.graph.nodes if n.op not in ("placeholder", "get_attr", "output")
              and any(path == block for path, _ in (n.meta.get("nn_module_stack") or {}).values())]
    if not inside:
        nodes = ops.nodes_by_name(gm.graph)
        inside = [nodes[n] for n in block_named(gm, block, what="module or block").nodes]
    joined = inside[-1]
    parts = joined.args[0] if ops.is_cat(joined) else None
    if not parts or len(parts) < 2 or ops.cat_dim(joined, len(joined.meta["tensor_meta"].shape)) != 1:
        raise RewriteError(f"block {block!r} is not a dense block: it does not end in a concatenation of "
                           f"its layers' outputs along the channels")
    last, before = parts[-1], list(parts[:-1])
    inside = set(inside)
    reads = next((n for n in upstream(last, inside) if ops.is_cat(n) and list(n.args[0]) == before),
                 before[0] if len(before) == 1 and before[0] in upstream(last, inside | set(before)) else None)
    if reads is None:
        raise RewriteError(f"block {block!r} is not a dense block: its last part {last.name!r} is not computed "
                           f"from the parts before it")
    layer = [n for n in gm.graph.nodes if n in inside and n is not reads and n in upstream(last, inside)
             and reads in upstream(n, inside | {reads})]
    return DenseLayer(tuple(layer), reads, last, joined)


@register
@dataclass(frozen=True, kw_only=True)
class GrowDense(Rewrite):
    """Add a copy of dense block `block`'s last layer, drawn from `seed`, reading the whole block."""

    name: ClassVar[str] = "grow_dense"
    block: str
    seed: int

    def describe(self) -> str:
        return f"grow dense block {self.block!r}"

    def check(self, gm: fx.GraphModule) -> str | None:
        try:
            layer = dense_layer(gm, self.block)
        except RewriteError as err:
            return str(err)
        return _readers_refusal(gm, layer.joined)

    def edit(self, step: Step) -> Edit:
        work = step.work
        layer = dense_layer(work, self.block)
        width, added = ops.channels_of(layer.joined), ops.channels_of(layer.output)
        modules = _copied_modules(work, layer, width, self.seed, self.registry or Registry.default())
        new, copies = _insert(work, layer, modules)
        with work.graph.inserting_after(new):
            grown = work.graph.call_function(torch.cat, ([layer.joined, new],), {"dim": 1})
        grown.meta = copied_meta(layer.joined.meta, lambda path: path)   # inside the block's module, as its output was
        layer.joined.replace_all_uses_with(grown, delete_user_cb=lambda user: user is not grown and user not in copies)
        delta = sum(p.numel() for m in modules.values() for p in m.parameters())
        delta += _widen_readers(work, grown, width, added, self.registry or Registry.default())
        work.recompile()
        same_shapes = annotate_rewritten(step.source, work, step.inputs, f"growing dense block {self.block!r}")
        return Edit(delta, lambda: step.source, ("eval", "train"), shapes_propagated=same_shapes,
                    notes={"new_layer": _common_owner(list(modules)) or next(iter(modules))})


# --------------------------------------------------------------------------- the copy


def _copied_modules(work, layer: DenseLayer, width: int, seed: int, registry: Registry) -> dict[str, nn.Module]:
    """Fresh modules for the new layer, keyed by their new paths: the layers reading the block's
    output take its `width` channels."""
    targets = _layer_modules(layer)
    owner = _common_owner(targets)
    rename = _renamer(work, owner, targets)
    reading = _frontier(work, layer)
    modules = {}
    with seeded(seed, like=work):
        for target in targets:
            old = work.get_submodule(target)
            surgery = registry.layer_surgery(old)
            if target in reading and _holds_statistics(old) and not isinstance(old, nn.modules.batchnorm._BatchNorm):
                new = _widened(old, old.running_mean.numel(), width - old.running_mean.numel())   # F.batch_norm's
            elif target in reading and surgery is not None:
                new = surgery.with_in_channels(old, width)
            elif target in reading and any(True for _ in old.parameters()):
                raise RewriteError(f"{type(old).__name__} {target!r} reads the dense block's input and graphmorph "
                                   f"cannot give it {width} channels; register its layer surgery")
            else:
                new = fresh_copy(old)
            reference = next(old.parameters(), None)
            if reference is not None:
                new.to(device=reference.device, dtype=reference.dtype)
            modules[rename(target)] = new
    return modules


def _insert(work, layer: DenseLayer, modules: dict[str, nn.Module]) -> tuple[fx.Node, set[fx.Node]]:
    """Copy the layer's nodes after the block's output, reading it; returns the new layer's output
    and every new node."""
    renamed = dict(zip(_layer_modules(layer), modules))
    for path, module in modules.items():
        work.add_submodule(path, module)
    env = {layer.reads: layer.joined}
    with work.graph.inserting_before(layer.joined.next):
        for attr in _parameters_read(layer):          # the copy's own parameters, under its modules
            owner, _, leaf = str(attr.target).rpartition(".")
            env[attr] = work.graph.get_attr(f"{renamed[owner]}.{leaf}")
        for node in layer.nodes:
            target = renamed.get(str(node.target), node.target) if node.op == "call_module" else node.target
            env[node] = work.graph.create_node(
                node.op, target, fx.node.map_arg(node.args, lambda a: env.get(a, a)),
                fx.node.map_arg(node.kwargs, lambda a: env.get(a, a)),
                name=target.replace(".", "_") if node.op == "call_module" else None)
            env[node].meta = copied_meta(node.meta, _renaming(renamed))
    return env[layer.output], {env[n] for n in layer.nodes}


def _layer_modules(layer: DenseLayer) -> list[str]:
    """The layer's modules: those it calls, and those holding the parameters it reads (a traced
    timm BatchNormAct2d's statistics)."""
    called = [str(n.target) for n in layer.nodes if n.op == "call_module"]
    owners = [str(a.target).rpartition(".")[0] for a in _parameters_read(layer)]
    return list(dict.fromkeys(called + owners))


def _parameters_read(layer: DenseLayer) -> list[fx.Node]:
    return list(dict.fromkeys(a for n in layer.nodes for a in n.all_input_nodes if a.op == "get_attr"))


def _renaming(renamed: dict[str, str]):
    """Module paths of the layer to the copy's: its owner module's path swapped for the copy's."""
    old, new = _common_owner(list(renamed)), _common_owner(list(renamed.values()))
    return lambda path: new + path[len(old):] if old and (path == old or path.startswith(old + ".")) else path


def _frontier(work, layer: DenseLayer) -> set[str]:
    """Module targets of the layer that read its input before (and including) its first weighted layer."""
    found, stack, inside = set(), [layer.reads], set(layer.nodes)
    while stack:
        for user in stack.pop().users:
            if user not in inside:
                continue
            if user.op == "call_module":
                found.add(str(user.target))
            elif _norm_owner(work, user) is not None:
                found.add(_norm_owner(work, user))
            if not ops.is_weighted(work, user):
                stack.append(user)
    return found


def _common_owner(targets: list[str]) -> str:
    """The deepest module path holding every one of `targets`."""
    return ".".join(common_prefix([t.split(".")[:-1] for t in targets]))


def _renamer(work, owner: str, targets: list[str]):
    """Module paths for the copy: under a fresh sibling of the layer's own module (`denselayer6` ->
    `denselayer7`), or each target suffixed where the layer has no module of its own."""
    base = owner if owner and all(t.startswith(owner + ".") for t in targets) else None
    if base is not None:
        fresh = _next_sibling(work, base)
        return lambda path: fresh + path[len(base):]
    k = 1
    while any(has_attribute(work, f"{t}_d{k}") for t in targets):
        k += 1
    return lambda path: f"{path}_d{k}"


def _next_sibling(work, name: str) -> str:
    parent, _, last = name.rpartition(".")
    holder = attribute(work, parent) if parent else work
    stem = last.rstrip("0123456789")
    taken = {child for child, _ in holder.named_children()}
    k = int(last[len(stem):] or 0) + 1
    while f"{stem}{k}" in taken:
        k += 1
    return f"{parent}.{stem}{k}" if parent else f"{stem}{k}"


# --------------------------------------------------------------------------- the readers


def _readers_refusal(gm: fx.GraphModule, joined: fx.Node) -> str | None:
    try:
        _walk_readers(gm, joined, lambda node, kind: None)
    except RewriteError as err:
        return str(err)
    return None


def _widen_readers(work, grown: fx.Node, width: int, added: int, registry: Registry) -> int:
    """Give every layer that reads `grown` (through BatchNorm, activations, pooling, flatten) its
    `added` new channels after the first `width`: zero weights in convolutions and linear layers,
    fresh statistics in BatchNorm. Returns the parameters added."""
    delta = 0

    def widen(target: str, inner: int) -> None:
        nonlocal delta
        module = work.get_submodule(target)
        before = parameter_count(module)
        replacement = _widened(module, width * inner, added * inner, registry)
        parent, _, name = target.rpartition(".")
        setattr(attribute(work, parent) if parent else work, name, replacement)
        delta += parameter_count(replacement) - before

    _walk_readers(work, grown, widen)
    return delta


def _walk_readers(gm: fx.GraphModule, start: fx.Node, visit) -> None:
    """Call visit(module path, features per channel) on each module reading `start`'s channels:
    BatchNorm, module or functional (passed through), and the convolutions and linear layers where
    they end; refuse anything else."""
    stack = [(start, 1)]
    while stack:
        node, inner = stack.pop()
        for user in node.users:
            module = ops.module_of(gm, user)
            if user.target is getattr or user.target in ("size", "dim"):
                continue                          # reads the shape, not the channels' values
            norm = str(user.target) if isinstance(module, nn.modules.batchnorm._BatchNorm) else _norm_owner(gm, user)
            if norm is not None:
                visit(norm, inner)
                stack.append((user, inner))
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and getattr(module, "groups", 1) == 1:
                visit(str(user.target), inner)
            elif _flattens(gm, user):
                shape = user.args[0].meta["tensor_meta"].shape
                stack.append((user, inner * int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else inner))
            elif ops.is_zero_preserving(gm, user) or ops.is_activation(gm, user):
                stack.append((user, inner))
            else:
                raise RewriteError(f"grow_dense refused: {describe(gm, user)} reads the dense block's output "
                                   f"and cannot take new channels with zero weights")


def _norm_owner(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The module holding the parameters and statistics an `F.batch_norm` call reads (timm's
    BatchNormAct2d, which fx traced into, keeps them in a plain module), or None."""
    if node.target is not F.batch_norm:
        return None
    weight = ops.argument(node, 3, "weight")
    owner = str(getattr(weight, "target", "")).rpartition(".")[0]
    held = attribute(gm, owner) if owner else None
    return owner if _holds_statistics(held) else None


def _holds_statistics(module) -> bool:
    return isinstance(module, nn.Module) and torch.is_tensor(getattr(module, "running_mean", None))


def _flattens(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(ops.module_of(gm, node), nn.Flatten) or node.target in (torch.flatten, "flatten")


def _widened(module: nn.Module, width: int, added: int, registry: Registry | None = None) -> nn.Module:
    """`module` reading `added` more input features after its first `width`: zero weight columns, or
    BatchNorm entries with weight 1, bias 0, mean 0, variance 1."""
    with torch.no_grad():
        if _holds_statistics(module):
            new = copy.deepcopy(module)              # its own class, activation and all
            new.num_features = width + added
            fresh = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
            for name, tensor in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
                if tensor.dim() == 0:
                    continue
                value = torch.cat([tensor.detach(), tensor.new_full((added,), fresh[name])])
                if isinstance(tensor, nn.Parameter):
                    setattr(new, name, nn.Parameter(value, requires_grad=tensor.requires_grad))
                else:
                    setattr(new, name, value)
            return new
        weight = module.weight
        extra = torch.zeros(weight.shape[0], added, *weight.shape[2:], dtype=weight.dtype, device=weight.device)
        new = (registry or Registry.default()).layer_surgery(module).with_in_channels(module, width + added)
        new.to(device=weight.device, dtype=weight.dtype)
        new.weight = nn.Parameter(torch.cat([weight, extra], 1), requires_grad=weight.requires_grad)
        if module.bias is not None:
            new.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=module.bias.requires_grad)
        return new
