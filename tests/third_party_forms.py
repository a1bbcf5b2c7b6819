"""Stand-ins for ops of packages the project does not depend on, under the qualified names those
packages give them, so the tests can check that graphmorph knows them by name: torchvision's
`stochastic_depth` (an fx-wrapped function) and timm's `DropPath` (a module)."""
from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth: zero whole rows (samples) with probability p in training."""
    if not training or p == 0.0:
        return input
    survival = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival)
    return input * noise.div_(survival)


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"
torch.fx.wrap("stochastic_depth")


class DropPath(nn.Module):
    """timm.layers.drop.DropPath (kept a leaf when captured, as timm's tracing does)."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, "row", self.training)


DropPath.__module__ = "timm.layers.drop"


class MBConv(nn.Module):
    """torchvision's EfficientNet block: expand, depthwise, project, stochastic depth, add."""

    def __init__(self, c: int, expand: int = 2, p: float = 0.2):
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(),
            nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(self.block(x), self.p, "row", self.training) + x


class TimmBlock(nn.Module):
    """A timm-style residual block whose branch ends in DropPath."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.drop_path = DropPath()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.bn(self.conv(torch.relu(x))))


class StochasticDepthNet(nn.Module):
    def __init__(self, c: int = 8, block=MBConv):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.SiLU())
        self.layer1 = nn.Sequential(block(c), block(c))
        self.head = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer1(self.stem(x)).mean((2, 3)))


# ---------------------------------------------------------------------------------------------- channels-last and tokens


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class TvConvNeXtBlock(nn.Module):
    """torchvision's CNBlock: depthwise conv, channels-last LayerNorm and MLP, a (C, 1, 1) layer
    scale, stochastic depth, add."""

    def __init__(self, c: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(c, c, 7, padding=3, groups=c), Permute([0, 2, 3, 1]), nn.LayerNorm(c, eps=1e-6),
            nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.full((c, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(self.layer_scale * self.block(x), 0.1, "row", self.training) + x


class TimmConvNeXtBlock(nn.Module):
    """timm's ConvNeXtBlock: x.permute, a functional layer norm, an MLP, gamma as a 1-D parameter
    multiplied in through `reshape(1, -1, 1, 1)` after permuting back, DropPath, add."""

    def __init__(self, c: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.normalized_shape = (c,)
        self.norm_weight, self.norm_bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.fc1, self.act, self.fc2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))
        self.drop_path = DropPath()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = torch.nn.functional.layer_norm(x, self.normalized_shape, self.norm_weight, self.norm_bias, 1e-6)
        x = self.fc2(self.act(self.fc1(x))).permute(0, 3, 1, 2)
        return self.drop_path(x.mul(self.gamma.reshape(1, -1, 1, 1))) + shortcut


class ConvNeXtish(nn.Module):
    """Two stages of ConvNeXt blocks, a channels-first LayerNorm before the downsampling (timm's
    LayerNorm2d form: permute, norm, permute back), the head's LayerNorm on pooled features."""

    def __init__(self, block=TvConvNeXtBlock, c: int = 8, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.stage0 = nn.Sequential(block(c), block(c))
        self.down_norm = nn.LayerNorm(c)
        self.down = nn.Conv2d(c, 2 * c, 2, stride=2)
        self.stage1 = nn.Sequential(block(2 * c), block(2 * c))
        self.head = nn.Sequential(nn.LayerNorm(2 * c), nn.Linear(2 * c, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(self.stem(x))
        x = self.down(self.down_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self.head(self.stage1(x).mean((2, 3)))


class EncoderLayer(nn.Module):
    """A pre-norm transformer layer: attention (torch's MultiheadAttention) and an MLP, each residual."""

    def __init__(self, d: int, heads: int = 2):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViTish(nn.Module):
    """torchvision's VisionTransformer in small: patches by a strided conv, tokens by reshape and
    permute, a class token expanded and joined, a position embedding added, the class token's
    features into the head."""

    def __init__(self, d: int = 8, layers: int = 2, patch: int = 4, image: int = 8, classes: int = 4):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, d, patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos_embedding = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, d) * 0.1)
        self.layers = nn.Sequential(*[EncoderLayer(d) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)
        n, d = x.shape[0], x.shape[1]
        x = x.reshape(n, d, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


class MetaFormerBlock(nn.Module):
    """timm's PoolFormer block: one-group GroupNorm, a pooling token mixer (`pool(x) - x`, no
    weights), an MLP of 1x1 convolutions, each branch ending in a `scale.view(C, 1, 1)` layer
    scale; `res_scale` an Identity on the shortcut."""

    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(1, c), nn.GroupNorm(1, c)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1))
        self.scale1, self.scale2 = nn.Parameter(torch.full((c,), 1e-5)), nn.Parameter(torch.full((c,), 1e-5))
        self.res_scale = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = self.res_scale(x) + (self.pool(y) - y) * self.scale1.view(-1, 1, 1)
        return self.res_scale(x) + self.mlp(self.norm2(x)) * self.scale2.view(-1, 1, 1)


class MixerBlock(nn.Module):
    """timm's MLP-Mixer block: token mixing by a Linear over the token axis (after a transpose),
    channel mixing by a Linear over the channels; ResMLP's affine (`addcmul`) instead of a norm."""

    def __init__(self, tokens: int, d: int):
        super().__init__()
        self.alpha, self.beta = nn.Parameter(torch.ones(1, 1, d)), nn.Parameter(torch.zeros(1, 1, d))
        self.tokens = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.norm = nn.LayerNorm(d)
        self.channels = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.addcmul(self.beta, self.alpha, x)
        x = x + self.tokens(y.transpose(1, 2)).transpose(1, 2)
        return x + self.channels(self.norm(x))


class TokenNet(nn.Module):
    """A patch stem (conv, then `flatten(2).transpose(1, 2)` as timm writes it), Mixer blocks, and
    a LeViT-style BatchNorm over tokens folded into the batch (`flatten(0, 1)`, `reshape_as`)."""

    def __init__(self, d: int = 8, tokens: int = 4, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, d, 4, stride=4)
        self.blocks = nn.Sequential(MixerBlock(tokens, d), MixerBlock(tokens, d))
        self.proj, self.bn = nn.Linear(d, d), nn.BatchNorm1d(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x).flatten(2).transpose(1, 2))
        y = self.proj(x)
        x = x + self.bn(y.flatten(0, 1)).reshape_as(y)
        return self.head(x.mean(1))


def shifted_window_attention(input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                             relative_position_bias: torch.Tensor, window_size: list[int], num_heads: int,
                             shift_size: list[int], attention_dropout: float = 0.0, dropout: float = 0.0,
                             qkv_bias: torch.Tensor | None = None, proj_bias: torch.Tensor | None = None,
                             logit_scale: torch.Tensor | None = None, training: bool = True) -> torch.Tensor:
    """torchvision's Swin attention as fx sees it: one wrapped call that takes the projections'
    weights as arguments (here over all positions, one window, no shift)."""
    b, h, w, c = input.shape
    tokens = input.reshape(b, h * w, c)
    q, k, v = torch.nn.functional.linear(tokens, qkv_weight, qkv_bias).chunk(3, dim=-1)
    attention = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5 + relative_position_bias, dim=-1)
    return torch.nn.functional.linear(attention @ v, proj_weight, proj_bias).reshape(b, h, w, c)


shifted_window_attention.__module__ = "torchvision.models.swin_transformer"
torch.fx.wrap("shifted_window_attention")


class SwinAttention(nn.Module):
    def __init__(self, c: int, positions: int):
        super().__init__()
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.bias = nn.Parameter(torch.zeros(positions, positions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_window_attention(x, self.qkv.weight, self.proj.weight, self.bias, [2, 2], 1, [0, 0],
                                        qkv_bias=self.qkv.bias, proj_bias=self.proj.bias, training=self.training)


class SwinBlock(nn.Module):
    """torchvision's SwinTransformerBlock on a channels-last map: attention, then an MLP."""

    def __init__(self, c: int, positions: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(c), SwinAttention(c, positions)
        self.norm2, self.mlp = nn.LayerNorm(c), nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + stochastic_depth(self.attn(self.norm1(x)), 0.1, "row", self.training)
        return x + stochastic_depth(self.mlp(self.norm2(x)), 0.1, "row", self.training)


class Swinish(nn.Module):
    def __init__(self, c: int = 8, classes: int = 4):
        super().__init__()
        self.patches = nn.Sequential(nn.Conv2d(3, c, 4, stride=4), Permute([0, 2, 3, 1]), nn.LayerNorm(c))
        self.stage = nn.Sequential(SwinBlock(c, 4), SwinBlock(c, 4))
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.patches(x)).mean((1, 2)))


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer: it joins the features so far itself, then BN-ReLU-conv1x1-BN-ReLU-conv3x3."""

    def __init__(self, c_in: int, growth: int, width: int = 2, norm: type[nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.norm1, self.relu1 = norm(c_in), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, width * growth, 1, bias=False)
        self.norm2, self.relu2 = norm(width * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        joined = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(joined))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, c_in: int, growth: int, norm: type[nn.Module] = nn.BatchNorm2d):
        super().__init__({f"denselayer{k + 1}": DenseLayer(c_in + k * growth, growth, norm=norm) for k in range(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNetish(nn.Module):
    """torchvision's DenseNet in small: dense blocks, a transition (BN-ReLU-conv1x1-avgpool),
    BN-ReLU-pool-linear; with `norm=BatchNormAct2d`, timm's, whose norms fx traces into."""

    def __init__(self, c: int = 4, growth: int = 2, classes: int = 4, norm: type[nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.block1 = DenseBlock(2, c, growth, norm)
        wide = c + 2 * growth
        self.transition = nn.Sequential(norm(wide), nn.ReLU(inplace=True), nn.Conv2d(wide, c, 1, bias=False),
                                        nn.AvgPool2d(2))
        self.block2 = DenseBlock(2, c, growth, norm)
        self.norm = norm(wide)
        self.classifier = nn.Linear(wide, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.transition(self.block1(self.stem(x))))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.norm(x)), 1), 1))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: fx traces into it, so its BatchNorm is F.batch_norm on its parameters."""

    def __init__(self, c: int, act: type[nn.Module] = nn.Identity):
        super().__init__(c)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, "expected a 4-d input")      # as timm checks: a read of the input's shape
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                     self.training, self.momentum, self.eps)
        return self.act(x)


class TimmBottleneck(nn.Module):
    """timm's ByobNet bottleneck: convs with BatchNormAct2d, an activation after the residual add."""

    def __init__(self, c: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 1, bias=False), BatchNormAct2d(c, nn.ReLU)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), BatchNormAct2d(c)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.bn1(self.conv1(x)))))


