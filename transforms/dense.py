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
from torch import fx, nn

from graphmorph.errors import RewriteError
from graphmorph.graph import ops
from graphmorph.graph.channel_surgery import KEPT_KEY, apply_edit, check_edit
from graphmorph.graph.channels import ChannelDependencies, channel_dependencies
from graphmorph.graph.analysis import block_named, common_prefix, upstream
from graphmorph.graph.copying import copied_meta
from graphmorph.graph.layers import fresh_copy
from graphmorph.graph.ops import attribute, has_attribute
from graphmorph.graph.registry import Registry
from graphmorph.graph.rng import seeded
from graphmorph.graph.shapes import Inputs
from graphmorph.graph.verify import annotate_rewritten
from transforms.protocol import Edit, Rewrite, Step, apply, register
from transforms.widening import ZeroInit

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
        deps = channel_dependencies(gm, self.op_registry)
        try:
            reason = check_edit(gm, deps, deps.copied_downstream(layer.joined, ops.channels_of(layer.output)))
        except RewriteError as err:
            return f"grow_dense refused: {err}"
        return f"grow_dense refused: the block's readers cannot take new channels: {reason}" if reason else None

    def edit(self, step: Step) -> Edit:
        work = step.work
        layer = dense_layer(work, self.block)
        width, added = ops.channels_of(layer.joined), ops.channels_of(layer.output)
        deps = channel_dependencies(step.source, self.op_registry)
        modules = _copied_modules(work, deps, layer, width, self.seed, self.op_registry)
        readers = apply_edit(work, deps.copied_downstream(deps.by_name[layer.joined.name], added), deps.registry,
                             deps.layout, ZeroInit(self.seed))   # the readers take the new channels with zeros
        work.meta[KEPT_KEY] = readers.kept_indices
        new, copies = _insert(work, layer, modules)
        with work.graph.inserting_after(new):
            grown = work.graph.call_function(torch.cat, ([layer.joined, new],), {"dim": 1})
        grown.meta = copied_meta(layer.joined.meta, lambda path: path)   # inside the block's module, as its output was
        layer.joined.replace_all_uses_with(grown, delete_user_cb=lambda user: user is not grown and user not in copies)
        delta = sum(p.numel() for m in modules.values() for p in m.parameters()) + readers.param_delta
        work.recompile()
        same_shapes = annotate_rewritten(step.source, work, step.inputs, f"growing dense block {self.block!r}")
        return Edit(delta, lambda: step.source, ("eval", "train"), shapes_propagated=same_shapes,
                    notes={"new_layer": _common_owner(list(modules)) or next(iter(modules))})


# --------------------------------------------------------------------------- the copy


def _copied_modules(work, deps: ChannelDependencies, layer: DenseLayer, width: int, seed: int,
                    registry: Registry) -> dict[str, nn.Module]:
    """Fresh modules for the new layer, keyed by their new paths: the layers reading the block's
    output take its `width` channels."""
    targets = _layer_modules(layer)
    owner = _common_owner(targets)
    rename = _renamer(work, owner, targets)
    reading = _frontier(deps, layer)
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


def _frontier(deps: ChannelDependencies, layer: DenseLayer) -> set[str]:
    """Module targets of the layer that go with its input's channels (its norms, activations and
    first weighted layers), and the modules holding the statistics a functional norm reads for them."""
    nodes = [deps.by_name[n.name] for n in layer.nodes]
    coupled = deps.coupled(deps.by_name[layer.reads.name], nodes)
    modules = {str(n.target) for n in coupled.carriers | coupled.readers if n.op == "call_module"}
    return modules | {str(c.target).rpartition(".")[0] for c in coupled.constants if c.op == "get_attr"}


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


def _holds_statistics(module) -> bool:
    return isinstance(module, nn.Module) and torch.is_tensor(getattr(module, "running_mean", None))


def _widened(module: nn.Module, width: int, added: int) -> nn.Module:
    """A copy of a module holding per-channel statistics (timm's BatchNormAct2d, traced into
    F.batch_norm) with `added` fresh entries after its first `width`: weight 1, bias 0, mean 0, variance 1."""
    with torch.no_grad():
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
