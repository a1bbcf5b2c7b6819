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


def layers(model) -> int:
    """The number of layers its config asks for: what the blocks found must count."""
    config = model.config
    depths = getattr(config, "depths", None)
    return sum(depths) if depths else config.num_hidden_layers
