"""FLOP counting: equal to torch's FlopCounterMode for conv/linear/matmul, documented elementwise rules."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import graphmorph
from graphmorph.graph.flops import Cost
from graphmorph.models import build
from zoo import ZOO


def torch_flops(model, x) -> int:
    """FlopCounterMode, with torch's own attention formula (`sdpa_flop_count`, what it counts for the
    CUDA kernels) for the CPU attention kernel it has none for."""
    def attention(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    cpu = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention}
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=cpu) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_flops_equal_flop_counter_mode(name):  # grouped, depthwise and functional convs included
    factory, size, _ = ZOO[name]
    x = torch.randn(2, 3, size, size)
    gm = graphmorph.capture(factory(), x)
    report = graphmorph.count_flops(gm)
    assert report.flops == torch_flops(gm, x) > 0
    assert report.params == sum(p.numel() for p in gm.parameters())


class TransposedAndMatmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.proj = nn.Parameter(torch.randn(6, 5))

    def forward(self, x):
        y = self.up(x)                               # (N, 6, 7, 7)
        return torch.matmul(y.permute(0, 2, 3, 1), self.proj)


def test_transposed_convolution_and_matmul_equal_flop_counter_mode():
    x = torch.randn(3, 4, 4, 4)
    report = graphmorph.count_flops(TransposedAndMatmul(), x)
    assert report.flops == torch_flops(TransposedAndMatmul(), x)
    assert report.macs == 3 * 4 * 16 * (3 * 3 * 3) + 3 * 7 * 7 * 5 * 6


def test_elementwise_rules_on_a_hand_counted_net():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(12, 4))
    report = graphmorph.count_flops(net, torch.zeros(1, 2, 4, 4))
    # conv: 48 outputs x 18 MACs + 48 bias adds; BN 2 x 48; ReLU 48; max-pool 12 outputs x 4; fc 4 x 12 + 4
    assert report.macs == 48 * 18 + 4 * 12
    assert report.elementwise == 48 + 96 + 48 + 48 + 4
    assert report.params == (2 * 3 * 9 + 3) + 6 + (12 * 4 + 4)
    assert report.by_stage["stage0"] == Cost(macs=864, elementwise=192, params=63)
    assert report.by_stage["head"] == Cost(macs=48, elementwise=52, params=52)


def test_counts_scale_with_batch_and_input_size_without_touching_stored_shapes():
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", widths=(4, 8, 16)), torch.zeros(1, 3, 16, 16))
    one = graphmorph.count_flops(gm)
    three = graphmorph.count_flops(gm, torch.zeros(3, 3, 16, 16))
    assert three.macs == 3 * one.macs and three.params == one.params
    bigger = graphmorph.count_flops(gm, torch.zeros(1, 3, 32, 32))
    assert bigger.by_stage["stage0"].macs == 4 * one.by_stage["stage0"].macs
    assert next(iter(gm.graph.nodes)).meta["tensor_meta"].shape == (1, 3, 16, 16)


def test_per_node_breakdown_adds_up_and_names_parts():
    report = graphmorph.count_flops(build("Basic4ResNet-1-1-1-1", widths=(4, 8, 16, 32)), torch.zeros(1, 3, 32, 32))
    assert set(report.by_stage) == {"stem", "stage0", "stage1", "stage2", "stage3", "head"}
    assert sum(n.cost.macs for n in report.by_node) == report.macs
    by_name = {n.node: n for n in report.by_node}
    assert by_name["conv1"].part == "stem" and by_name["fc"].part == "head"
    assert by_name["layer3_0_downsample_0"].part == "stage2"
    assert by_name["layer1_0_conv1"].cost.macs == 32 * 32 * 4 * 4 * 9


# --------------------------------------------------------------------------- attention nets: nothing hidden


def shifted_window_attention(x, qkv_weight, proj_weight, heads: int, window: int):
    """Swin-style windowed attention in one function that fx keeps as a single call (wrapped below)."""
    n, h, w, c = x.shape
    x = torch.roll(x, shifts=(-(window // 2), -(window // 2)), dims=(1, 2))
    x = x.view(n, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)
    q, k, v = torch.nn.functional.linear(x, qkv_weight).reshape(x.shape[0], -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attention = (q @ k.transpose(-2, -1)).softmax(-1)
    x = (attention @ v).transpose(1, 2).reshape(x.shape[0], -1, c)
    x = torch.nn.functional.linear(x, proj_weight)
    return x.view(n, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


torch.fx.wrap("shifted_window_attention")


class TinySwin(nn.Module):
    def __init__(self, c=8, heads=2, window=2):
        super().__init__()
        self.embed = nn.Conv2d(3, c, 2, stride=2)
        self.norm = nn.LayerNorm(c)
        self.qkv = nn.Parameter(torch.randn(3 * c, c) / c)
        self.proj = nn.Parameter(torch.randn(c, c) / c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.head = nn.Linear(c, 5)
        self.heads, self.window = heads, window

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        x = x + shifted_window_attention(self.norm(x), self.qkv, self.proj, self.heads, self.window)
        x = x + self.mlp(self.norm(x))
        return self.head(x.mean((1, 2)))


class EinsumAttention(nn.Module):
    """A MaxViT/ViT-style block whose products are einsums, baddbmm and SDPA, and a leaf module
    (MultiheadAttention) fx does not trace into; `attn_mask` is an optional input left unused."""

    def __init__(self, c=8, heads=2):
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)
        self.mha = nn.MultiheadAttention(c, heads, batch_first=True)
        self.bias = nn.Parameter(torch.randn(1, 1, 1))
        self.head = nn.Linear(c, 4)
        self.heads = heads

    def forward(self, x, attn_mask=None):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).unbind(2)
        scores = torch.einsum("nthd,nshd->nhts", q, k).softmax(-1)
        x = x + torch.einsum("nhts,nshd->nthd", scores, v).reshape(n, t, c)
        flat = x.reshape(1, n * t, c)
        x = x + torch.baddbmm(self.bias, flat, flat.transpose(1, 2)).softmax(-1).bmm(flat).reshape(n, t, c)
        heads = x.reshape(n, t, self.heads, -1).transpose(1, 2)
        x = x + torch.nn.functional.scaled_dot_product_attention(heads, heads, heads).transpose(1, 2).reshape(n, t, c)
        x = x + self.mha(x, x, x, need_weights=False)[0]
        return self.head(x.mean(1))


@pytest.mark.parametrize("factory, shape", [(TinySwin, (2, 3, 8, 8)), (EinsumAttention, (2, 6, 8))])
def test_attention_nets_count_what_flop_counter_mode_counts(factory, shape):
    torch.manual_seed(0)
    model, x = factory(), torch.randn(shape)
    gm = graphmorph.capture(model, x, leaf_modules=[nn.MultiheadAttention])
    report = graphmorph.count_flops(gm)
    assert report.flops == torch_flops(model, x)          # was 0.6x (Swin) and 0.97x (einsum) before
    other = torch.randn(3, *shape[1:])
    assert graphmorph.count_flops(gm, other).flops == torch_flops(model, other) > report.flops
    assert report.input_shapes == (shape,)                 # the unused optional input is not listed
