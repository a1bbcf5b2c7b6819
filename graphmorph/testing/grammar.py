"""Random fx-traceable CNNs from a small grammar of pieces, for property tests of rewrites on
models that are not ours: residual, pre-activation residual, bottleneck, projection, dense
(concat), depthwise-separable, grouped, squeeze-excitation, inverted-residual, split/concat,
functional (F.conv2d) and plain pieces, then a head that pools or flattens into a Linear; and
pre-norm transformer layers (separate q, k, v projections, plain or gated MLPs) on tokens.

A `CNNSpec` is plain data (the strategy in `graphmorph.testing` draws it), so a failing example
prints as a readable recipe and rebuilds the same net.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PIECES", "CNNSpec", "GrammarNet", "TransformerSpec", "TransformerNet"]

PIECES = ("plain", "residual", "preact", "bottleneck", "projection", "dense", "depthwise", "grouped", "se",
          "inverted", "split", "functional")


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Plain(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.body, self.act = _conv_bn(cin, width, 3, stride), nn.ReLU()
        self.out_channels = width

    def forward(self, x):
        return self.act(self.body(x))


class Residual(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1, self.conv2 = _conv_bn(cin, width), _conv_bn(width, cin)
        self.out_channels = cin

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class PreActivation(nn.Module):
    """BN-ReLU-conv twice on the branch (He et al. 2016, identity mappings); the shortcut carries x."""

    def __init__(self, cin, width, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, width, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, cin, 3, padding=1, bias=False)
        self.out_channels = cin

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        return x + self.conv2(F.relu(self.bn2(out)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 2 x width; a projection shortcut where the shape changes."""

    def __init__(self, cin, width, stride):
        super().__init__()
        self.reduce, self.conv = _conv_bn(cin, width, 1), _conv_bn(width, width, 3, stride)
        self.expand = _conv_bn(width, 2 * width, 1)
        self.shortcut = _conv_bn(cin, 2 * width, 1, stride) if stride != 1 or cin != 2 * width else nn.Identity()
        self.out_channels = 2 * width

    def forward(self, x):
        out = self.expand(F.relu(self.conv(F.relu(self.reduce(x)))))
        return F.relu(out + self.shortcut(x))


class Projection(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1, self.conv2 = _conv_bn(cin, width, 3, stride), _conv_bn(width, width)
        self.shortcut = _conv_bn(cin, width, 1, stride)
        self.out_channels = width

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        out += self.shortcut(x)
        return F.relu(out)


class Dense(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.norm, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, width, 3, padding=1, bias=False)
        self.out_channels = cin + width

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)


