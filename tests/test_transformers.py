"""Hugging Face transformers 5.x models, built from small configs (random weights, nothing
downloaded), through capture (torch.export), FLOP counting, pruning inside layers, growth of
pre-norm layers and deployment. Oracles are the eager models themselves, FlopCounterMode, and
masked copies of the eager models."""
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import graphmorph
import transforms
from graphmorph.testing import assert_preserves_function, assert_prune_equals_mask

T = pytest.importorskip("transformers")

_SIZES = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=32)


def _llama():
    return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=48, num_key_value_heads=2, **_SIZES))


def _qwen2():
    return T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=48, num_key_value_heads=2, **_SIZES))


def _gpt2():
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=48, n_embd=16, n_layer=2, n_head=4, n_positions=32,
                                          bos_token_id=0, eos_token_id=0))


def _bert():
    return T.BertModel(T.BertConfig(vocab_size=48, **_SIZES))


def _vit():
    return T.ViTForImageClassification(T.ViTConfig(image_size=16, patch_size=4, num_labels=3, **_SIZES))


def _tokens(batch=2, length=8, seed=0):
    return torch.randint(0, 48, (batch, length), generator=torch.Generator().manual_seed(seed))


def _pixels(batch=2, seed=0):
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _eager(model):
    """The eager model as the oracle: eval mode, no cache in its output."""
    model.eval()
    if getattr(model.config, "use_cache", False):
        model.config.use_cache = False
    return model


def _tensors(output):
    return [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("build", [_llama, _qwen2, _gpt2])
def test_causal_lms_capture_exactly_with_their_default_config(build):
    torch.manual_seed(0)
    model = build().eval()
    assert model.config.use_cache   # the default, whose cache torch.export cannot return
    gm = graphmorph.capture(model, _tokens())
    other = _tokens(batch=3, length=5, seed=1)   # batch and sequence length are free
    out = gm(other)
    assert type(out) is type(_eager(model)(other))   # the ModelOutput, as the model returns it
    assert torch.equal(out.logits, _eager(model)(other).logits)
    modules = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    assert {"lm_head"} <= modules and any(m.endswith("1.mlp.down_proj") or m.endswith("1.mlp.c_proj") for m in modules)


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """q k^T and (scores) v, counted by hand: FlopCounterMode does not count the CPU kernel."""
    *batch, queries, width = query
    return 2 * math.prod(batch) * queries * key[-2] * (width + value[-1])


@pytest.mark.parametrize("build, example", [(_llama, _tokens), (_gpt2, _tokens), (_bert, _tokens), (_vit, _pixels)])
def test_flops_equal_what_flop_counter_mode_counts_on_the_eager_model(build, example):
    torch.manual_seed(0)
    model, x = _eager(build()), example()
    gm = graphmorph.capture(model, x)
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        model(x)
    assert 2 * graphmorph.count_flops(gm).total.macs == counter.get_total_flops()


def test_a_keyword_attention_mask_stays_an_input():
    torch.manual_seed(0)
    model = _eager(_bert())
    ids, mask = _tokens(), torch.ones(2, 8, dtype=torch.long)
    gm = graphmorph.capture(model, ids, example_kwargs={"attention_mask": mask})
    other_ids, other_mask = _tokens(3, 6, seed=2), torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    expected = model(other_ids, attention_mask=other_mask)
    for found in (gm(other_ids, other_mask), gm(other_ids, attention_mask=other_mask)):
        assert all(torch.equal(a, b) for a, b in zip(_tensors(found), _tensors(expected)))


def test_gated_mlp_channels_prune_gate_and_up_together_and_equal_masking():
    torch.manual_seed(0)
    model = _eager(_llama())
    x = _tokens()
    gm = graphmorph.capture(model, x)
    removed = [1, 4, 7, 20]
    pruned = transforms.prune_channels(gm, "model.layers.0.mlp.gate_proj", removed)
    for name in ("gate_proj", "up_proj"):
        assert pruned.get_submodule(f"model.layers.0.mlp.{name}").out_features == 24 - len(removed)
    assert pruned.get_submodule("model.layers.0.mlp.down_proj").in_features == 24 - len(removed)
    assert pruned.get_submodule("model.layers.1.mlp.gate_proj").out_features == 24

    def mask(copy):   # the captured model with the removed intermediate channels read as zero
        copy.get_submodule("model.layers.0.mlp.down_proj").weight[:, removed] = 0

    # against the captured graph, not the eager model: the graph keeps the float32 casts the model
    # made at capture (LlamaRMSNorm's), where the eager model casts back to float64 in a float64 run
    assert_prune_equals_mask(gm, pruned, mask, _tokens(3, 6, seed=3))


@pytest.mark.parametrize("build, example", [(_llama, _tokens), (_gpt2, _tokens), (_bert, _tokens), (_vit, _pixels)])
def test_prune_filters_on_transformers_is_verified_and_removes_macs(build, example):
    torch.manual_seed(0)
    model, x = _eager(build()), example()
    gm = graphmorph.capture(model, x)
    pruned = transforms.prune_filters(gm, 0.3)
    before, after = graphmorph.count_flops(gm).total.macs, graphmorph.count_flops(pruned).total.macs
    assert after < before
    assert graphmorph.count_flops(pruned).total.params < graphmorph.count_flops(gm).total.params


@pytest.mark.parametrize("build, example", [(_llama, _tokens), (_gpt2, _tokens), (_vit, _pixels)])
def test_pre_norm_transformer_blocks_grow_preserving_the_function(build, example):
    torch.manual_seed(0)
    model, x = _eager(build()), example()
    gm = graphmorph.capture(model, x)
    grown = transforms.grow(gm, 0, init="zero")
    blocks = [len(s.blocks) for s in graphmorph.find_stages(gm)]
    assert [len(s.blocks) for s in graphmorph.find_stages(grown)] == [blocks[0] + 1, *blocks[1:]]
    assert_preserves_function(gm, grown, example(3, seed=4))


def test_the_hidden_width_is_refused_with_the_reason():
    torch.manual_seed(0)
    gm = graphmorph.capture(_eager(_llama()), _tokens())
    hidden = next(g for g in graphmorph.channel_groups(gm) if "model.embed_tokens" in g.producers)
    assert not hidden.prunable and "hidden width" in hidden.refused
    with pytest.raises(graphmorph.RewriteError, match="hidden width"):
        transforms.prune_channels(gm, "model.embed_tokens", [0])


def test_a_pruned_lm_saves_as_a_program_that_runs_with_torch_alone(tmp_path):
    torch.manual_seed(0)
    gm = graphmorph.capture(_eager(_llama()), _tokens())
    pruned = transforms.prune_filters(gm, 0.3)
    report = graphmorph.save_program(pruned, tmp_path / "lm.pt2")
    assert report.max_abs_diff <= 1e-5
    script = (
        "import sys, torch\n"
        "sys.modules['transformers'] = sys.modules['graphmorph'] = None\n"   # neither may be imported
        f"program = torch.export.load({str(tmp_path / 'lm.pt2')!r}).module()\n"
        f"torch.save(program(torch.load({str(tmp_path / 'x.pt')!r}))['logits'], {str(tmp_path / 'y.pt')!r})\n"
    )
    x = _tokens(3, 5, seed=5)
    torch.save(x, tmp_path / "x.pt")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), pruned.eval()(x).logits)


