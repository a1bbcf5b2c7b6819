"""grow: stack a new block after a block (AutoGrow's unit of change) as a verified fx rewrite.

The new block is an architectural copy of the template block: its graph nodes are copied and
inserted after the template, its modules are fresh copies (same class and hyper-parameters,
parameters drawn afresh) under a new, deterministic name: the next free index among the
template's siblings (`layer1.2` -> `layer1.3`), or `<name>_g<k>` where blocks have no module of
their own. When the template changes the shape (a stage's first block), its shape-preserving form
is stacked: strides set to 1, input channels set to the block's output channels, and a projection
shortcut replaced by the identity, which is how AutoGrow's sub-networks add sub-modules.
"""
from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import fx, nn
from torch.fx.node import map_arg

from graphmorph.graph import ops
from graphmorph.graph.analysis import Block, block_named, find_blocks, find_stages
from graphmorph.graph.channel_ops import describe
from graphmorph.graph.channels import ChannelDependencies, channel_dependencies
from graphmorph.errors import RewriteError
from graphmorph.graph.layers import fresh_copy
from graphmorph.graph.memo import unchanged
from graphmorph.graph.registry import Registry
from graphmorph.graph.rng import seeded
from graphmorph.graph.shapes import Inputs
from graphmorph.graph.ops import attribute, has_attribute
from graphmorph.graph.verify import FLOAT64_ATOL, annotate_rewritten, parameter_count
from graphmorph.graph.copying import copied_meta
from transforms.dense import grow_dense, is_dense_block
from transforms.initializers import GROWTH_INITS, AdamInitOptions, Batches, adam_init, identity_init
from transforms.protocol import NOT_RECORDED, Edit, Rewrite, Step, apply, register

__all__ = ["grow", "growth_refusal", "Grow"]


def grow(
    gm: fx.GraphModule,
    stage: int | None = None,
    *,
    after: str | None = None,
    init: str = "gau",
    std: float = 1.0,
    data: Batches | None = None,
    adam_options: AdamInitOptions = AdamInitOptions(),
    example_input: torch.Tensor | Inputs | None = None,
    generator: torch.Generator | None = None,
    verify: bool = True,
    registry: Registry | None = None,
    shortcut: bool = False,
) -> fx.GraphModule:
    """A new GraphModule with a block stacked after the last block of `stage` or after the block
    named `after`; `gm` is left untouched.

    `init` is one of zero | uni | gau | adam | identity (see `transforms.initializers`); `std` is the noise
    of uni/gau; `data` (batches of (x, y), or a callable returning them) feeds AdamInit. New
    parameters are drawn from a seed taken from `generator` (or the global RNG) and recorded in
    the history, so `replay` reproduces them. Verification (`graphmorph.graph.verify`) runs on
    `example_input` (default: seeded random data shaped like the captured input) and, for zero and
    identity, checks the function is preserved. `registry` says how to resize layers of the
    shape-preserving form of a reducing block (default: `Registry.default()`). With `shortcut`, a
    plain block's copy gets an identity shortcut around it, so that ZeroInit (or uni/gau/adam on
    its last affine layer) applies where the identity init does not (MobileNet's blocks that change
    the channels); a block of parallel branches (Inception, fire modules) gets one always, its copy's
    every branch silenced. With init="zero", a dense block grows by `transforms.grow_dense` (one
    more layer, recorded as such). Raises RewriteError with the reason when the rewrite cannot apply.
    """
    with unchanged(gm):  # finding the template and the rewrite's check share one block analysis
        template = _template(gm, stage, after, registry)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        if init == "zero" and template.kind != "residual" and is_dense_block(gm, template.name):
            return grow_dense(gm, template.name, seed=seed, example_input=example_input, verify=verify,
                              registry=registry)
        sets_last_affine = getattr(GROWTH_INITS.get(init), "sets_last_affine", True)   # not identity's
        shortcut = shortcut or (template.kind in ("branches", "dense") and sets_last_affine)
        rewrite = Grow(after=template.name, stage=stage, init=init, std=std, seed=seed, shortcut=shortcut,
                       adam_options=adam_options, registry=registry)
        return apply(gm, rewrite, example_input=example_input, data=data, verify=verify)


