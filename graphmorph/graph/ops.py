"""What kind of operation an fx node is, structurally: a convolution, a linear layer, a norm, a pool,
an add, a concatenation... with one answer for the `call_module` form (nn.Conv2d) and the
`call_function`/`call_method` forms (F.conv2d, torch.add, x.add_, `+=`), and how to read its
arguments. What else is true of an op (f(0) == 0, an activation, stochastic, free of MACs) is a
fact of the op registry (`graphmorph.graph.registry`), which users extend.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORM_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
CONV_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
CONV_TRANSPOSE_FUNCTIONS = {F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
LINEAR_FUNCTIONS = {F.linear}
# linear layers of packages graphmorph does not import whose weight is stored [in, out]
# (Hugging Face's GPT-2 `Conv1D`: `addmm(bias, x, weight)`)
TRANSPOSED_LINEAR_NAMES = frozenset({"transformers.pytorch_utils.Conv1D"})
# subclasses of nn.Linear with a forward of their own that computes what nn.Linear's does
# (Falcon's `input @ weight.T + bias`): kept as one call, as nn.Linear is
LINEAR_EQUIVALENT_NAMES = frozenset({"transformers.models.falcon.modeling_falcon.FalconLinear"})
NORM_FUNCTIONS = {F.batch_norm, F.group_norm, F.layer_norm, F.instance_norm}
POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}
# attention functions of packages graphmorph does not import: (position, name) of the output
# projection's weight argument, whose module's weight and bias set the op's output
ATTENTION_FUNCTIONS = {
    "torchvision.models.swin_transformer.shifted_window_attention": (2, "proj_weight"),
}

ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_"}
MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
MUL_METHODS = {"mul", "mul_"}
CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
ELEMENTWISE_BINARY_FUNCTIONS = ADD_FUNCTIONS | MUL_FUNCTIONS | {
    operator.sub, operator.isub, torch.sub, operator.truediv, operator.itruediv, torch.div,
}
ELEMENTWISE_BINARY_METHODS = ADD_METHODS | MUL_METHODS | {"sub", "sub_", "div", "div_"}
SUB_FUNCTIONS = {operator.sub, operator.isub, torch.sub}
DIV_FUNCTIONS = {operator.truediv, operator.itruediv, torch.div}
MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.bmm}
# experts' grouped matrix products, linear in their weight operand (position 1): ATen's, and the
# fallback transformers 5 registers (`torch.ops.transformers.grouped_mm_fallback`)
GROUPED_MM_NAMES = frozenset({"aten::_grouped_mm", "transformers::grouped_mm_fallback"})
# ops whose operands after the first give only indices, a shape or a dtype
FIRST_OPERAND_METHODS = {"type_as", "reshape_as", "view_as", "expand_as"}
FIRST_OPERAND_NAMES = frozenset({"aten::type_as", "aten::index.Tensor"})


def channels_of(node: fx.Node) -> int:
    """Dimension 1 of the node's captured shape: the channels of an N, C, ... tensor."""
    return node.meta["tensor_meta"].shape[1]


def nodes_by_name(graph: fx.Graph) -> dict[str, fx.Node]:
    """The graph's nodes by name."""
    return {node.name: node for node in graph.nodes}


def module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The submodule a call_module node calls, else None."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def argument(node: fx.Node, position: int, name: str, default=None):
    """A call's argument, passed by position or by keyword (the one reader of call arguments)."""
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def layer_weight(node: fx.Node):
    """The weight argument of an F.conv*/F.linear call node (`argument(node, 1, "weight")`)."""
    return argument(node, 1, "weight")


def layer_bias(node: fx.Node):
    """The bias argument of an F.conv*/F.linear call node, None when it has none."""
    return argument(node, 2, "bias")


