"""Capture through `torch.export`, lifted to the graph every analysis and rewrite reads.

`torch.export` reaches models symbolic tracing cannot (today's Hugging Face transformers, Python
control flow on shapes), but gives a graph of ATen calls with every parameter a `get_attr`. The
engine speaks modules and torch functions: its op registry, growth, FLOP counting and histories are
keyed by them. So the exported graph is *lifted* back to that level at the boundary, once:

- each call of a module the registry knows (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Dropout, ...)
  becomes one `call_module` node again, found from `node.meta["nn_module_stack"]` and named as in
  the user's model (`model.layers.3.mlp.down_proj`), so mode-dependent layers (BatchNorm, Dropout)
  keep their train/eval behaviour;
- ATen calls with a torch-level twin of the same meaning (`aten.view` -> `x.view`,
  `aten.scaled_dot_product_attention` -> `F.scaled_dot_product_attention`) become that twin;
- the rest (mask building: `arange`, `cumsum`, `index`, comparisons) stays as ATen calls, which
  the channel analysis refuses to cut through and which FLOP counting measures.

The lifted graph keeps the exported program's input and output structure (a transformers model
still returns its `ModelOutput`); capture checks that it computes what the exported one does.
"""
from __future__ import annotations

import inspect
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

from graphmorph.graph import ops
from graphmorph.graph.registry import UNARY_ELEMENTWISE, Registry

__all__ = ["export_program", "lift"]

aten = torch.ops.aten


def _same(target: Callable, kind: str = "call_function") -> Callable:
    """A twin taking the ATen call's arguments unchanged."""
    return lambda args, kwargs: (kind, target, args, kwargs)


def _first(target: Callable, count: int) -> Callable:
    """A twin taking the ATen call's first `count` positional arguments (the rest are defaults a
    torch function does not take, such as `cudnn_enable`)."""
    return lambda args, kwargs: ("call_function", target, args[:count], kwargs)


def _slice(args, kwargs):
    """aten.slice(x, dim, start, end, step) as `x[:, ..., start:end:step]`."""
    x, dim, start, end, step = (*args, *(0, None, None, 1)[len(args) - 1:])
    start = None if start == 0 else start
    end = None if isinstance(end, int) and end >= 2 ** 62 else end
    step = None if step == 1 else step
    return "call_function", operator.getitem, (x, _index_at(dim, slice(start, end, step))), {}


def _index_at(dim: int, index) -> tuple:
    """The subscript applying `index` along dimension `dim` (negative counts from the end)."""
    if dim >= 0:
        return (slice(None),) * dim + (index,)
    return (Ellipsis, index) + (slice(None),) * (-dim - 1)


def _select(args, kwargs):
    """aten.select(x, dim, i) as `x[:, ..., i]`."""
    x, dim, i = args
    return "call_function", operator.getitem, (x, _index_at(dim, i)), {}


def _embedding(args, kwargs):
    weight, indices, *rest = args
    padding_idx = rest[0] if rest and rest[0] != -1 else None
    return "call_function", F.embedding, (indices, weight, padding_idx), {}


def _binary(target: Callable) -> Callable:
    """aten.add/sub with no `alpha` as the Python operator (what fx records for `x + y`)."""
    def twin(args, kwargs):
        if kwargs.get("alpha", 1) != 1:
            return None
        return "call_function", target, args, {}
    return twin


def _to(args, kwargs):
    """aten.to.* as `x.to(...)` (without `layout`, which a tensor method does not take)."""
    return "call_method", "to", args, {k: v for k, v in kwargs.items() if k != "layout"}


def _constant_pad(args, kwargs):
    """aten.constant_pad_nd(x, pad, value) as `F.pad(x, pad, "constant", value)`."""
    x, pad, *value = args
    return "call_function", F.pad, (x, pad, "constant", value[0] if value else 0.0), {}