@pytest.mark.parametrize("build, example", [(_llama, _tokens), (_qwen2, _tokens), (_gpt2, _tokens), (_bert, _tokens),
                                            (_vit, _pixels)])
def test_the_blocks_found_are_the_configs_layers(build, example):
    torch.manual_seed(0)
    model = _eager(build())
    gm = graphmorph.capture(model, example())
    blocks = [name for stage in graphmorph.find_stages(gm) for name in stage.blocks]
    layers = [name for name, module in model.named_modules()
              if isinstance(module, torch.nn.ModuleList) and len(module) == model.config.num_hidden_layers]
    assert len(layers) == 1
    assert blocks == [f"{layers[0]}.{k}" for k in range(model.config.num_hidden_layers)]


def test_a_post_norm_layer_is_refused_with_the_reason():
    torch.manual_seed(0)
    gm = graphmorph.capture(_eager(_bert()), _tokens())
    with pytest.raises(graphmorph.RewriteError, match="after its residual add, so a silenced copy would apply it twice"):
        transforms.grow(gm, 0, init="zero")


@pytest.mark.parametrize("build, example, query, output", [
    (_bert, _tokens, "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.output.dense"),
    (_vit, _pixels, "vit.layers.0.attention.q_proj", "vit.layers.0.attention.o_proj"),
])
def test_whole_heads_prune_q_k_v_and_o_together_and_equal_masking(build, example, query, output):
    torch.manual_seed(0)
    model = _eager(build())
    gm = graphmorph.capture(model, example())
    units = transforms.head_units(gm, query)
    assert [len(u) for u in units] == [4] * 4          # 4 heads of 4 features (hidden 16)
    pruned = transforms.prune_heads(gm, query, [1, 3])
    attention = query.rsplit(".", 1)[0]
    for name, module in pruned.named_modules():
        if name.startswith(attention) and isinstance(module, torch.nn.Linear) and name != output:
            assert module.out_features == 8, name      # q, k and v keep heads 0 and 2, each of 4 features
    assert pruned.get_submodule(output).in_features == 8

    def mask(copy):   # without heads 1 and 3: their outputs never reach the output layer
        copy.get_submodule(output).weight[:, [*units[1], *units[3]]] = 0

    assert_prune_equals_mask(model, pruned, mask, example(3, seed=6), modes=("eval",))
    # in train mode against the captured graph: the eager model's attention dropout is chosen by
    # `self.training` inside its forward, which capture records as in eval mode
    assert_prune_equals_mask(gm, pruned, mask, example(3, seed=6))