def has_bias(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a conv/linear node, module or functional, adds a bias."""
    module = module_of(gm, node)
    if module is not None:
        return getattr(module, "bias", None) is not None
    return layer_bias(node) is not None


def cat_dim(node: fx.Node, rank: int) -> int:
    """The non-negative dimension a torch.cat node of `rank`-dimensional tensors joins along."""
    return argument(node, 1, "dim", 0) % rank


def _is(gm, node, modules: tuple, functions: set, methods: set = frozenset()) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), modules)
    if node.op == "call_function":
        return node.target in functions
    if node.op == "call_method":
        return node.target in methods
    return False


def is_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A convolution (not transposed), module or functional."""
    return _is(gm, node, CONV_MODULES, CONV_FUNCTIONS)


def is_conv_transpose(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _is(gm, node, CONV_TRANSPOSE_MODULES, CONV_TRANSPOSE_FUNCTIONS)


def is_linear(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _is(gm, node, (nn.Linear,), LINEAR_FUNCTIONS) or (
        node.op == "call_module" and stores_weight_transposed(module_of(gm, node)))


def stores_weight_transposed(module: nn.Module | None) -> bool:
    """Whether a layer's weight is stored [in, out, ...] rather than [out, in, ...]: a transposed
    convolution, or a linear layer of `TRANSPOSED_LINEAR_NAMES`."""
    return isinstance(module, CONV_TRANSPOSE_MODULES) or (
        module is not None and f"{type(module).__module__}.{type(module).__qualname__}" in TRANSPOSED_LINEAR_NAMES)


def is_weighted(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A layer with a weight matrix: convolution, transposed convolution or linear."""
    return is_conv(gm, node) or is_conv_transpose(gm, node) or is_linear(gm, node)


def weight_owner(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The module holding a functional layer's weight (`F.batch_norm(x, ..., self.weight,
    self.bias)` inside timm's BatchNormAct2d, `F.conv2d(x, self.weight)`), or None."""
    if node.op != "call_function":
        return None
    position = 3 if node.target is F.batch_norm else 2 if is_norm(gm, node) else 1
    weight = argument(node, position, "weight")
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return None
    owner, _, leaf = str(weight.target).rpartition(".")
    holder = gm.get_submodule(owner) if owner else gm
    return owner if leaf == "weight" and owner and getattr(holder, "weight", None) is attribute(
        gm, str(weight.target)) else None


def is_attention(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An attention op whose projections fx does not see: torch's nn.MultiheadAttention (a leaf
    module), or a wrapped attention function that takes them as arguments (torchvision's Swin)."""
    return attention_output(gm, node) is not None


def attention_output(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The module path of an attention op's output projection (zeroing it silences the op), else None."""
    if isinstance(module_of(gm, node), nn.MultiheadAttention):
        return f"{node.target}.out_proj"
    position = next((ATTENTION_FUNCTIONS[n] for n in qualified_names(gm, node) if n in ATTENTION_FUNCTIONS), None)
    if position is None:
        return None
    weight = argument(node, *position)
    owner, _, leaf = str(getattr(weight, "target", "")).rpartition(".")
    return owner if leaf == "weight" and getattr(weight, "op", None) == "get_attr" else None


def is_norm(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _is(gm, node, NORM_MODULES, NORM_FUNCTIONS)


def is_affine(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A layer whose output has a learned scale and shift: weighted layers and normalisations."""
    return is_weighted(gm, node) or is_norm(gm, node)


def is_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _is(gm, node, POOL_MODULES, POOL_FUNCTIONS)


def qualified_names(gm: fx.GraphModule, node: fx.Node) -> list[str]:
    """`package.module.Name` of a call_function's function, or of a call_module's class and its
    base classes (most specific first): how ops of packages graphmorph does not import are known."""
    if node.op == "call_module":
        return [f"{cls.__module__}.{cls.__qualname__}" for cls in type(module_of(gm, node)).__mro__]
    if node.op == "call_function":
        return [f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__qualname__', '')}"]
    return []


def is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ADD_METHODS
    )


def is_mul(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in MUL_FUNCTIONS) or (
        node.op == "call_method" and node.target in MUL_METHODS
    )


def _is_call(node: fx.Node, functions: set, methods: set) -> bool:
    return (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in methods)


def is_scaling(node: fx.Node) -> bool:
    """`x * k`, `k * x` or `x / k` with k a number: linear in its one tensor operand."""
    if not (is_mul(node) or _is_call(node, DIV_FUNCTIONS, {"div", "div_"})) or len(node.args) != 2:
        return False
    x, k = node.args
    if is_mul(node) and isinstance(k, fx.Node):
        x, k = k, x                                  # k * x
    return isinstance(x, fx.Node) and _number(k)


def is_shift(node: fx.Node) -> bool:
    """`x + k`, `k + x`, `x - k` or `k - x` with k a number."""
    if not (is_add(node) or _is_call(node, SUB_FUNCTIONS, {"sub", "sub_", "rsub"})) or len(node.args) != 2 \
            or node.kwargs.get("alpha", 1) != 1:
        return False
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    return len(tensors) == 1 and _number(node.args[1 - node.args.index(tensors[0])])


def scaled_operand(node: fx.Node) -> fx.Node:
    """The tensor operand of a scaling or shift (see `is_scaling`, `is_shift`)."""
    return next(a for a in node.args if isinstance(a, fx.Node))


def inverse_of(node: fx.Node, value: float) -> float | None:
    """The value that, filling the tensor operand of a scaling or shift, makes it output `value`
    (None for a product by zero, whose output is zero whatever the operand)."""
    first = isinstance(node.args[0], fx.Node)
    k = float(node.args[1] if first else node.args[0])
    if is_mul(node):
        return value / k if k else None
    if _is_call(node, DIV_FUNCTIONS, {"div", "div_"}):
        return value * k
    if is_add(node):
        return value - k
    if node.target == "rsub":           # x.rsub(k) == k - x
        return k - value
    return value + k if first else k - value


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) != float("inf")


def reads_first_operand_only(node: fx.Node) -> bool:
    """An op whose output is its first operand's elements, the other operands giving only indices,
    a shape or a dtype (`x.type_as(y)`, `x.view_as(y)`, `aten.index(x, [i])`)."""
    return (node.op == "call_method" and node.target in FIRST_OPERAND_METHODS) or (
        node.op == "call_function" and op_name(node) in FIRST_OPERAND_NAMES)


def parameter_operand(node: fx.Node) -> int | None:
    """Where a product linear in each operand takes the operand a parameter may be: -1 for either
    (`x * w`, `matmul(x, w)`), 1 for experts' grouped products; None for any other op."""
    if is_mul(node) or _is_call(node, MATMUL_FUNCTIONS, {"matmul", "bmm"}):
        return -1
    if is_grouped_product(node):
        return 1
    return None


def is_grouped_product(node: fx.Node) -> bool:
    """Experts' grouped matrix product (`GROUPED_MM_NAMES`)."""
    return node.op == "call_function" and op_name(node) in GROUPED_MM_NAMES


def op_name(node: fx.Node) -> str:
    """An ATen or custom op's `namespace::name[.overload]` ('' for other call targets); overload
    'default' is left out."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return ""
    return schema.name + (f".{schema.overload_name}" if schema.overload_name else "")


def is_cat(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in CAT_FUNCTIONS


def is_elementwise_binary(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ELEMENTWISE_BINARY_FUNCTIONS) or (
        node.op == "call_method" and node.target in ELEMENTWISE_BINARY_METHODS
    )


def module_path(node: fx.Node) -> str:
    """Qualified name of the module a node belongs to: its target for call_module, else the
    innermost module whose forward created it ('' for the root)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return list(stack.values())[-1][0]


def attribute(root: nn.Module, target: str):
    """The object at a dotted path under `root` ("layer1.0.bn2.weight"); AttributeError if absent."""
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def has_attribute(root: nn.Module, target: str) -> bool:
    """Whether a dotted path under `root` names something."""
    try:
        attribute(root, target)
    except AttributeError:
        return False
    return True


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (the CPU for a module without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))