def _batch_norm(args, kwargs):
    """aten.batch_norm(x, weight, bias, mean, var, training, momentum, eps, cudnn) as F.batch_norm,
    which takes the statistics first (timm's BatchNormAct2d calls it from a forward of its own)."""
    x, weight, bias, mean, var, training, momentum, eps = args[:8]
    return "call_function", F.batch_norm, (x, mean, var, weight, bias, training, momentum, eps), {}


def _softmax(args, kwargs):
    x, dim, *rest = args
    if rest and rest[0] not in (None, False):
        return None
    return "call_function", torch.softmax, (x, dim), {}


# ATen overloads and their torch-level twins: what the registry, growth and FLOP counting know
_TWINS: dict[Any, Callable] = {
    aten.linear.default: _same(F.linear),
    aten.conv1d.default: _same(F.conv1d),
    aten.conv2d.default: _same(F.conv2d),
    aten.conv3d.default: _same(F.conv3d),
    aten.layer_norm.default: _first(F.layer_norm, 5),
    aten.group_norm.default: _first(F.group_norm, 5),
    aten.batch_norm.default: _batch_norm,
    aten.rms_norm.default: _same(F.rms_norm),
    aten.scaled_dot_product_attention.default: _same(F.scaled_dot_product_attention),
    aten.embedding.default: _embedding,
    aten.add.Tensor: _binary(operator.add),
    aten.sub.Tensor: _binary(operator.sub),
    aten.mul.Tensor: _same(operator.mul),
    aten.div.Tensor: _same(operator.truediv),
    aten.neg.default: _same(operator.neg),
    aten.view.default: _same("view", "call_method"),
    aten.reshape.default: _same(torch.reshape),
    aten.expand.default: _same("expand", "call_method"),
    aten.transpose.int: _same(torch.transpose),
    aten.permute.default: _same(torch.permute),
    aten.unsqueeze.default: _same(torch.unsqueeze),
    aten.squeeze.dim: _same(torch.squeeze),
    aten.flatten.using_ints: _same(torch.flatten),
    aten.contiguous.default: _same("contiguous", "call_method"),
    aten.clone.default: _first(torch.clone, 1),
    aten.cat.default: _same(torch.cat),
    aten.split.Tensor: _same(torch.split),
    aten.split_with_sizes.default: _same(torch.split),
    aten.chunk.default: _same(torch.chunk),
    aten.unbind.int: _same(torch.unbind),
    aten.roll.default: _same(torch.roll),
    aten.type_as.default: _same("type_as", "call_method"),
    aten.slice.Tensor: _slice,
    aten.select.int: _select,
    aten.relu.default: _same(F.relu),
    aten.gelu.default: _same(F.gelu),
    aten.silu.default: _same(F.silu),
    aten.sigmoid.default: _same(torch.sigmoid),
    **{getattr(aten, name).default: _same(getattr(torch, name)) for name in UNARY_ELEMENTWISE},
    aten.pow.Tensor_Scalar: _same(torch.pow),
    aten.tanh.default: _same(torch.tanh),
    aten.hardtanh.default: _same(F.hardtanh),
    aten.hardswish.default: _same(F.hardswish),
    aten.softmax.int: _softmax,
    aten.dropout.default: _same(F.dropout),
    aten.mean.dim: _same(torch.mean),
    aten.sum.dim_IntList: _same(torch.sum),
    aten.matmul.default: _same(torch.matmul),
    aten.bmm.default: _same(torch.bmm),
    aten.baddbmm.default: _same(torch.baddbmm),
    aten.max_pool2d.default: _same(F.max_pool2d),
    aten.avg_pool2d.default: _same(F.avg_pool2d),
    aten.adaptive_avg_pool2d.default: _same(F.adaptive_avg_pool2d),
    aten.adaptive_avg_pool1d.default: _same(F.adaptive_avg_pool1d),
    aten.sym_size.int: _same("size", "call_method"),
    aten.pad.default: _same(F.pad),
    aten.constant_pad_nd.default: _constant_pad,
    aten.to.dtype: _to,
    aten.to.dtype_layout: _to,
    aten.to.device: _to,
}
# ATen calls that compute nothing the graph reads: shape assertions
_DROPPED = {aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten.sym_constrain_range_for_size.default}


