"""Growth silences a residual branch wherever its last op is linear in a parameter and only
zero-preserving ops follow: sandwich norms scaling by (1 + weight), experts' fused weights under a
grouped matrix product, constant residual multipliers, parallel attention and MLP, shifted windows,
sublayers with dropout. Oracles: the eager transformers model (run in float64 with its casts
promoted), and the silencing values read back from the grown graph's parameters."""
import pytest
import torch

import graphmorph
import transforms
from graphmorph.testing import assert_preserves_function

T = pytest.importorskip("transformers")

_LM = dict(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=32)


def _tokens(batch=2, length=8, seed=0):
    return torch.randint(0, 48, (batch, length), generator=torch.Generator().manual_seed(seed))


def _pixels(batch=2, seed=0):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# name -> (model, input, the new block's parameters that must hold the silencing value, and that value)
MODELS = {
    "gemma2 (sandwich norms, 1 + weight)": (
        lambda: T.Gemma2ForCausalLM(T.Gemma2Config(head_dim=4, **_LM)), _tokens,
        ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight"), -1.0),
    "mixtral (experts' fused weights)": (
        lambda: T.MixtralForCausalLM(T.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **_LM)), _tokens,
        ("self_attn.o_proj.weight", "mlp.experts.down_proj"), 0.0),
    "granite (residual multiplier)": (
        lambda: T.GraniteForCausalLM(T.GraniteConfig(residual_multiplier=0.25, **_LM)), _tokens,
        ("self_attn.o_proj.weight", "mlp.down_proj.weight"), 0.0),
    "falcon (parallel attention and MLP)": (
        lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=48, hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=4, parallel_attn=True, multi_query=True)),
        _tokens, ("self_attention.dense.weight", "mlp.dense_4h_to_h.weight"), 0.0),
    "t5 encoder (sublayers, dropout)": (
        lambda: T.T5EncoderModel(T.T5Config(vocab_size=48, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                                            dropout_rate=0.3)), _tokens,
        ("layer.0.SelfAttention.o.weight", "layer.1.DenseReluDense.wo.weight"), 0.0),
    "swin (shifted windows)": (
        lambda: T.SwinModel(T.SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=[2], num_heads=[2],
                                         window_size=4)), _pixels,
        ("attention.o_proj.weight", "mlp.fc2.weight"), 0.0),
}


@pytest.mark.parametrize("name", MODELS)
def test_a_branch_end_is_silenced_and_the_grown_model_computes_what_the_eager_one_does(name):
    build, example, silenced, value = MODELS[name]
    torch.manual_seed(0)
    model = build()
    model.config.use_cache = False
    gm = graphmorph.capture(model, example())
    stage = graphmorph.find_stages(gm)[-1]
    grown = transforms.grow(gm, stage=stage.index, init="zero")
    new_block = graphmorph.history(grown)[-1]["new_block"]
    assert len(graphmorph.find_stages(grown)[-1].blocks) == len(stage.blocks) + 1
    for parameter in silenced:
        assert torch.all(grown.get_parameter(f"{new_block}.{parameter}") == value), parameter
    model.train(False)
    assert_preserves_function(model, grown, example(3, seed=1), modes=("eval",))
    # train mode: the graphs' own dropout masks, each node's seeded by its name
    assert_preserves_function(gm, grown, example(3, seed=1), modes=("train",))


def test_a_post_norm_layer_is_refused_for_its_structure_before_verification():
    model = T.DistilBertModel(T.DistilBertConfig(vocab_size=48, dim=16, hidden_dim=24, n_layers=2, n_heads=4,
                                                 max_position_embeddings=32))
    gm = graphmorph.capture(model, _tokens())
    assert graphmorph.find_stages(gm)[0].blocks == ("transformer.layer.0", "transformer.layer.1")
    with pytest.raises(graphmorph.RewriteError, match=r"applies .*output_layer_norm.* after its residual add"):
        transforms.grow(gm, stage=0, init="zero")


def test_a_branch_that_cannot_be_silenced_names_the_op_that_stops_it():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return x + torch.exp(self.fc(x))      # exp(0) == 1: no zeroed layer silences this branch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks, self.head = torch.nn.ModuleList([Block(), Block()]), torch.nn.Linear(8, 2)

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    gm = graphmorph.capture(Net(), torch.randn(2, 3, 8))
    with pytest.raises(graphmorph.RewriteError, match=r"exp_1 \(exp\) is neither linear in a parameter nor zero at zero"):
        transforms.grow(gm, stage=0, init="zero")


def test_blocks_of_different_classes_in_one_stage_stay_blocks():
    """A stage (a Sequential) mixing two block classes (EdgeNeXt's convolution and attention blocks)
    is a run of blocks; only a layer module with a forward of its own joins its sublayers."""
    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    class Mix(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return x + self.mix(torch.relu(x))

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Sequential(Conv(), Mix()),
                              torch.nn.MaxPool2d(2), torch.nn.Sequential(Conv(), Mix()))
    gm = graphmorph.capture(net, torch.randn(2, 3, 8, 8))
    assert [s.blocks for s in graphmorph.find_stages(gm)] == [("1.0", "1.1"), ("3.0", "3.1")]