def growth_refusal(gm: fx.GraphModule, stage: int, init: str = "gau") -> str | None:
    """Why `grow(gm, stage=stage, init=init)` cannot apply, or None when it can: the rewrite's
    check, then a trial growth, unverified and on a private RNG (AdamInit is tried as GauInit,
    without its training), for what only building the block shows."""
    try:
        with unchanged(gm):
            template = _template(gm, stage, None, None)
            reason = Grow(after=template.name, stage=stage, init=init, std=1.0, seed=0).check(gm)
            if reason is None:
                trial = Grow(after=template.name, stage=stage, init=GROWTH_INITS[init].without_data(), std=1.0,
                             seed=0)
                apply(gm, trial, verify=False)
    except RewriteError as err:
        return str(err)
    return reason


@register
@dataclass(frozen=True, kw_only=True)
class Grow(Rewrite):
    """Stack a fresh copy of block `after` right after it (`stage` is recorded for the reader),
    its last affine layer set by `init` from `seed` (`std` for uni/gau); with `shortcut`, a plain
    block's copy is wrapped in an identity shortcut."""

    name: ClassVar[str] = "grow"
    after: str
    stage: int | None = None
    init: str
    std: float
    seed: int
    shortcut: bool = False
    adam_options: AdamInitOptions = field(default=AdamInitOptions(), metadata=NOT_RECORDED)

    def describe(self) -> str:
        return f"grow after {self.after!r} (init={self.init!r})"

    def check(self, gm: fx.GraphModule) -> str | None:
        if self.init not in GROWTH_INITS:
            return (f"unknown init {self.init!r}; choose one of {', '.join(GROWTH_INITS)} (or register yours "
                    "with transforms.register_growth_init)")
        if not (isinstance(self.std, (int, float)) and self.std > 0):
            return f"std must be a positive number, got {self.std!r}"
        template = block_named(gm, self.after, registry=self.op_registry)
        if self.stage is not None:
            found = next((s.index for s in find_stages(gm, self.op_registry) if self.after in s.blocks), None)
            if found != self.stage:
                where = f"is in stage {found}" if found is not None else "is in no stage"
                return f"the record says stage {self.stage!r}, but block {self.after!r} {where}"
        return _init_refusal(gm, template, self.init, self.shortcut, self.op_registry)

    def edit(self, step: Step) -> Edit:
        if GROWTH_INITS[self.init].needs_data and step.data is None:
            raise RewriteError(f"init={self.init!r} optimises on training data: pass data=<loader or callable of "
                               "(x, y) batches>")
        gm, work = step.source, step.work
        template = block_named(gm, self.after, registry=self.op_registry)
        plan = _plan(work, template)
        deps = channel_dependencies(gm, self.op_registry) if plan.derived else None
        values = _new_values(work, deps, template, plan, self.seed, self.op_registry)
        output = _insert(work, plan)
        if self.shortcut:
            output = _around(work, plan.entry, output)
        for target, value in values.items():
            _install(work, target, value)
        work.recompile()
        same_shapes = annotate_rewritten(gm, work, step.inputs, f"stacking a copy of block {template.name!r}")
        _check_shape_preserving(template, plan.entry, output)
        new_block = next((b for b in find_blocks(work, self.op_registry) if b.input_node == plan.entry.name), None)
        layers = [_copied_layer(work, plan, target) for target in template.initialised]
        layers = [_Shifted(layer, at) if at else layer for layer, at in zip(layers, template.silent_at)]
        _initialise(work, self.init, layers, self.std, self.seed, new_block, template, self.op_registry)
        layer = layers[-1] if layers else None
        notes = {"new_block": new_block.name if new_block else None}
        if GROWTH_INITS[self.init].needs_data:
            new_modules = [v for v in values.values() if isinstance(v, nn.Module)]
            notes["adam"] = adam_init(gm, work, layer, new_modules, step.data, self.adam_options)
        modes, atol = GROWTH_INITS[self.init].preserves or ((), FLOAT64_ATOL)
        return Edit(sum(_numel(v) for v in values.values()), lambda: gm, modes, atol, same_shapes, notes)


# --------------------------------------------------------------------------- choosing the template