class XceptionModule(nn.Module):
    """timm's Xception block: a pre-activated stack of convolutions and, where the block changes
    the channels or the size, a projection shortcut whose BatchNormAct2d reads its input's shape."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.stack = nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                   BatchNormAct2d(c_out, nn.ReLU),
                                   nn.Conv2d(c_out, c_out, 3, stride=stride, padding=1, bias=False),
                                   BatchNormAct2d(c_out))
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), BatchNormAct2d(c_out)) \
            if c_in != c_out or stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(x) + (self.shortcut(x) if self.shortcut is not None else x)


class QKVAttention(nn.Module):
    """timm's Attention: one qkv Linear, split into heads by reshape and permute, q, k, v by unbind,
    an optional LayerNorm over each head's features, then F.scaled_dot_product_attention (`fused`)
    or the product, softmax and product written out; heads merged by transpose and reshape to the
    input's width, read from its shape."""

    def __init__(self, d: int, heads: int = 2, fused: bool = True, qk_norm: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.fused = heads, d // heads, fused
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            x = scores.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TimmViTBlock(nn.Module):
    """timm's ViT block: pre-norm attention and MLP branches, each through a DropPath."""

    def __init__(self, d: int, **attention):
        super().__init__()
        self.norm1, self.attn, self.drop_path1 = nn.LayerNorm(d), QKVAttention(d, **attention), DropPath()
        self.norm2, self.drop_path2 = nn.LayerNorm(d), DropPath()
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class TimmViTish(nn.Module):
    """timm's VisionTransformer in small: patches flattened and transposed into tokens, a class
    token and position embedding, blocks, a final norm, the class token into the head."""

    def __init__(self, d: int = 8, depth: int = 2, image: int = 8, patch: int = 4, classes: int = 4, **attention):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, d) * 0.1)
        self.blocks = nn.Sequential(*[TimmViTBlock(d, **attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class ConvAttention(nn.Module):
    """timm's Attention2d (CoAtNet, MaxViT) on a channels-first map: a 1x1 convolution makes q, k
    and v, a view splits them into heads (`(B, 3C, H, W) -> (B, heads, 3D, HW)`), chunk takes the
    pieces, attention runs over the transposed pieces and a reshape merges the heads into channels."""

    def __init__(self, d: int, heads: int = 2):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.qkv = nn.Conv2d(d, 3 * d, 1)
        self.proj = nn.Conv2d(d, d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.heads, 3 * self.head_dim, -1).chunk(3, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return self.proj(out.transpose(-1, -2).reshape(b, -1, h, w))


class ConvAttentionNet(nn.Module):
    """A stem, one residual ConvAttention block, pooled into a classifier."""

    def __init__(self, d: int = 8, classes: int = 4):
        super().__init__()
        self.stem, self.norm, self.attn = nn.Conv2d(3, d, 2, stride=2), nn.BatchNorm2d(d), ConvAttention(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.attn(self.norm(x))
        return self.head(x.mean((2, 3)))


class PaddedWindows(nn.Module):
    """timm's Swin padding: a channels-last map padded on the right and bottom to whole windows
    (`F.pad(x, (0, 0, 0, pad_w, 0, pad_h))`), a per-token Linear, the padding cropped off."""

    def __init__(self, d: int = 8, classes: int = 4, pad_channels: bool = False):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, d, 3, padding=1), nn.Linear(d, classes)
        self.mix = nn.Linear(d + pad_channels, d)
        self.pad = (0, 1, 0, 1, 0, 1) if pad_channels else (0, 0, 0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)
        h, w = x.shape[1], x.shape[2]
        x = self.mix(F.pad(x, self.pad))[:, :h, :w, :]
        return self.head(x.mean((1, 2)))


class SqueezeExcitation(nn.Module):
    """torchvision's SqueezeExcitation: pooled, reduced, expanded, a sigmoid gate multiplied on."""

    def __init__(self, c: int, squeezed: int = 2):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeezed, 1), nn.Conv2d(squeezed, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True))))) * x


