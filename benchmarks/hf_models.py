"""The zoo's Hugging Face suite: transformers 5.x model classes built from small configs (random
weights, nothing downloaded), in the proportions of the released models (an MLP about 2.7 times
the hidden width, grouped-query attention where the family has it), and the input each takes."""
from __future__ import annotations

VOCAB = 128
_LM = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)
_IMAGE = 32

# name -> (model class, config class, config arguments, input: "tokens" or "pixels")
MODELS = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
             "tokens"),
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(_LM, num_key_value_heads=2), "tokens"),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(_LM, num_key_value_heads=2), "tokens"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(_LM, num_key_value_heads=2), "tokens"),
    "bert": ("BertForSequenceClassification", "BertConfig", dict(_LM, num_labels=3), "tokens"),
    "vit": ("ViTForImageClassification", "ViTConfig",
            dict(image_size=_IMAGE, patch_size=8, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                 num_attention_heads=4, num_labels=3), "pixels"),
    "swin": ("SwinForImageClassification", "SwinConfig",
             dict(image_size=_IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                  num_labels=3), "pixels"),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3), "pixels"),
    "resnet": ("ResNetForImageClassification", "ResNetConfig",
               dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3), "pixels"),
    # issue 39: float32 fixed by casts, mixture-of-experts, sandwich norms, parallel blocks, ALiBi,
    # state spaces, relative attention, windows, convolutions
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(_LM, num_key_value_heads=2, head_dim=16), "tokens"),
    "olmo": ("OlmoForCausalLM", "OlmoConfig", dict(_LM, num_key_value_heads=2, eos_token_id=0, pad_token_id=0),
             "tokens"),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig",
                dict(_LM, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2), "tokens"),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig",
                  dict(_LM, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       head_dim=16), "tokens"),
    "granite": ("GraniteForCausalLM", "GraniteConfig", dict(_LM, num_key_value_heads=2, residual_multiplier=0.5),
                "tokens"),
    "phi": ("PhiForCausalLM", "PhiConfig", _LM, "tokens"),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(_LM, use_parallel_residual=True), "tokens"),
    "falcon": ("FalconForCausalLM", "FalconConfig",
               dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, parallel_attn=True,
                    new_decoder_architecture=False, multi_query=True), "tokens"),
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4), "tokens"),
    "opt": ("OPTForCausalLM", "OPTConfig",
            dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=172, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, word_embed_proj_dim=64), "tokens"),
    "mamba": ("MambaForCausalLM", "MambaConfig", dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                                      state_size=8), "tokens"),
    "distilbert": ("DistilBertForSequenceClassification", "DistilBertConfig",
                   dict(vocab_size=VOCAB, dim=64, hidden_dim=172, n_layers=2, n_heads=4, max_position_embeddings=64,
                        num_labels=3), "tokens"),
    "deberta_v2": ("DebertaV2ForSequenceClassification", "DebertaV2Config",
                   dict(_LM, num_labels=3, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"]),
                   "tokens"),
    "modernbert": ("ModernBertForSequenceClassification", "ModernBertConfig",
                   dict(_LM, num_labels=3, pad_token_id=0, bos_token_id=0, eos_token_id=0, cls_token_id=0,
                        sep_token_id=0), "tokens"),
    "t5_encoder": ("T5EncoderModel", "T5Config",
                   dict(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=172, num_layers=2, num_heads=4), "tokens"),
    "dinov2": ("Dinov2ForImageClassification", "Dinov2Config",
               dict(image_size=_IMAGE, patch_size=8, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                    num_attention_heads=4, num_labels=3), "pixels"),
    "swin_shifted": ("SwinForImageClassification", "SwinConfig",
                     dict(image_size=_IMAGE, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                          window_size=4, num_labels=3), "pixels"),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig",
                    dict(image_size=_IMAGE, patch_size=8, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                         num_attention_heads=4), "pixels"),
    "convnextv2": ("ConvNextV2ForImageClassification", "ConvNextV2Config",
                   dict(num_stages=2, hidden_sizes=[16, 32], depths=[2, 2], num_labels=3), "pixels"),
    "regnet": ("RegNetForImageClassification", "RegNetConfig",
               dict(embedding_size=16, hidden_sizes=[16, 32], depths=[2, 2], groups_width=8, num_labels=3), "pixels"),
    "mobilenet_v2": ("MobileNetV2ForImageClassification", "MobileNetV2Config",
                     dict(image_size=_IMAGE, depth_multiplier=0.35, num_labels=3), "pixels"),
    "bit": ("BitForImageClassification", "BitConfig",
            dict(embedding_size=16, hidden_sizes=[32, 64], depths=[2, 2], num_groups=8, num_labels=3), "pixels"),
}


def build(name: str):
    """The model in eval mode (its default config otherwise: causal LMs keep `use_cache=True`)."""
    import transformers

    model_class, config_class, arguments, _ = MODELS[name]
    config = getattr(transformers, config_class)(**arguments)
    return getattr(transformers, model_class)(config).eval()


def example(name: str, batch: int = 2):
    """Seeded token ids (batch x 16) or images (batch x 3 x 32 x 32) for the model."""
    import torch

    generator = torch.Generator().manual_seed(0)
    if MODELS[name][3] == "tokens":
        return torch.randint(0, VOCAB, (batch, 16), generator=generator)
    return torch.randn(batch, 3, _IMAGE, _IMAGE, generator=generator)


def layers(model) -> int | None:
    """The number of layers its config asks for: what the blocks found must count (None where the
    config gives no count: MobileNetV2's blocks follow from its depth multiplier)."""
    config = model.config
    depths = getattr(config, "depths", None)
    return sum(depths) if depths else getattr(config, "num_hidden_layers", None)