def _template(gm: fx.GraphModule, stage: int | None, after: str | None, registry: Registry | None) -> Block:
    if not isinstance(gm, fx.GraphModule):
        raise RewriteError(
            f"grow works on a captured GraphModule, got {type(gm).__name__}: "
            "use graphmorph.capture(model, example_input) first"
        )
    if (stage is None) == (after is None):
        raise RewriteError("grow needs exactly one of stage=<index> or after=<block name>")
    if after is not None:
        return block_named(gm, after, registry=registry)
    stages = find_stages(gm, registry)
    if not isinstance(stage, int) or not 0 <= stage < len(stages):
        if not stages:
            raise RewriteError("the net has no stages to grow: find_stages found no repeated blocks")
        last = len(stages) - 1
        raise RewriteError(f"stage {stage!r} is out of range: the net has {len(stages)} stage{'s' if last else ''} "
                           f"(0..{last})")
    return stages[stage].block_info[-1]


# --------------------------------------------------------------------------- the rewrite


@dataclass
class _Plan:
    """What to copy from the working graph and under which names."""

    nodes: list[fx.Node]                # template nodes to copy, in graph order
    entry: fx.Node                      # feeds the new block: the template's output
    sources: dict[fx.Node, fx.Node]     # template input (and a dropped shortcut's output) -> entry
    targets: dict[str, str]             # module / attribute target -> its copy's target
    rename: Callable[[str], str]        # module path -> its copy's path (for nn_module_stack)
    derived: bool                       # stacking the shape-preserving form of a reducing block


def _init_refusal(gm: fx.GraphModule, block: Block, init: str, shortcut: bool, registry: Registry) -> str | None:
    name, spec = block.name, GROWTH_INITS[init]
    identity = not spec.sets_last_affine                         # makes a plain block an identity
    silences = spec.preserves is not None and spec.sets_last_affine   # zero: a silenced residual branch
    if shortcut and (block.kind == "residual" or identity):
        return (f"shortcut=True wraps a plain, branch or dense block's copy for init='zero', 'uni', 'gau' or "
                f"'adam'; block {name!r} is {block.kind} and init is {init!r}")
    if silences and block.kind != "residual" and not shortcut:
        return _zero_refusal(gm, block, init)
    if identity and block.kind == "branches":
        return (f"init='identity' is for plain conv-BN-ReLU blocks, but block {name!r} is branches: it joins "
                "parallel branches with no shortcut (an Inception or fire module, a channel-shuffle unit), so "
                "no init makes its copy an identity; grow a residual, dense or plain block instead")
    if identity and block.kind != "plain":
        return (f"init='identity' is for plain conv-BN-ReLU blocks, but block {name!r} is {block.kind}; "
                "use init='zero' for residual blocks")
    if silences and block.kind == "residual":
        after = _after_merge(gm, block, registry)
        if after is not None:
            return (f"init={init!r} silences block {name!r}'s residual branch, but the block applies "
                    f"{after} after its residual add, so a silenced copy would apply it twice")
    if spec.sets_last_affine and block.last_affine_module is None and block.kind == "branches":
        return (f"init={init!r} silences each parallel branch of block {name!r} at its last affine layer, and one "
                "of them has none: it passes the block's input on (as a channel-split unit's untouched half "
                "does), or ops after the merge do not keep zero at zero, so no copy of it starts as an identity")
    if spec.sets_last_affine and block.last_affine_module is None:
        stop = f": back from its end, {describe(gm, _node(gm, block.unsilenced))} is neither linear in a parameter " \
               "nor zero at zero" if block.unsilenced else ""
        return (f"init={init!r} sets the last affine layer of block {name!r}, and none was found{stop}; a branch must "
                "end in an op linear in a parameter (a norm, conv or linear layer, a layer scale, experts' weights), "
                "followed only by ops that keep zero at zero")
    if spec.needs_data and len(block.initialised) > 1:
        return (f"init={init!r} optimises one BatchNorm, but block {name!r} has {len(block.initialised)} residual "
                "branches; use init='zero'")
    if spec.needs_data and not ops.is_norm(gm, _node(gm, block.last_affine)):
        return (f"init={init!r} optimises the block's last BatchNorm, but block {name!r}'s branch "
                f"ends in {block.last_affine_module!r}, which is not a normalisation layer")
    return None


