"""How each op relates and cuts channels: the registry behind channel dependencies and pruning.

A handler answers two questions about one kind of fx node. `relate` tells the dependency analysis
how the node's output channels relate to its inputs' (`Relations`: the same channel, an offset,
fresh channels, channels it reads and can drop, or a refusal with the reason). `resize` edits the
node once its channels change (`Editing`: per node, the old channel each new one takes, for a
cut that removes channels and a widening that copies them; module and tensor replacement).
`check` may refuse an edit before anything is changed.

Handlers are keyed by module type, by function, or by method name in a `Registry`
(`graphmorph.graph.registry`, which holds the default tables), which users extend with their own
layers; an op without a handler that touches channels makes its groups unprunable, with a reason
that names it.

The modules, by audience: `protocols` (what a handler is, may ask and may do), `base` (the
pass-through, refusing and ignoring handlers), then the handler families: `structural`,
`shape`, `weighted`, `norms`, `attention`.
"""
from graphmorph.graph.channel_ops.attention import MatMul, ScaledDotProductAttention
from graphmorph.graph.channel_ops.base import Ignore, PassThrough, Refuse
from graphmorph.graph.channel_ops.norms import ChannelNorm, FunctionalBatchNorm, is_channel_norm
from graphmorph.graph.channel_ops.protocols import ChannelLayout, ChannelOp, Editing, Relating, TensorQuestions, describe
from graphmorph.graph.channel_ops.shape import Expand, Permute, Reshape, Unsqueeze
from graphmorph.graph.channel_ops.structural import (Concat, Elementwise, GetItem, Pad, Reduce, Shift, Split, Unbind,
                                                     is_channel_mean)
from graphmorph.graph.channel_ops.weighted import (Convolution, Embedding, GroupedMatMul, Linear, TransposedConvolution,
                                                   output_weight)

__all__ = ["ChannelOp", "PassThrough", "Refuse", "Ignore", "Elementwise", "Concat", "Split", "GetItem", "Reduce",
           "Reshape", "Expand", "Permute", "Unsqueeze", "Shift", "Unbind", "MatMul", "Pad",
           "ScaledDotProductAttention", "Convolution", "Embedding", "TransposedConvolution", "Linear", "GroupedMatMul",
           "ChannelNorm",
           "FunctionalBatchNorm", "output_weight", "is_channel_norm", "is_channel_mean", "TensorQuestions",
           "ChannelLayout", "Relating", "Editing", "describe"]