def test_grouped_query_attention_loses_a_key_value_head_with_its_query_heads():
    torch.manual_seed(0)
    model = _eager(_llama())            # 4 query heads, 2 key/value heads of 4 features
    gm = graphmorph.capture(model, _tokens())
    units = transforms.head_units(gm, "model.layers.0.self_attn.k_proj")
    assert [len(u) for u in units] == [4, 4]
    pruned = transforms.prune_heads(gm, "model.layers.0.self_attn.k_proj", [0])
    attention = "model.layers.0.self_attn"
    assert pruned.get_submodule(f"{attention}.k_proj").out_features == 4
    assert pruned.get_submodule(f"{attention}.v_proj").out_features == 4
    assert pruned.get_submodule(f"{attention}.q_proj").out_features == 8      # query heads 0 and 1 went with it
    assert pruned.get_submodule(f"{attention}.o_proj").in_features == 8
    expands = [n.args[1] for n in pruned.graph.nodes if n.target == "expand" and isinstance(n.args[1], (list, tuple))
               and len(n.args[1]) == 5]
    assert any(sizes[1] == 1 for sizes in expands)   # the key/value head count in the graph's repeat, rewritten

    def mask(copy):   # query heads 0 and 1 (key/value head 0's) never reach o_proj
        copy.get_submodule(f"{attention}.o_proj").weight[:, :8] = 0

    assert_prune_equals_mask(gm, pruned, mask, _tokens(3, 6, seed=7))
    replayed = transforms.replay(graphmorph.capture(model, _tokens()), graphmorph.history(pruned))
    assert all(torch.equal(a, b) for a, b in zip(replayed.state_dict().values(), pruned.state_dict().values()))


def test_prune_filters_with_heads_removes_heads_and_mlp_channels():
    torch.manual_seed(0)
    gm = graphmorph.capture(_eager(_vit()), _pixels())
    pruned = transforms.prune_filters(gm, 0.3, per_layer=True, heads=True)
    assert graphmorph.history(pruned)[-1]["heads"] is True
    for k in range(2):   # round(0.3 x 4) = 1 whole head of 4 features from q, k and v; 30% of the MLP
        attention = f"vit.layers.{k}.attention"
        assert {pruned.get_submodule(f"{attention}.{p}").out_features for p in ("q_proj", "k_proj", "v_proj")} == {12}
        assert pruned.get_submodule(f"vit.layers.{k}.mlp.fc1").out_features == 24 - 7
    assert graphmorph.count_flops(pruned).macs < graphmorph.count_flops(gm).macs


@pytest.mark.parametrize("init", ["zero", "split"])
def test_a_key_value_head_and_mlp_channels_widen_preserving_the_function(init):
    torch.manual_seed(0)
    gm = graphmorph.capture(_eager(_llama()), _tokens())
    wider = transforms.widen(gm, "model.layers.0.self_attn.k_proj", 1, init, heads=True)
    attention = "model.layers.0.self_attn"
    sizes = {p: wider.get_submodule(f"{attention}.{p}").out_features for p in ("q_proj", "k_proj", "v_proj")}
    assert sizes == {"q_proj": 24, "k_proj": 12, "v_proj": 12}   # a third key/value head, with two query heads
    assert wider.get_submodule(f"{attention}.o_proj").in_features == 24
    assert_preserves_function(gm, wider, _tokens(3, 6, seed=8))
    mlp = transforms.widen(wider, "model.layers.1.mlp.gate_proj", 5, init)
    assert mlp.get_submodule("model.layers.1.mlp.up_proj").out_features == 29
    assert_preserves_function(gm, mlp, _tokens(3, 6, seed=9))


def test_a_per_head_position_bias_keeps_its_heads_and_the_rest_prunes():
    torch.manual_seed(0)
    model = _eager(T.SwinForImageClassification(T.SwinConfig(image_size=16, patch_size=4, embed_dim=8, depths=[1, 1],
                                                              num_heads=[2, 2], window_size=2, num_labels=3)))
    gm = graphmorph.capture(model, _pixels())
    heads = graphmorph.Registry.default().with_heads()
    attention = [g for g in graphmorph.channel_groups(gm, heads) if any(p.endswith("q_proj") for p in g.producers)]
    assert len(attention) == 2 and all(not g.prunable for g in attention)   # Swin's bias table is indexed per head
    pruned = transforms.prune_filters(gm, 0.3, per_layer=True, heads=True)    # verified: the bias stays whole
    assert graphmorph.count_flops(pruned).macs < graphmorph.count_flops(gm).macs