def _zero_refusal(gm: fx.GraphModule, block: Block, init: str) -> str:
    """Why init='zero' (an init that silences the branch) cannot grow a block without a residual
    branch, and what can grow it instead."""
    name, why = block.name, f"init={init!r} silences a residual branch"
    if block.kind == "plain":
        return (f"{why}, but block {name!r} is a plain block with no shortcut to carry its input; use "
                "init='identity' for a conv-BN-ReLU block, or shortcut=True to wrap the copy in one")
    if is_dense_block(gm, name):
        return (f"{why}, but block {name!r} is a dense block: it concatenates its input with new features; "
                f"add a layer to it with transforms.grow_dense(gm, {name!r}), which preserves the function")
    return (f"{why}, but block {name!r} joins parallel branches with no shortcut (an Inception or fire module, "
            "a channel-shuffle unit); shortcut=True wraps its copy in one, with every branch silenced "
            "(grow does so for such a block)")


def _plan(work: fx.GraphModule, template: Block) -> _Plan:
    """The copy of `template` to stack after it: its shape-preserving form (the identity for a
    shortcut with a layer, RepVGG's BatchNorm, so that a silenced copy is the identity) where the
    block changes the shape or has such a shortcut, else the block as it is."""
    nodes = ops.nodes_by_name(work.graph)
    derived = not template.growable or any(ops.is_affine(work, nodes[n]) for n in template.shortcut_nodes)
    if derived and template.kind == "dense":
        raise RewriteError(
            f"block {template.name!r} is not shape-preserving and cannot be made so: it concatenates its input, "
            "so its output always has more channels than its input"
        )
    skip = _dropped(nodes, template) if derived else set()
    entry = nodes[template.output_node]
    sources = {nodes[template.input_node]: entry}
    if derived and template.shortcut == "projection":
        sources[nodes[template.shortcut_nodes[-1]]] = entry     # what the merge read from the projection
    copied = [nodes[n] for n in template.nodes if n not in skip]
    referenced = list(dict.fromkeys(str(n.target) for n in copied if n.op in ("call_module", "get_attr")))
    prefix = template.name
    if referenced and _is_module(work, prefix) and all(t == prefix or t.startswith(prefix + ".") for t in referenced):
        new_prefix = _free_sibling(work, prefix)

        def rename(path: str) -> str:
            inside = path == prefix or path.startswith(prefix + ".")
            return new_prefix + path[len(prefix):] if inside else path
    else:
        k = 1
        while any(has_attribute(work, f"{t}_g{k}") for t in referenced):
            k += 1
        suffixed = {t: f"{t}_g{k}" for t in referenced}

        def rename(path: str) -> str:
            return suffixed.get(path, path)
    return _Plan(copied, entry, sources, {t: rename(t) for t in referenced}, rename, derived)


def _dropped(nodes: dict[str, fx.Node], template: Block) -> set[str]:
    """The template's projection shortcut, and what only it reads (its norm's parameters), which a
    shape-preserving copy replaces by the identity."""
    dropped = set(template.shortcut_nodes)
    while True:
        only = {n for n in template.nodes if n not in dropped and nodes[n].users
                and all(u.name in dropped for u in nodes[n].users)}
        if not only:
            return dropped
        dropped |= only


def _new_values(work: fx.GraphModule, deps: ChannelDependencies | None, template: Block, plan: _Plan, seed: int,
                registry: Registry) -> dict[str, Any]:
    """Fresh modules and parameters for the copy, keyed by their new targets, drawn from `seed`
    (`deps`: the source's channel dependencies, for a derived copy)."""
    resized = _resized(deps, plan, registry) if plan.derived else _Resized(set(), set(), set())
    channels = template.out_shape[0] if plan.derived else None
    values = {}
    modules = {old for old in plan.targets if isinstance(attribute(work, old), nn.Module)}
    with seeded(seed, like=work):
        for old, new in plan.targets.items():
            if any(old.startswith(owner + ".") for owner in modules):
                continue        # read from a copied module (EdgeNeXt reads a conv's weight): copied with it
            value = attribute(work, old)
            if isinstance(value, nn.Module):
                values[new] = _new_layer(value, old, template.name, plan.derived, registry,
                                         channels if old in resized.inputs else None,
                                         channels if old in resized.gates else None)
            elif old in resized.norm_tensors:   # a functional norm's: its default, at the new width
                fresh = torch.full((channels,), 1.0 if old.endswith(("weight", "running_var")) else 0.0,
                                   dtype=value.dtype, device=value.device)
                values[new] = nn.Parameter(fresh, value.requires_grad) if isinstance(value, nn.Parameter) else fresh
            elif isinstance(value, nn.Parameter):
                fresh = nn.Parameter(value.detach().clone(), requires_grad=value.requires_grad)
                if fresh.dim() >= 2:  # PyTorch's default for conv and linear weights
                    nn.init.kaiming_uniform_(fresh, a=5 ** 0.5)
                values[new] = fresh
            else:
                values[new] = value.clone() if torch.is_tensor(value) else value
    return values


