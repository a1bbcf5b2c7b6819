"""Models that fix their precision inside the graph (a norm computed in float32, a created float32
tensor, a bfloat16 model's upcasts) are verified: the float64 twin promotes the graph's dtype
literals, the returned graph keeps them. Oracles: the same model written in float64 by hand, and
masked copies of the eager model."""
import pytest
import torch
from torch import nn

import graphmorph
import transforms
from graphmorph.graph.float64 import float64_output
from graphmorph.testing import assert_preserves_function, assert_prune_equals_mask


class _FixedNorm(nn.Module):
    """An RMSNorm as Hugging Face writes it: computed in `compute`, cast back to the input's dtype."""

    def __init__(self, width: int, compute: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.compute = compute

    def forward(self, x):
        h = x.to(self.compute)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * h.to(x.dtype)


class _Layer(nn.Module):
    def __init__(self, width: int, compute: torch.dtype):
        super().__init__()
        self.norm = _FixedNorm(width, compute)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


class _Net(nn.Module):
    """Token embeddings, then pre-norm residual layers with float32 fixed by casts and by a created tensor (a bias of ones)."""

    def __init__(self, width: int = 8, depth: int = 2, compute: torch.dtype = torch.float32):
        super().__init__()
        self.embed = nn.Embedding(16, width)
        self.layers = nn.ModuleList(_Layer(width, compute) for _ in range(depth))
        self.head = nn.Linear(width, 3)
        self.compute = compute

    def forward(self, tokens):
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        offset = torch.ones(x.shape[-1], dtype=self.compute, device=x.device)
        return self.head((x.to(self.compute) + offset).to(x.dtype))


def _input():
    return torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))


def _casts(gm, dtype):
    return [n for n in gm.graph.nodes if dtype in torch.utils._pytree.tree_leaves((n.args, n.kwargs))]


def test_the_float64_twin_computes_what_the_model_written_in_float64_computes():
    model = _Net().eval()
    gm = graphmorph.capture(model, _input(), method="export")
    assert _casts(gm, torch.float32), "the captured graph should keep the model's float32 casts"
    oracle = _Net(compute=torch.float64).double().eval()
    oracle.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x = _input()
    got = float64_output(gm, (x,), train=False)
    assert got.dtype == torch.float64
    assert torch.allclose(got, oracle(x), rtol=0, atol=1e-12)
    assert not torch.allclose(got, model(x).double(), rtol=0, atol=1e-12), \
        "a float32 run should differ from the float64 one: the twin must not compute in float32"


def test_the_twin_leaves_the_graph_its_dtypes_and_its_state():
    gm = graphmorph.capture(_Net().eval(), _input(), method="export")
    code, state = gm.code, {k: v.clone() for k, v in gm.state_dict().items()}
    float64_output(gm, (_input(),), train=True)
    assert gm.code == code and not gm.training
    assert all(torch.equal(v, gm.state_dict()[k]) and v.dtype == gm.state_dict()[k].dtype for k, v in state.items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_model_fixing_its_dtypes_prunes_equal_to_masking(dtype):
    model = _Net().to(dtype).eval()
    gm = graphmorph.capture(model, _input(), method="export")
    pruned = transforms.prune_channels(gm, "layers.0.up", [1, 4, 6])
    assert len(_casts(pruned, dtype)) == len(_casts(gm, dtype)) > 0, f"the pruned graph should still cast to {dtype}"
    assert next(pruned.parameters()).dtype == dtype

    def mask(m):
        for name in ("weight", "bias"):
            getattr(m.layers[0].up, name)[[1, 4, 6]] = 0

    assert_prune_equals_mask(model, pruned, mask, _input(), modes=("eval",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_model_fixing_its_dtypes_grows_preserving_the_function(dtype):
    model = _Net().to(dtype).eval()
    gm = graphmorph.capture(model, _input(), method="export")
    grown = transforms.grow(gm, stage=0, init="zero")
    assert len(graphmorph.find_stages(grown)[0].blocks) == 3
    assert all(p.dtype == dtype for p in grown.parameters())
    assert_preserves_function(model, grown, _input())


def test_the_eager_model_is_run_in_float64_too():
    model = _Net().eval()
    oracle = _Net(compute=torch.float64).double().eval()
    oracle.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x = _input()
    assert torch.allclose(float64_output(model, (x,), train=False), oracle(x), rtol=0, atol=1e-12)


def test_an_op_that_refuses_float64_is_named_with_what_the_user_can_do():
    class Float32Only(nn.Module):     # a kernel with no float64 implementation
        def forward(self, x):
            if x.dtype != torch.float32:
                raise RuntimeError(f"expected float32, got {x.dtype}")
            return x * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.kernel = nn.Linear(4, 4), nn.Linear(4, 4), Float32Only()

        def forward(self, x):
            return self.kernel(self.b(self.a(x)))

    gm = graphmorph.capture(Net(), torch.randn(2, 4), leaf_modules=[Float32Only])
    with pytest.raises(graphmorph.RewriteError) as err:
        transforms.prune_channels(gm, "a", [0])
    message = str(err.value)
    assert "at node kernel (Float32Only kernel): expected float32, got torch.float64" in message
    assert "verify=False" in message and "method=" not in message
    assert transforms.prune_channels(gm, "a", [0], verify=False).get_submodule("a").out_features == 3


def test_bloom_fixing_float32_around_alibi_scores_prunes_its_fused_qkv_equal_to_masking():
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = T.BloomForCausalLM(T.BloomConfig(vocab_size=48, hidden_size=16, n_layer=2, n_head=4)).eval()
    model.config.use_cache = False
    tokens = torch.randint(0, 48, (2, 8), generator=torch.Generator().manual_seed(0))
    gm = graphmorph.capture(model, tokens)
    qkv = "transformer.h.0.self_attention.query_key_value"
    group = graphmorph.graph.channels.channel_dependencies(gm).group_of(qkv)
    assert group.prunable, group.refused
    pruned = transforms.prune_channels(gm, qkv, [0])     # feature 0 of q, k and v in every head (ALiBi's baddbmm)
    assert pruned.get_submodule(qkv).out_features == 48 - 12
    rows = [head * 12 + offset for head in range(4) for offset in (0, 4, 8)]   # per head: q, k, v x 4 features

    def mask(copy):
        copy.get_submodule(qkv).weight[rows] = 0
        copy.get_submodule(qkv).bias[rows] = 0

    assert_prune_equals_mask(model, pruned, mask, torch.randint(0, 48, (3, 6)))