def _dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """torch.export dynamic shapes: every tensor input's batch dimension free, and every dimension
    of integer inputs (token ids, masks: the sequence length varies between batches)."""
    auto = torch.export.Dim.AUTO
    bound = inspect.signature(model.forward).bind(*args, **kwargs)

    def spec(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            free = range(value.dim()) if not value.is_floating_point() else (0,)
            return {d: auto for d in free}
        if isinstance(value, (tuple, list)):
            return type(value)(spec(v) for v in value)
        if isinstance(value, dict):
            return {k: spec(v) for k, v in value.items()}
        return None

    return {name: spec(value) for name, value in bound.arguments.items()}


def export_program(model: nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """`torch.export.export(model, args, kwargs, strict=False)` with free batch (and sequence)
    dimensions."""
    # a batch of one would be specialised (torch.export fixes sizes 0 and 1): export with two
    args2, kwargs2 = torch.utils._pytree.tree_map_only(
        torch.Tensor, lambda t: torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t, (args, kwargs))
    return torch.export.export(model, args2, kwargs2, strict=False,
                               dynamic_shapes=_dynamic_shapes(model, args2, kwargs2))


def lift(exported: fx.GraphModule, root: nn.Module, registry: Registry | None = None) -> fx.GraphModule:
    """The exported GraphModule as a graph of the user's modules and torch functions (see the module
    docstring), owning `root`'s modules and parameters under their qualified names."""
    registry = registry or Registry.default()
    calls = _module_calls(exported, root, registry)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    device: list[fx.Node] = []   # `first_input.device`, made when a call names a device
    for node in exported.graph.nodes:
        call = calls.get(node)
        if call is not None:
            path, inputs, result = call
            if node is result:  # the call's other nodes are read by it alone
                source, stack = env[inputs], node.meta.get("nn_module_stack", {})
                if ops.stores_weight_transposed(root.get_submodule(path)):
                    # GPT-2's Conv1D views its input as a matrix: a pruned head size of 1 can leave the
                    # merged heads a valid but non-contiguous view
                    source = graph.call_method("contiguous", (source,))
                    source.meta["nn_module_stack"] = stack
                env[node] = graph.call_module(path, (source,))
                env[node].meta["nn_module_stack"] = stack
            continue
        if node.op == "call_module" or (node.op == "call_function" and node.target in _DROPPED):
            continue  # export's input guards and shape assertions
        env[node] = _lift_node(graph, node, env, device)
    info = exported.graph._codegen.pytree_info
    positional = torch.utils._pytree.tree_structure((tuple(info.orig_args), {}))   # keywords bind by name
    graph._codegen = _SharedCodeGen(_PyTreeInfo(info.orig_args, positional, info.out_spec))
    holder = fx.GraphModule(_attribute_holder(exported, root, graph), graph)
    holder.graph.eliminate_dead_code()
    # export reads every parameter, used or not (an auxiliary head's, DINOv2's mask token): the
    # graph module holds what its graph uses, as every copy a rewrite makes does
    return fx.GraphModule(holder, holder.graph, class_name=type(root).__name__)


class _SharedCodeGen(_PyTreeCodeGen):
    """The exported program's output structure (a ModelOutput stays one), its inputs taken by
    position or by name. Its tree specs never change, so graph copies share them (deep-copying a
    spec warns in torch 2.13)."""

    def __deepcopy__(self, memo):
        return self


def _lift_node(graph: fx.Graph, node: fx.Node, env: dict[fx.Node, fx.Node], device: list[fx.Node]) -> fx.Node:
    """The node in `graph`: its twin, or a copy; a device it names (the example input's) becomes
    the first input's device, so the captured model runs wherever it is moved."""
    args = fx.node.map_arg(node.args, lambda n: env[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
    if node.op == "call_function" and any(isinstance(a, torch.device) for a in (*args, *kwargs.values())):
        if not device:
            first = next(n for n in graph.nodes if n.op == "placeholder")
            with graph.inserting_after(first):
                device.append(graph.call_function(getattr, (first, "device")))
        args = tuple(device[0] if isinstance(a, torch.device) else a for a in args)
        kwargs = {k: device[0] if isinstance(v, torch.device) else v for k, v in kwargs.items()}
    twin = _TWINS.get(_functional(node)) if node.op == "call_function" else None
    lifted = twin(args, kwargs) if twin is not None else None
    if lifted is not None:
        op, target, args, kwargs = lifted
        new = graph.create_node(op, target, args, kwargs, name=node.name)
    else:
        new = graph.create_node(node.op, node.target, args, kwargs, name=node.name)
    new.meta = {k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")}
    return new


def _functional(node: fx.Node):
    """The node's ATen overload, or for an in-place one (`aten.add_`) whose input nothing else reads
    its functional form (`aten.add`): the same value, as fx records `out += y`."""
    target = node.target
    packet = getattr(target, "_overloadpacket", None)
    name = getattr(packet, "__name__", "")
    if not name.endswith("_") or name.startswith("_") or not node.args or not isinstance(node.args[0], fx.Node) \
            or len(node.args[0].users) != 1:
        return target
    functional = getattr(getattr(aten, name[:-1], None), target._overloadname, None)
    return functional if functional is not None else target


def _module_calls(exported: fx.GraphModule, root: nn.Module, registry: Registry) -> dict:
    """node -> (module path, the call's input node, the node giving its result), for every
    node inside one call of a module the registry knows that takes one tensor and returns one."""
    groups: dict[str, list[fx.Node]] = {}
    paths: dict[str, str] = {}
    known: dict[type, bool] = {}
    for node in exported.graph.nodes:
        if node.op != "call_function":
            continue
        found = _outermost_known_call(node, root, registry, known)
        if found is not None:
            key, path = found
            groups.setdefault(key, []).append(node)
            paths[key] = path
    calls = {}
    for key, nodes in groups.items():
        members = set(nodes)
        path = paths[key]
        own = path + "."
        inputs = {a for n in nodes for a in n.all_input_nodes if a not in members and _is_tensor(a)
                  and not (a.op == "get_attr" and str(a.target).startswith(own))}
        results = [n for n in nodes if any(u not in members for u in n.users)]
        if len(inputs) != 1 or len(results) != 1 or not _takes_one_input(root.get_submodule(path)):
            continue
        entry = (path, next(iter(inputs)), results[0])
        calls.update({n: entry for n in nodes})
    return calls


def _is_tensor(node: fx.Node) -> bool:
    """Whether an exported node holds a tensor (not a symbolic size, which a module recomputes)."""
    return node.op == "get_attr" or isinstance(node.meta.get("val"), torch.Tensor)


def _outermost_known_call(node: fx.Node, root: nn.Module, registry: Registry,
                          known: dict[type, bool]) -> tuple[str, str] | None:
    for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
        if not path:
            continue
        try:
            module = root.get_submodule(path)
        except AttributeError:
            return None
        if type(module) not in known:
            known[type(module)] = registry.knows_module(module)
        if known[type(module)]:
            return key, path
    return None


def _takes_one_input(module: nn.Module) -> bool:
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [p for p in parameters if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) == 1


def _attribute_holder(exported: fx.GraphModule, root: nn.Module, graph: fx.Graph) -> nn.Module:
    """`root`, with the exported program's own constants (lifted tensors) attached where the graph
    reads them."""
    for node in graph.nodes:
        if node.op == "get_attr" and _get_attribute(root, str(node.target)) is None:
            _set_attribute(root, str(node.target), _get_attribute(exported, str(node.target)))
    return root


def _get_attribute(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part, None)
    return module


def _set_attribute(root: nn.Module, target: str, value) -> None:
    *parents, name = target.split(".")
    owner = root
    for part in parents:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        owner.register_buffer(name, value)
    else:
        setattr(owner, name, value)