@dataclass(frozen=True)
class _Resized:
    """What a derived copy resizes to the block's output width (targets in the template)."""

    inputs: set[str]         # layers reading the input's channels
    gates: set[str]          # layers whose output is multiplied or added onto them
    norm_tensors: set[str]   # the parameters and statistics of functional norms over them


def _resized(deps: ChannelDependencies, plan: _Plan, registry: Registry) -> _Resized:
    """The layers whose channels follow the block's input in a derived copy, as the channel engine
    couples them inside the template: the layers carrying them (BatchNorms, depthwise convolutions)
    and reading them (its first convolutions), the layers making channels joined with them (a
    squeeze-excitation gate's expanding convolution), and the statistics of functional norms over
    them (timm's BatchNormAct2d as traced)."""
    inside = [deps.by_name[n.name] for n in plan.nodes]
    inputs, gates, norm_tensors = set(), set(), set()
    for source in plan.sources:
        coupled = deps.coupled(deps.by_name[source.name], inside)
        inputs |= {str(n.target) for n in coupled.carriers | coupled.readers
                   if n.op == "call_module" and registry.layer_surgery(deps.gm.get_submodule(n.target)) is not None}
        gates |= {str(n.target) for n in coupled.makers if n.op == "call_module"}
        norm_tensors |= {str(c.target) for c in coupled.constants
                         if c.op == "get_attr" and any(ops.is_norm(deps.gm, user) for user in c.users)}
    return _Resized(inputs, gates, norm_tensors)


def _out_channels(module: nn.Module) -> int | None:
    return getattr(module, "out_channels", getattr(module, "out_features", None))


def _new_layer(module: nn.Module, target: str, block: str, derived: bool, registry: Registry,
               in_channels: int | None = None, out_channels: int | None = None) -> nn.Module:
    surgery = registry.layer_surgery(module)
    layer = None
    try:
        if in_channels is not None and surgery.in_channels(module) != in_channels:
            layer = surgery.with_in_channels(module, in_channels)
        if out_channels is not None and _out_channels(module) != out_channels:
            if surgery is None or surgery.with_out_channels is None:
                raise ValueError(f"{type(module).__name__} {target!r} would need {out_channels} output channels")
            layer = surgery.with_out_channels(layer or module, out_channels)
        if derived and isinstance(module, nn.modules.conv._ConvNd) and not _same_size(module):
            raise ValueError(f"{type(module).__name__} {target!r} (kernel {module.kernel_size}, padding "
                             f"{module.padding}) changes the size even at stride 1")
        if derived and _strided(module):
            if surgery is None or surgery.with_unit_stride is None:
                raise ValueError(f"{type(module).__name__} {target!r} reduces the size and has no stride-1 form")
            layer = surgery.with_unit_stride(layer or module)
    except ValueError as err:
        raise RewriteError(f"cannot stack a shape-preserving copy of block {block!r}: {err}") from err
    if layer is None:
        return fresh_copy(module)
    reference = next(itertools.chain(module.parameters(), module.buffers()), None)
    if reference is not None:  # same device, and same precision for floating-point tensors
        layer.to(device=reference.device)
        if reference.is_floating_point():
            layer.to(dtype=reference.dtype)
    return layer


