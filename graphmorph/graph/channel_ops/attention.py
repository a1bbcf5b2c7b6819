"""Handlers of attention: matrix products between q, k and v, and scaled dot-product attention."""
from __future__ import annotations

from torch import fx

from graphmorph.graph import ops
from graphmorph.graph.channel_ops.protocols import ChannelOp

__all__ = ["MatMul", "ScaledDotProductAttention"]


class MatMul(ChannelOp):
    """matmul / @ / bmm in attention: `q @ k.transpose(-2, -1)` meets q's and k's channels along the
    contracted dimension (channel d of q with channel d of k) and makes scores without channels;
    `scores @ v` keeps v's channels along the last axis. Any other product is refused. `first` is
    where the two factors start: 1 for `baddbmm(scores_bias, q, k)` (BLOOM's ALiBi scores)."""

    def __init__(self, first: int = 0):
        self.first = first

    def relate(self, rel, node):
        a, b = node.args[self.first:self.first + 2]
        if not all(isinstance(t, fx.Node) and rel.rank(t) >= 2 for t in (a, b)):
            rel.refuse(node, f"{rel.describe(node)} multiplies a tensor that is not a matrix batch")
        elif rel.channels(a) is None and rel.channel_axis(b) == rel.rank(b) - 1 and rel.rank(node) == rel.rank(b):
            rel.set_axis(node, rel.rank(node) - 1)
            rel.same(node, b)
        elif rel.channel_axis(a) == rel.rank(a) - 1 and rel.channel_axis(b) == rel.rank(b) - 2 \
                and rel.channels(a) == rel.channels(b) and not rel.is_constant(b):
            rel.meets(b, a)
            rel.free.add(node)
        else:
            rel.refuse(node, f"{rel.describe(node)} multiplies matrices across the channels")

    def check(self, edit, node):
        a = node.args[self.first]
        if edit.grows and edit.changed(a):   # q in `q @ k.T`; scores in `scores @ v` carry no channels
            return (f"{edit.describe(node)} contracts q with k over these channels: new ones would change "
                    f"the attention scores")
        return None


class ScaledDotProductAttention(ChannelOp):
    """F.scaled_dot_product_attention with q, k and v's features along the last axis: channel d
    of q meets channel d of k, the output's channels are v's. A cut that removes q's features
    passes the scale of the full width, so the scores stay those of masking. With `heads=True`
    the channels are the heads (`[batch, heads, tokens, features]`): head h of q, k and v go
    together, and the output's heads are v's."""

    def __init__(self, heads: bool = False):
        self.heads = heads

    def relate(self, rel, node):
        q, k, v = node.args[:3]
        along = (lambda t: rel.rank(t) - 3) if self.heads else (lambda t: rel.rank(t) - 1)
        if any(rel.channels(t) is None or rel.channel_axis(t) != along(t) for t in (q, k, v)) \
                or rel.channels(q) != rel.channels(k):
            what = "heads along the third axis from the end" if self.heads else "features along the last axis"
            rel.refuse(node, f"{rel.describe(node)} takes q, k, v without their {what}")
            return
        rel.meets(k, q)
        if self.heads:   # head h of the output is softmax(q_h k_h^T) v_h: v's head h goes with q's
            rel.meets(v, q)
            mask = ops.argument(node, 3, "attn_mask")
            shape = rel.shape(mask) if isinstance(mask, fx.Node) else None
            if shape is not None and len(shape) >= 3 and shape[-3] != 1:   # a bias per head (Swin's)
                if rel.is_constant(mask):
                    rel.couple_parameter(node, mask, len(shape) - 3)
                else:
                    rel.refuse(node, f"{rel.describe(node)} adds a per-head mask computed from the input")
        rel.set_axis(node, along(node))
        rel.same(node, v)

    def check(self, edit, node):
        if edit.grows and edit.changed(node.args[0]) and not self.heads:   # a new head leaves the others' scores
            return (f"{edit.describe(node)} contracts q with k over these channels: new ones would change "
                    f"the attention scores")
        return None

    def resize(self, edit, node):
        q = node.args[0]
        if edit.changed(q) and ops.argument(node, 6, "scale") is None:
            node.kwargs = {**node.kwargs, "scale": edit.shape(q)[-1] ** -0.5}