class Depthwise(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        multiplier = 1 + width % 2
        self.dw = _conv_bn(cin, cin * multiplier, 3, stride, groups=cin)
        self.pw = _conv_bn(cin * multiplier, width, 1)
        self.out_channels = width

    def forward(self, x):
        return F.relu(self.pw(F.relu(self.dw(x))))


class Grouped(nn.Module):
    def __init__(self, cin, width, stride, groups=2):
        super().__init__()
        mid = groups * max(1, width // groups)
        self.reduce, self.grouped = _conv_bn(cin, mid, 1), _conv_bn(mid, mid, 3, 1, groups)
        self.expand = _conv_bn(mid, cin, 1)
        self.out_channels = cin

    def forward(self, x):
        out = F.relu(self.grouped(F.relu(self.reduce(x))))
        return F.relu(self.expand(out) + x)


class SqueezeExcite(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.body = _conv_bn(cin, cin)
        self.fc1, self.fc2 = nn.Linear(cin, max(1, width // 2)), nn.Linear(max(1, width // 2), cin)
        self.out_channels = cin

    def forward(self, x):
        out = self.body(x)
        gate = out.mean((2, 3))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate)))).view(gate.size(0), -1, 1, 1)
        return F.relu(out * gate + x)


class Inverted(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        hidden = 2 * cin
        self.expand = nn.Sequential(*_conv_bn(cin, hidden, 1), nn.ReLU6())
        self.dw = nn.Sequential(*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6())
        self.project = _conv_bn(hidden, width, 1)
        self.residual = stride == 1 and cin == width
        self.out_channels = width

    def forward(self, x):
        out = self.project(self.dw(self.expand(x)))
        return x + out if self.residual else out


class Split(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.first, self.second = _conv_bn(cin - cin // 2, width), _conv_bn(cin // 2, width)
        self.sizes = [cin - cin // 2, cin // 2]
        self.out_channels = 2 * width

    def forward(self, x):
        a, b = torch.split(x, self.sizes, 1)
        return F.relu(torch.cat([self.first(a), self.second(b)], 1))


class Functional(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, cin, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(width) * 0.1)
        self.scale = nn.Parameter(1 + 0.1 * torch.randn(1, width, 1, 1))
        self.stride, self.out_channels = stride, width

    def forward(self, x):
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, 1) * self.scale)


_CLASSES = {"plain": Plain, "residual": Residual, "preact": PreActivation, "bottleneck": Bottleneck,
            "projection": Projection, "dense": Dense, "depthwise": Depthwise,
            "grouped": Grouped, "se": SqueezeExcite, "inverted": Inverted, "split": Split, "functional": Functional}
_STRIDED = {"plain", "bottleneck", "projection", "depthwise", "inverted", "functional"}


@dataclass(frozen=True)
class CNNSpec:
    """A net to build: its pieces as (kind, width, stride), the head, and the input it takes."""

    pieces: tuple[tuple[str, int, int], ...]
    head: str = "pool"             # "pool": global average pool; "flatten": flatten C x H x W into the Linear
    in_channels: int = 3
    input_size: int = 8
    num_classes: int = 3

    def build(self) -> "GrammarNet":
        return GrammarNet(self)

    def example_input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.in_channels, self.input_size, self.input_size, generator=generator)


class GrammarNet(nn.Module):
    """A stem conv, the spec's pieces in order, then the head."""

    def __init__(self, spec: CNNSpec):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(spec.in_channels, 4), nn.ReLU())
        channels, size, pieces = 4, spec.input_size, []
        for kind, width, stride in spec.pieces:
            stride = stride if kind in _STRIDED and size >= 2 * stride else 1
            piece = _CLASSES[kind](channels, width, stride)
            pieces.append(piece)
            channels, size = piece.out_channels, (size + stride - 1) // stride
        self.pieces = nn.Sequential(*pieces)
        self.head_kind = spec.head
        features = channels if spec.head == "pool" else channels * size * size
        self.classifier = nn.Linear(features, spec.num_classes)

    def forward(self, x):
        x = self.pieces(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1) if self.head_kind == "pool" else x
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- transformer blocks


@dataclass(frozen=True)
class TransformerSpec:
    """A token model to build: a 1x1 convolution embeds each pixel of a `grid` x `grid` image as a
    token (as ViT's patches), then `layers` pre-norm transformer layers of width `heads * head_dim`,
    attention with separate q, k, v and output projections and F.scaled_dot_product_attention
    (heads by view and transpose, as Hugging Face writes them), an MLP of `mlp` features (`gated`:
    SiLU(gate) * up, as LLaMA's), and the mean token into a Linear head."""

    layers: int = 1
    heads: int = 2
    head_dim: int = 2
    mlp: int = 8
    gated: bool = False
    grid: int = 2
    in_channels: int = 3
    num_classes: int = 3

    def build(self) -> "TransformerNet":
        return TransformerNet(self)

    def example_input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.in_channels, self.grid, self.grid, generator=generator)


class Attention(nn.Module):
    def __init__(self, spec: TransformerSpec):
        super().__init__()
        width = spec.heads * spec.head_dim
        self.heads, self.head_dim = spec.heads, spec.head_dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.o_proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, spec: TransformerSpec):
        super().__init__()
        width = spec.heads * spec.head_dim
        self.up_proj, self.down_proj = nn.Linear(width, spec.mlp), nn.Linear(spec.mlp, width)
        self.gate_proj = nn.Linear(width, spec.mlp) if spec.gated else None

    def forward(self, x):
        if self.gate_proj is None:
            return self.down_proj(F.gelu(self.up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerLayer(nn.Module):
    def __init__(self, spec: TransformerSpec):
        super().__init__()
        width = spec.heads * spec.head_dim
        self.input_layernorm, self.self_attn = nn.LayerNorm(width), Attention(spec)
        self.post_attention_layernorm, self.mlp = nn.LayerNorm(width), MLP(spec)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TransformerNet(nn.Module):
    """Pixels embedded as tokens, the spec's layers, a final norm, the mean token into the head."""

    def __init__(self, spec: TransformerSpec):
        super().__init__()
        width = spec.heads * spec.head_dim
        self.embed = nn.Conv2d(spec.in_channels, width, 1)
        self.layers = nn.Sequential(*(TransformerLayer(spec) for _ in range(spec.layers)))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, spec.num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.layers(tokens)).mean(1))
