"""Mixture-of-experts layers (Mixtral's fused experts under a grouped matrix product): the experts'
intermediate channels prune and widen across gate, up and down weights of every expert, FLOPs
count the routed rows, and the graph exports to ONNX. Oracles: the eager transformers model with
the removed channels masked, a MAC count written from the config, and onnxruntime."""
import pytest
import torch

import graphmorph
import transforms
from graphmorph.testing import assert_preserves_function, assert_prune_equals_mask

T = pytest.importorskip("transformers")

HIDDEN, INTERMEDIATE, EXPERTS, TOP_K = 16, 24, 4, 2


def _mixtral():
    torch.manual_seed(0)
    config = T.MixtralConfig(vocab_size=48, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                             num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, use_cache=False)
    return T.MixtralForCausalLM(config).eval()


def _tokens(batch=2, length=8, seed=0):
    return torch.randint(0, 48, (batch, length), generator=torch.Generator().manual_seed(seed))


def _experts_producer(gm, layer: int) -> str:
    """The grouped product making layer `layer`'s experts' gate and up channels."""
    groups = [g for g in graphmorph.channel_groups(gm) if g.prunable and g.size == INTERMEDIATE]
    return groups[layer].producers[0]


@pytest.fixture(scope="module")
def captured():
    model = _mixtral()
    return model, graphmorph.capture(model, _tokens())


def test_experts_lose_the_same_intermediate_channels_and_equal_the_masked_eager_model(captured):
    model, gm = captured
    removed = [1, 5, 17]
    pruned = transforms.prune_channels(gm, _experts_producer(gm, 0), removed)
    experts = pruned.get_submodule("model.layers.0.mlp.experts")
    assert experts.gate_up_proj.shape == (EXPERTS, 2 * (INTERMEDIATE - 3), HIDDEN)
    assert experts.down_proj.shape == (EXPERTS, HIDDEN, INTERMEDIATE - 3)
    kept = [c for c in range(INTERMEDIATE) if c not in removed]
    original = gm.get_submodule("model.layers.0.mlp.experts")
    assert torch.equal(experts.down_proj, original.down_proj[:, :, kept])
    assert torch.equal(experts.gate_up_proj, original.gate_up_proj[:, kept + [INTERMEDIATE + c for c in kept]])
    assert pruned.get_submodule("model.layers.1.mlp.experts").down_proj.shape[2] == INTERMEDIATE

    def mask(copy):
        copy.model.layers[0].mlp.experts.down_proj[:, :, removed] = 0

    assert_prune_equals_mask(model, pruned, mask, _tokens(3, 6, seed=2))


def test_flops_count_the_rows_routed_to_the_top_k_experts(captured):
    _, gm = captured
    tokens = 2 * 8
    per_layer = tokens * TOP_K * (HIDDEN * 2 * INTERMEDIATE + INTERMEDIATE * HIDDEN)
    report = graphmorph.count_flops(gm)
    grouped = [n for n in report.by_node if "grouped_mm" in n.target]
    assert len(grouped) == 4 and sum(n.cost.macs for n in grouped) == 2 * per_layer
    assert "top-k" in report.table()
    pruned = transforms.prune_channels(gm, _experts_producer(gm, 1), list(range(6)))
    after = graphmorph.count_flops(pruned)
    assert report.macs - after.macs == per_layer * 6 // INTERMEDIATE


@pytest.mark.parametrize("init", ["zero", "split"])
def test_experts_widen_preserving_the_function(captured, init):
    model, gm = captured
    widened = transforms.widen(gm, _experts_producer(gm, 0), 2, init)
    assert widened.get_submodule("model.layers.0.mlp.experts").down_proj.shape[2] == INTERMEDIATE + 2
    assert_preserves_function(model, widened, _tokens(3, 6, seed=4), modes=("eval",))


def test_a_mixture_of_experts_exports_to_onnx(captured, tmp_path):
    _, gm = captured
    report = graphmorph.export_onnx(gm, tmp_path / "moe.onnx", _tokens())
    assert report.max_abs_diff <= report.tolerance