def _same_size(conv: nn.modules.conv._ConvNd) -> bool:
    """Whether the convolution keeps the spatial size at stride 1."""
    if conv.padding == "same":
        return True
    padding = (conv.padding,) * len(conv.kernel_size) if isinstance(conv.padding, int) else conv.padding
    return all(k % 2 == 1 and p == d * (k - 1) // 2 for k, p, d in zip(conv.kernel_size, padding, conv.dilation))


def _strided(module: nn.Module) -> bool:
    stride = getattr(module, "stride", 1)
    return any(s != 1 for s in stride) if isinstance(stride, tuple) else stride not in (1, None)


def _insert(work: fx.GraphModule, plan: _Plan) -> fx.Node:
    """Copy the plan's nodes right after the entry and route the entry's users to the copy's output."""
    graph = work.graph
    env: dict[fx.Node, fx.Node] = dict(plan.sources)
    created = []
    with graph.inserting_before(plan.entry.next):
        for node in plan.nodes:
            target = plan.targets.get(str(node.target), node.target) if node.op in ("call_module", "get_attr") else node.target
            name = target.replace(".", "_") if node.op in ("call_module", "get_attr") else node.name
            copy = graph.create_node(node.op, target, map_arg(node.args, lambda a: env.get(a, a)),
                                     map_arg(node.kwargs, lambda a: env.get(a, a)), name=name, type_expr=node.type)
            copy.meta = copied_meta(node.meta, plan.rename)
            env[node] = copy
            created.append(copy)
    output = env[plan.entry]  # the copy of the template's output
    inside = set(created)
    plan.entry.replace_all_uses_with(output, delete_user_cb=lambda user: user not in inside)
    return output


def _initialise(work, init: str, layers: list[nn.Module | torch.Tensor | _Projection], std: float, seed: int,
                block: Block | None, template: Block, registry: Registry):
    """Set the last affine layer of each of the new block's residual branches (modules or layer-scale
    parameters) as the init says, or make a plain block an identity."""
    spec = GROWTH_INITS[init]
    if not spec.sets_last_affine:
        conv, norm = _identity_layers(work, block, template, registry)
        identity_init(conv, norm)
        return
    if spec.set_layer is not None:
        for k, layer in enumerate(layers):
            with torch.no_grad():
                if isinstance(layer, _Shifted):     # set as a scale, then shifted back
                    scale = layer.parameter - layer.silent_at
                    spec.set_layer(scale, std, seed + k)
                    layer.parameter.copy_(scale + layer.silent_at)
                else:
                    spec.set_layer(layer, std, seed + k)


@dataclass
class _Shifted:
    """A parameter whose branch is silent when it is filled with `silent_at`, not zero (a norm
    scaling by `1 + weight`): an init sets `parameter - silent_at` as it sets a scale."""

    parameter: torch.Tensor
    silent_at: float


@dataclass
class _Projection:
    """The copied weight and bias of a layer the graph reads as parameters (an attention
    function's output projection), set by an init as the layer would be."""

    weight: torch.Tensor
    bias: torch.Tensor | None


def _copied_layer(work: fx.GraphModule, plan: _Plan, target: str) -> nn.Module | torch.Tensor | _Projection:
    """The copy of a template's module or parameter `target`: copied itself, inside a copied module
    (an attention module's `out_proj`), or as the parameters the graph reads from it."""
    if target in plan.targets:
        return attribute(work, plan.targets[target])
    owner = next((t for t in plan.targets if target.startswith(t + ".")), None)
    if owner is not None:
        return attribute(work, plan.targets[owner] + target[len(owner):])
    weight, bias = (plan.targets.get(f"{target}.{part}") for part in ("weight", "bias"))
    return _Projection(attribute(work, weight), attribute(work, bias) if bias else None)


def _layer_name(gm: fx.GraphModule, node: fx.Node) -> str:
    """What a node computes, for a message: the module's class or the function's name (the copy's
    own module names, `3_g1`, mean nothing to the user)."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return getattr(node.target, "__name__", str(node.target))


def _identity_layers(work: fx.GraphModule, block: Block | None, template: Block, registry: Registry):
    """The conv and BN (None for VGG's conv-ReLU) of a plain conv-BN-ReLU block that can pass its input through."""
    why = f"init='identity' needs a conv-BN-ReLU or conv-ReLU block, and block {template.name!r}"
    if block is None:
        raise RewriteError(f"{why} was not recognised after copying")
    nodes = ops.nodes_by_name(work.graph)
    chain = [nodes[n] for n in block.nodes if nodes[n].op not in ("get_attr", "placeholder")]
    kinds = [_identity_role(work, n, registry) for n in chain]
    if kinds not in (["conv", "norm", "relu"], ["conv", "relu"]):
        raise RewriteError(f"{why} is {' -> '.join(_layer_name(work, n) for n in chain)}")
    conv = work.get_submodule(chain[0].target)
    norm = work.get_submodule(chain[1].target) if len(chain) == 3 else None
    same = all(p == d * (k - 1) // 2 and k % 2 == 1 for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))
    if conv.groups != 1 or conv.in_channels != conv.out_channels or not same or conv.padding_mode != "zeros":
        raise RewriteError(f"{why}'s conv cannot be an identity: it needs groups=1, equal channels and 'same' zero padding")
    if norm is not None and not (norm.affine and norm.track_running_stats):
        raise RewriteError(f"{why}'s BatchNorm needs affine parameters and running statistics")
    return conv, norm


def _identity_role(work: fx.GraphModule, node: fx.Node, registry: Registry) -> str | None:
    """conv, norm or relu (an idempotent op: a non-negative input passes it unchanged) in a plain block."""
    module = ops.module_of(work, node)
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.BatchNorm2d):
        return "norm"
    return "relu" if registry.has(work, node, "idempotent") else None


# --------------------------------------------------------------------------- small helpers


def _after_merge(gm: fx.GraphModule, block: Block, registry: Registry) -> str | None:
    """The first op a residual block applies after its last add that is not idempotent (SiLU, GELU),
    or None: applied twice it changes the function (ReLU twice is ReLU once; a reshape or permute
    back to the block's layout undoes the one before the add)."""
    nodes = ops.nodes_by_name(gm.graph)
    members = [nodes[n] for n in block.nodes]
    merges = [k for k, n in enumerate(members) if ops.is_add(n)]
    for node in members[merges[-1] + 1:] if merges else []:
        if node.op in ("get_attr", "placeholder") or not {"idempotent", "layout"}.isdisjoint(registry.facts(gm, node)) \
                or isinstance(ops.module_of(gm, node), nn.Dropout):
            continue
        return describe(gm, node)
    return None


def _around(work: fx.GraphModule, entry: fx.Node, output: fx.Node) -> fx.Node:
    """An identity shortcut around the copy: `entry + output`, read by everything that read `output`."""
    with work.graph.inserting_after(output):
        residual = work.graph.call_function(operator.add, (entry, output))
    residual.meta = {k: v for k, v in output.meta.items() if k not in ("tensor_meta", "type")}
    output.replace_all_uses_with(residual, delete_user_cb=lambda user: user is not residual)
    return residual


def _check_shape_preserving(template: Block, entry: fx.Node, output: fx.Node) -> None:
    before, after = entry.meta["tensor_meta"].shape, output.meta["tensor_meta"].shape
    if before != after:
        raise RewriteError(
            f"cannot stack a shape-preserving copy of block {template.name!r}: the copy maps "
            f"{tuple(before[1:])} to {tuple(after[1:])}"
        )


def _node(gm: fx.GraphModule, name: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


def _is_module(gm: nn.Module, target: str) -> bool:
    return bool(target) and has_attribute(gm, target) and isinstance(attribute(gm, target), nn.Module)


def _free_sibling(gm: nn.Module, name: str) -> str:
    """`layer1.2` -> `layer1.3` (the next free index); `head` -> `head_g1`."""
    parent, _, last = name.rpartition(".")
    owner = attribute(gm, parent) if parent else gm
    taken = {child for child, _ in owner.named_children()}
    if last.isdigit():
        fresh = str(max(int(c) for c in taken if c.isdigit()) + 1)
    else:
        k = 1
        while f"{last}_g{k}" in taken or hasattr(owner, f"{last}_g{k}"):
            k += 1
        fresh = f"{last}_g{k}"
    return f"{parent}.{fresh}" if parent else fresh


def _install(gm: fx.GraphModule, target: str, value) -> None:
    if isinstance(value, nn.Module):
        gm.add_submodule(target, value)
        return
    owner_path, _, name = target.rpartition(".")
    if owner_path and not has_attribute(gm, owner_path):
        gm.add_submodule(owner_path, nn.Module())
    owner = attribute(gm, owner_path) if owner_path else gm
    if isinstance(value, nn.Parameter):
        owner.register_parameter(name, value)
    elif torch.is_tensor(value):
        owner.register_buffer(name, value)
    else:
        setattr(owner, name, value)


def _numel(value) -> int:
    if isinstance(value, nn.Module):
        return parameter_count(value)
    return value.numel() if isinstance(value, nn.Parameter) else 0