class DepthwiseSeparable(nn.Module):
    """EfficientNet's first blocks: a depthwise convolution, its norm (torchvision's BatchNorm2d and
    SiLU, or timm's BatchNormAct2d traced into F.batch_norm), a squeeze-excitation gate, the
    projection and its norm; a shortcut where c_in == c_out."""

    def __init__(self, c_in: int, c_out: int, timm_norm: bool = False):
        super().__init__()
        norm = [BatchNormAct2d(c_in, nn.SiLU)] if timm_norm else [nn.BatchNorm2d(c_in), nn.SiLU()]
        self.block = nn.Sequential(nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False), *norm),
                                   SqueezeExcitation(c_in),
                                   nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)))
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x if self.residual else self.block(x)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN on a channels-last map: each channel's L2 norm over space, divided by
    that norm's mean over the channels, gates the input, with a per-channel affine."""

    def __init__(self, c: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.zeros(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spread = x.norm(p=2, dim=(1, 2), keepdim=True)
        response = spread / (spread.mean(dim=-1, keepdim=True) + 1e-6)
        return x + torch.addcmul(self.bias.view(1, 1, 1, -1), self.weight.view(1, 1, 1, -1), x * response)


class ConvNeXtV2Block(nn.Module):
    """timm's ConvNeXt-V2 block: depthwise conv, channels-last LayerNorm, MLP with GRN, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.conv_dw, self.norm = nn.Conv2d(c, c, 7, padding=3, groups=c), nn.LayerNorm(c)
        self.fc1, self.grn, self.fc2 = nn.Linear(c, 4 * c), GlobalResponseNorm(4 * c), nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        return x + self.fc2(self.grn(F.gelu(self.fc1(y)))).permute(0, 3, 1, 2)


class GhostModule(nn.Module):
    """timm's GhostNet module: a primary convolution makes ceil(out / 2) channels, a depthwise
    "cheap" convolution makes as many more from them, and the concatenation is cut to `out`
    channels with a slice (`out[:, :out_chs]`), which drops the last cheap channel where out is odd."""

    def __init__(self, c_in: int, out: int, act: bool = True):
        super().__init__()
        primary = math.ceil(out / 2)
        self.out_chs = out
        self.primary_conv = nn.Sequential(nn.Conv2d(c_in, primary, 1, bias=False), nn.BatchNorm2d(primary),
                                          nn.ReLU() if act else nn.Identity())
        self.cheap_operation = nn.Sequential(nn.Conv2d(primary, primary, 3, padding=1, groups=primary, bias=False),
                                             nn.BatchNorm2d(primary), nn.ReLU() if act else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        out = torch.cat([x1, self.cheap_operation(x1)], dim=1)
        return out[:, :self.out_chs, :, :]


class GhostBottleneck(nn.Module):
    """GhostNet's residual block at stride 1: a ghost module expands, a second one (no activation)
    projects back, and the block's input is added."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.ghost1, self.ghost2 = GhostModule(c, hidden), GhostModule(hidden, c, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.ghost1(x)) + x
