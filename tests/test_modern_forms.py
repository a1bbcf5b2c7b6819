"""Channels-last blocks, layer norms, layer scale and transformer layers (torchvision's and timm's
ConvNeXt and ViT forms, in small): channel pruning follows the channels through permutes,
reshapes and token tensors, and equals masking with the layer norms' statistics over the kept
channels; ZeroInit growth finds a layer scale or an attention output as a branch's last affine
layer, and silences every branch of a transformer layer."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import graphmorph
import transforms
from graphmorph.graph.channels import channel_dependencies
from graphmorph.graph.verify import output_differences, verification_inputs
from graphmorph.testing import assert_prune_equals_mask, assert_state_carried, randomize_state
from third_party_forms import (BatchNormAct2d, ConvAttentionNet, ConvNeXtish, ConvNeXtV2Block, DenseBlock, DepthwiseSeparable, DenseNetish, DropPath, GhostBottleneck, GhostModule, MetaFormerBlock, Swinish,
                               TimmBottleneck, TimmConvNeXtBlock, TimmViTish, TokenNet, TvConvNeXtBlock, ViTish, PaddedWindows,
                               XceptionModule)
from transforms.masked_norm import masked_norm

ATOL = 1e-10
X = torch.randn(2, 3, 8, 8, dtype=torch.float64)


def _captured(model: nn.Module) -> torch.fx.GraphModule:
    return graphmorph.capture(randomize_state(model.double(), 0), X, leaf_modules=[DropPath]).eval()


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=0, max_size=2), channels=st.integers(2, 7), data=st.data())
def test_the_masked_norm_reference_is_the_norm_of_the_kept_channels(shape, channels, data):
    """The pruning reference's layer, RMS and one-group norms against torch's on the kept channels alone."""
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=channels, max_size=channels).filter(any)))
    generator = torch.Generator().manual_seed(len(shape) * 31 + channels)
    x = torch.randn(2, *shape, channels, generator=generator, dtype=torch.float64)
    weight, bias = torch.randn(2, channels, generator=generator, dtype=torch.float64)
    k, last = int(keep.sum()), [1] * (len(shape) + 1) + [channels]
    layer = masked_norm(x, keep.double().view(last), weight, bias, 1e-5, False, (x.dim() - 1,))
    rms = masked_norm(x, keep.double().view(last), weight, None, 1e-5, True, (x.dim() - 1,))
    assert torch.allclose(layer[..., keep], F.layer_norm(x[..., keep], (k,), weight[keep], bias[keep], 1e-5),
                          atol=1e-12, rtol=0)
    assert torch.allclose(rms[..., keep], F.rms_norm(x[..., keep], (k,), weight[keep], 1e-5), atol=1e-12, rtol=0)
    first = x.movedim(-1, 1)                              # channels along dim 1 for the GroupNorm
    group = masked_norm(first, keep.double().view(1, channels, *[1] * len(shape)), weight, bias, 1e-5, False,
                        tuple(range(1, first.dim())))
    assert torch.allclose(group[:, keep], F.group_norm(first[:, keep], 1, weight[keep], bias[keep], 1e-5),
                          atol=1e-12, rtol=0)


def _by_hand(model: ConvNeXtish, kept: list[int]) -> dict[str, torch.Tensor]:
    """The state of torchvision-form ConvNeXtish with stage 0's residual channels cut to `kept`,
    sliced by hand from the architecture (not from the rewrite's bookkeeping)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    index = torch.tensor(kept)
    state["stem.weight"], state["stem.bias"] = state["stem.weight"][index], state["stem.bias"][index]
    for b in range(2):
        p = f"stage0.{b}.block"
        state[f"{p}.0.weight"], state[f"{p}.0.bias"] = state[f"{p}.0.weight"][index], state[f"{p}.0.bias"][index]
        state[f"{p}.2.weight"], state[f"{p}.2.bias"] = state[f"{p}.2.weight"][index], state[f"{p}.2.bias"][index]
        state[f"{p}.3.weight"] = state[f"{p}.3.weight"][:, index]
        state[f"{p}.5.weight"], state[f"{p}.5.bias"] = state[f"{p}.5.weight"][index], state[f"{p}.5.bias"][index]
        state[f"stage0.{b}.layer_scale"] = state[f"stage0.{b}.layer_scale"][index]
    state["down_norm.weight"], state["down_norm.bias"] = state["down_norm.weight"][index], state["down_norm.bias"][index]
    state["down.weight"] = state["down.weight"][:, index]
    return state


def test_pruning_a_convnext_residual_stream_through_layer_norms_matches_the_net_sliced_by_hand():
    model = randomize_state(ConvNeXtish().double(), 0).eval()
    gm = graphmorph.capture(model, X)
    deps = channel_dependencies(gm)
    assert [g.producers[0] for g in deps.groups if g.refused] == ["head.1"]    # only the classifier
    pruned = transforms.prune_channels(gm, "stem", [1, 5])
    kept = [0, 2, 3, 4, 6, 7]
    expected = _by_hand(model, kept)
    assert pruned.state_dict().keys() == expected.keys()
    for name, tensor in pruned.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    for b in range(2):
        assert pruned.get_submodule(f"stage0.{b}.block.2").normalized_shape == (6,)
    reference = ConvNeXtish().double().eval()                  # the same architecture, 6 channels in stage 0
    reference.stem = nn.Conv2d(3, 6, 2, stride=2).double()
    for b in range(2):
        block = reference.stage0[b]
        block.block[0] = nn.Conv2d(6, 6, 7, padding=3, groups=6).double()
        block.block[2], block.block[3] = nn.LayerNorm(6, eps=1e-6).double(), nn.Linear(6, 32).double()
        block.block[5], block.layer_scale = nn.Linear(32, 6).double(), nn.Parameter(torch.zeros(6, 1, 1).double())
    reference.down_norm, reference.down = nn.LayerNorm(6).double(), nn.Conv2d(6, 16, 2, stride=2).double()
    reference.load_state_dict(expected)
    assert output_differences(reference, pruned, X, ("eval",))["eval"] <= ATOL


@pytest.mark.parametrize("block", [TvConvNeXtBlock, TimmConvNeXtBlock], ids=["torchvision", "timm"])
def test_convnext_prunes_as_masking_and_grows_through_its_layer_scale(block):
    gm = _captured(ConvNeXtish(block))
    deps = channel_dependencies(gm)
    assert [g.producers[0] for g in deps.groups if g.refused] == ["head.1"]
    pruned = transforms.prune_filters(gm, 0.3, per_layer=True)
    record = graphmorph.history(pruned)[-1]
    assert not record["skipped"] and len(record["pruned"]) >= 6
    removal = deps.removal([c for target, channels in record["pruned"] for c in deps.classes(target, list(channels))])
    assert_prune_equals_mask(gm, pruned, transforms.mask_channels(gm, removal, deps.layout),
                             verification_inputs(gm), ("eval",), ATOL)
    assert_state_carried(gm, pruned, resized=True)
    assert graphmorph.count_flops(pruned).macs < 0.65 * graphmorph.count_flops(gm).macs   # 0.8 with the hidden alone
    for stage in graphmorph.find_stages(gm):
        template = stage.block_info[-1]
        assert template.last_affine_module.endswith(("layer_scale", "gamma"))
        grown = transforms.grow(gm, stage=stage.index, init="zero")
        new_block = graphmorph.history(grown)[-1]["new_block"]
        assert_state_carried(gm, grown, added=(new_block,))
        scale = graphmorph.find_blocks(grown)[[b.name for b in graphmorph.find_blocks(grown)].index(new_block)]
        assert torch.count_nonzero(grown.get_parameter(scale.last_affine_module)) == 0
        assert output_differences(gm, grown, X, ("eval", "train"))["eval"] <= ATOL


def test_a_transformer_layer_is_one_block_and_grows_with_both_branches_silenced():
    gm = _captured(ViTish())
    stages = graphmorph.find_stages(gm)
    assert [s.blocks for s in stages] == [("layers.0", "layers.1")]
    assert stages[0].block_info[-1].initialised == ("layers.1.attention.out_proj", "layers.1.mlp.2")
    grown = transforms.grow(gm, stage=0, init="zero")
    new_block = graphmorph.history(grown)[-1]["new_block"]
    assert new_block == "layers.2"
    assert_state_carried(gm, grown, added=(new_block,))
    for silenced in ("layers.2.attention.out_proj", "layers.2.mlp.2"):
        layer = grown.get_submodule(silenced)
        assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0
    assert output_differences(gm, grown, X, ("eval", "train"))["eval"] <= ATOL
    noisy = transforms.grow(gm, stage=0, init="gau")   # both branches drawn, not only the last
    assert all(torch.count_nonzero(noisy.get_submodule(f"layers.2.{p}").weight) > 0
               for p in ("attention.out_proj", "mlp.2"))


def test_vit_tokens_prune_the_mlps_and_refuse_the_attention_stream_with_its_reason():
    gm = _captured(ViTish())
    groups = {g.producers[0]: g.refused for g in channel_dependencies(gm).groups}
    assert "MultiheadAttention" in groups["conv_proj"] and "embed_dim" in groups["conv_proj"]
    assert groups["layers.0.mlp.0"] is None and groups["layers.1.mlp.0"] is None
    pruned = transforms.prune_channels(gm, "layers.0.mlp.0", [0, 3, 4])
    assert pruned.get_submodule("layers.0.mlp.0").out_features == 13
    assert pruned.get_submodule("layers.0.mlp.2").in_features == 13
    assert_state_carried(gm, pruned, resized=True)

    def mask(model):
        model.get_submodule("layers.0.mlp.0").weight[[0, 3, 4]] = 0
        model.get_submodule("layers.0.mlp.0").bias[[0, 3, 4]] = 0
    assert_prune_equals_mask(gm, pruned, mask, X, ("eval", "train"), ATOL)


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "written-out"])
def test_attention_head_features_prune_across_q_k_v_and_every_head_as_masking_by_hand(fused):
    """timm's qkv form, 2 heads of 4: removing feature 1 of q's first head removes feature 1 of q, k
    and v in both heads (12 qkv rows) and the 2 projection columns those heads' feature 1 feed; the
    scores keep the full width's scale. The reference zeroes those rows in the original model."""
    gm = _captured(TimmViTish(d=8, fused=fused))
    deps = channel_dependencies(gm)
    assert deps.group_of("blocks.0.attn.qkv").size == 4 and deps.group_of("blocks.0.attn.qkv").prunable
    pruned = transforms.prune_channels(gm, "blocks.0.attn.qkv", [1])
    rows, columns = [r for r in range(24) if r % 4 != 1], [c for c in range(8) if c % 4 != 1]
    before, after = gm.state_dict(), pruned.state_dict()
    assert torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"][rows])
    assert torch.equal(after["blocks.0.attn.qkv.bias"], before["blocks.0.attn.qkv.bias"][rows])
    assert torch.equal(after["blocks.0.attn.proj.weight"], before["blocks.0.attn.proj.weight"][:, columns])
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("blocks.0.attn."))
    assert_state_carried(gm, pruned, resized=True)

    def mask(model):
        model.get_submodule("blocks.0.attn.qkv").weight[1::4] = 0
        model.get_submodule("blocks.0.attn.qkv").bias[1::4] = 0
    assert_prune_equals_mask(gm, pruned, mask, X, ("eval", "train"), ATOL)


@pytest.mark.parametrize("channel, rows", [(9, [9, 21]), (0, [0, 4, 12, 16])], ids=["v", "q-and-k"])
def test_channels_first_attention_prunes_per_head_features_as_masking_by_hand(channel, rows):
    """timm's Attention2d form, 2 heads of 4 features: the qkv convolution's rows run (head, q/k/v,
    feature). Removing v's feature 1 of head 0 (row 9) removes it in both heads (rows 9, 21); q's
    feature 0 (row 0) takes k's feature 0 with it in both heads (rows 0, 4, 12, 16)."""
    gm = _captured(ConvAttentionNet())
    deps = channel_dependencies(gm)
    assert deps.group_of("attn.qkv").size == 8 and deps.group_of("attn.qkv").prunable   # 4 q=k + 4 v features
    pruned = transforms.prune_channels(gm, "attn.qkv", [channel])
    kept = [r for r in range(24) if r not in rows]
    assert torch.equal(pruned.get_submodule("attn.qkv").weight, gm.get_submodule("attn.qkv").weight[kept])
    columns = [c for c in range(8) if channel < 4 or c % 4 != 1]     # v's feature 1 feeds proj columns 1 and 5
    assert torch.equal(pruned.get_submodule("attn.proj").weight, gm.get_submodule("attn.proj").weight[:, columns])

    def mask(model):
        model.get_submodule("attn.qkv").weight[rows] = 0
        model.get_submodule("attn.qkv").bias[rows] = 0
    assert_prune_equals_mask(gm, pruned, mask, X, ("eval", "train"), ATOL)


def test_a_global_response_norm_prunes_with_its_mean_over_the_kept_channels():
    """ConvNeXt-V2's GRN divides each channel's spread by its mean over the channels: pruned, the
    mean runs over the kept ones. Reference by hand: the block's hidden channels run through the
    GRN's formula with that mean taken over the kept channels of the original's hidden tensor."""
    block = randomize_state(ConvNeXtV2Block(4).double(), 0)
    with torch.no_grad():
        block.grn.weight.normal_()
    gm = _captured(nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), block, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 4)))
    assert channel_dependencies(gm).group_of("1.fc1").prunable
    kept = [k for k in range(16) if k not in (2, 9, 13)]
    pruned = transforms.prune_channels(gm, "1.fc1", [2, 9, 13])     # verified against mask_channels
    assert pruned.get_parameter("1.grn.weight").shape == (13,)
    b = gm.get_submodule("1")
    stem = gm.get_submodule("0")(X)
    hidden = F.gelu(b.fc1(b.norm(b.conv_dw(stem).permute(0, 2, 3, 1))))[..., kept]
    spread = hidden.norm(p=2, dim=(1, 2), keepdim=True)
    gated = hidden + b.grn.bias[kept] + b.grn.weight[kept] * hidden * spread / (spread.mean(-1, keepdim=True) + 1e-6)
    out = stem + F.linear(gated, b.fc2.weight[:, kept], b.fc2.bias).permute(0, 3, 1, 2)
    expected = gm.get_submodule("4")(out.mean((2, 3)))
    assert torch.allclose(pruned(X), expected, atol=ATOL, rtol=0)


def test_padding_beside_the_channels_keeps_them_and_padding_them_is_refused():
    gm = _captured(PaddedWindows())
    assert channel_dependencies(gm).group_of("stem").prunable
    pruned = transforms.prune_filters(gm, 0.3, per_layer=True)              # verified: equals masking, float64
    assert pruned.get_submodule("mix").in_features == pruned.get_submodule("stem").out_channels == 6
    refused = channel_dependencies(_captured(PaddedWindows(pad_channels=True))).group_of("stem").refused
    assert "pads the channels" in refused


def _stream_by_hand(model: TimmViTish, kept: list[int]) -> dict[str, torch.Tensor]:
    """TimmViTish's state with its residual stream cut to `kept`, sliced by hand from the architecture."""
    state, index = {k: v.clone() for k, v in model.state_dict().items()}, torch.tensor(kept)
    rows = ["patch_embed.weight", "patch_embed.bias", "norm.weight", "norm.bias"]
    columns = ["head.weight"]
    for b in range(2):
        p = f"blocks.{b}"
        rows += [f"{p}.{n}.{t}" for n in ("norm1", "norm2", "attn.proj", "mlp.2") for t in ("weight", "bias")]
        columns += [f"{p}.attn.qkv.weight", f"{p}.mlp.0.weight"]
    for name in rows:
        state[name] = state[name][index]
    for name in columns:
        state[name] = state[name][:, index]
    for name in ("cls_token", "pos_embed"):
        state[name] = state[name][..., index]
    return state


def test_a_vit_residual_stream_prunes_through_attention_and_the_class_token_as_sliced_by_hand():
    model = randomize_state(TimmViTish(d=8).double(), 0)
    gm = graphmorph.capture(model, X, leaf_modules=[DropPath]).eval()
    assert [g.producers[0] for g in channel_dependencies(gm).groups if g.refused] == ["head"]
    pruned = transforms.prune_channels(gm, "patch_embed", [0, 5, 6])     # verified: equals masking, float64
    expected = _stream_by_hand(model, [1, 2, 3, 4, 7])
    assert pruned.state_dict().keys() == expected.keys()
    for name, tensor in pruned.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert pruned(X).shape == (2, 4)
    both = transforms.prune_filters(gm, 0.3, per_layer=True)     # the nearest count of 8, 4 and 16 channels
    pruned_rows = [len(channels) for _, channels in graphmorph.history(both)[-1]["pruned"]]
    assert pruned_rows == [2, 1 * 3 * 2, 5, 1 * 3 * 2, 5]        # qkv: a feature of q, k and v in 2 heads
    assert_state_carried(gm, both, resized=True)


def test_poolformer_prunes_through_one_group_norms_and_grows_with_both_layer_scales_silenced():
    gm = _captured(nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), MetaFormerBlock(8), MetaFormerBlock(8),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))
    groups = {g.producers[0]: g.refused for g in channel_dependencies(gm).groups}
    assert groups == {"0": None, "1.mlp.0": None, "2.mlp.0": None, "5": "its channels reach the model's output"}
    pruned = transforms.prune_channels(gm, "0", [2, 6])            # verified: equals masking, float64
    assert pruned.get_submodule("1.norm1").num_channels == 6 and pruned.get_parameter("2.scale2").shape == (6,)
    assert_state_carried(gm, pruned, resized=True)
    grown = transforms.grow(gm, stage=0, init="zero")
    assert graphmorph.find_blocks(gm)[-1].initialised == ("2.scale1", "2.scale2")
    new_block = graphmorph.history(grown)[-1]["new_block"]
    assert_state_carried(gm, grown, added=(new_block,))
    assert output_differences(gm, grown, X, ("eval", "train"))["eval"] <= ATOL


def test_a_group_norm_of_several_groups_is_refused_with_its_reason():
    gm = _captured(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 3)))
    assert "across groups of channels" in channel_dependencies(gm).group_of("0").refused


def test_token_mixing_linears_keep_the_channels_and_batch_folded_norms_prune():
    gm = _captured(TokenNet())
    deps = channel_dependencies(gm)
    groups = {g.producers[0]: g.refused for g in deps.groups}
    assert groups["stem"] is None and groups["blocks.0.channels.0"] is None
    assert "proj" in deps.group_of("stem").producers                # a residual through the folded norm
    assert "blocks.0.tokens.0" not in groups                        # token mixing makes no channels
    pruned = transforms.prune_filters(gm, 0.4, per_layer=True)      # verified: equals masking, float64
    assert_state_carried(gm, pruned, resized=True)
    assert pruned.get_submodule("blocks.0.tokens.0").weight.shape == (8, 4)     # tokens untouched
    assert pruned.get_parameter("blocks.1.alpha").shape[-1] == pruned.get_submodule("stem").out_channels == 5
    assert pruned.get_submodule("bn").num_features == pruned.get_submodule("proj").out_features == 5
    assert [b.initialised for b in graphmorph.find_blocks(gm)[:2]] == [
        ("blocks.0.tokens.2", "blocks.0.channels.2"), ("blocks.1.tokens.2", "blocks.1.channels.2")]


def test_a_swin_block_grows_with_its_attention_function_and_mlp_silenced():
    """torchvision's Swin calls one wrapped attention function with its projections' weights as
    arguments; the output projection it reads is the attention branch's last affine layer."""
    gm = _captured(Swinish())
    template = graphmorph.find_stages(gm)[0].block_info[-1]
    assert template.name == "stage.1" and template.initialised == ("stage.1.attn.proj", "stage.1.mlp.2")
    grown = transforms.grow(gm, stage=0, init="zero")
    new_block = graphmorph.history(grown)[-1]["new_block"]
    assert_state_carried(gm, grown, added=(new_block,))
    assert output_differences(gm, grown, X, ("eval", "train"))["eval"] <= ATOL
    copied = [n for n in grown.graph.nodes if n.op == "get_attr" and str(n.target).startswith(new_block)]
    zeroed = {str(n.target) for n in copied if torch.count_nonzero(grown.get_parameter(str(n.target))) == 0}
    assert {f"{new_block}.attn.proj.weight", f"{new_block}.attn.proj.bias"} <= zeroed


def test_a_vgg_conv_relu_block_grows_as_an_identity():
    """VGG without BatchNorm: a conv-ReLU block is an identity with a dirac conv and zero bias,
    since the ReLU repeats the one before it (was refused: 'needs a conv-BN-ReLU block')."""
    gm = _captured(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)))
    for stage in graphmorph.find_stages(gm):
        grown = transforms.grow(gm, stage=stage.index, init="identity")
        new_block = graphmorph.history(grown)[-1]["new_block"]
        assert_state_carried(gm, grown, added=(new_block,))
        conv = next(m for name, m in grown.named_modules() if name.startswith(new_block) and isinstance(m, nn.Conv2d))
        expected = torch.zeros_like(conv.weight)
        nn.init.dirac_(expected)
        assert torch.equal(conv.weight, expected) and torch.count_nonzero(conv.bias) == 0
        assert output_differences(gm, grown, X, ("eval", "train"))["eval"] <= ATOL


def test_attention_is_counted_on_the_cpu():
    """FlopCounterMode has no formula for the CPU attention kernel: the projections alone were
    counted. By hand for ViTish (d 8, 2 heads of 4, 5 tokens, batch 2): q, k, v and output
    projections 4 x 5 x 8 x 8, scores and their product with v 2 heads x 5 x 5 x (4 + 4)."""
    gm = _captured(ViTish())
    report = graphmorph.count_flops(gm)
    attention = [n.cost.macs for n in report.by_node if n.target == "layers.0.attention"]
    assert attention == [2 * (4 * 5 * 8 * 8 + 2 * 5 * 5 * (4 + 4))]


@pytest.mark.parametrize("norm", [nn.BatchNorm2d, BatchNormAct2d], ids=["torchvision", "timm functional norms"])
def test_a_dense_block_grows_a_layer_its_readers_take_with_zero_weights(norm):
    gm = _captured(DenseNetish(norm=norm))
    grown = transforms.grow_dense(transforms.grow_dense(gm, "block1", seed=1), "block2", seed=2)
    assert [r["new_layer"] for r in graphmorph.history(grown)[-2:]] == ["block1.denselayer3", "block2.denselayer3"]
    assert grown.get_submodule("block1.denselayer3.norm1").running_mean.shape == (8,)  # reads the whole block
    assert grown.get_submodule("block1.denselayer3.conv1").in_channels == 8
    transition, classifier = grown.get_submodule("transition.2"), grown.get_submodule("classifier")
    assert transition.in_channels == classifier.in_features == 10
    assert torch.count_nonzero(transition.weight[:, 8:]) == torch.count_nonzero(classifier.weight[:, 8:]) == 0
    assert torch.equal(grown.get_submodule("norm").running_var[8:], torch.ones(2, dtype=torch.float64))
    assert torch.equal(grown.get_submodule("norm").weight[8:], torch.ones(2, dtype=torch.float64))
    assert_state_carried(gm, grown, added=("block1.denselayer3", "block2.denselayer3"), resized=True)
    assert max(output_differences(gm, grown, X, ("eval", "train")).values()) <= ATOL
    again = transforms.grow_dense(grown, "block1", seed=3)                            # the block keeps its name
    assert graphmorph.history(again)[-1]["new_layer"] == "block1.denselayer4"
    assert again.get_submodule("block1.denselayer4.norm1").running_mean.shape == (10,)


def test_dense_growth_refuses_a_block_that_is_not_dense_or_a_reader_it_cannot_widen():
    gm = _captured(DenseNetish())
    with pytest.raises(graphmorph.RewriteError, match="'stem' is not a dense block"):
        transforms.grow_dense(gm, "stem")
    depthwise = nn.Sequential(nn.Conv2d(3, 4, 1), DenseBlock(1, 4, 2), nn.Conv2d(6, 6, 3, groups=6))
    with pytest.raises(graphmorph.RewriteError, match="reach the model's output through _2 \\(Conv2d 2\\)"):
        transforms.grow_dense(_captured(depthwise), "1")


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: a shortcut only when it keeps the channels and the size."""

    def __init__(self, c_in: int, c_out: int, expand: bool = True):
        super().__init__()
        hidden = 2 * c_in if expand else c_in
        expansion = [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()] if expand else []
        self.conv = nn.Sequential(*expansion, nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
                                  nn.BatchNorm2d(hidden), nn.ReLU6(), nn.Conv2d(hidden, c_out, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def test_a_plain_block_ending_in_batchnorm_grows_inside_a_new_shortcut():
    """MobileNetV2's last block of a stage changes the channels, so it has no shortcut and the
    identity init cannot apply (no ReLU after its last BatchNorm); its copy, shape-preserving,
    wrapped in an identity shortcut, is silenced by ZeroInit."""
    gm = _captured(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), InvertedResidual(4, 4), InvertedResidual(4, 6),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)))
    template = graphmorph.find_stages(gm)[0].block_info[-1]
    assert (template.name, template.kind, template.last_affine_module) == ("2", "plain", "2.conv.7")
    with pytest.raises(graphmorph.RewriteError, match="no shortcut.*or shortcut=True"):
        transforms.grow(gm, stage=0, init="zero")
    grown = transforms.grow(gm, stage=0, init="zero", shortcut=True)
    record = graphmorph.history(grown)[-1]
    assert record["shortcut"] is True
    new = next(b for b in graphmorph.find_blocks(grown) if b.name == record["new_block"])
    assert new.kind == "residual" and new.shortcut == "identity"
    assert grown.get_submodule(f"{record['new_block']}.0").in_channels == 6        # the shape-preserving form
    assert torch.count_nonzero(grown.get_submodule(new.last_affine_module).weight) == 0
    assert_state_carried(gm, grown, added=(record["new_block"],))
    assert max(output_differences(gm, grown, X, ("eval", "train")).values()) <= ATOL
    replayed = transforms.replay(gm, graphmorph.history(grown))
    assert all(torch.equal(a, b) for a, b in zip(replayed.state_dict().values(), grown.state_dict().values()))
    with pytest.raises(graphmorph.RewriteError, match="shortcut=True wraps a plain, branch or dense block.* is residual"):
        transforms.grow(grown, stage=0, init="zero", shortcut=True)


@pytest.mark.parametrize("act", [nn.ReLU, nn.SiLU])
def test_a_functional_batchnorm_ends_a_branch_and_a_non_idempotent_activation_after_the_add_is_refused(act):
    gm = _captured(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), TimmBottleneck(4, act), TimmBottleneck(4, act),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)))
    # captured in train mode: fx bakes training=True into F.batch_norm, so any run of the graph, even
    # in eval mode, updates its running statistics; the shape propagation of growth must not keep that
    template = graphmorph.find_stages(gm)[0].block_info[-1]
    assert template.last_affine_module == "3.bn2"              # the module holding F.batch_norm's weight
    if act is nn.SiLU:
        with pytest.raises(graphmorph.RewriteError, match=r"applies .*SiLU.* after its residual add"):
            transforms.grow(gm, stage=0, init="zero")
        return
    grown = transforms.grow(gm, stage=0, init="zero")
    new_block = graphmorph.history(grown)[-1]["new_block"]
    bn = grown.get_submodule(f"{new_block}.bn2")
    assert torch.count_nonzero(bn.weight) == torch.count_nonzero(bn.bias) == 0
    assert_state_carried(gm, grown, added=(new_block,))
    assert max(output_differences(gm, grown, X, ("eval", "train")).values()) <= ATOL


def test_the_shape_preserving_copy_of_a_depthwise_block_keeps_its_convolution_depthwise():
    """MobileNetV2's first block (depthwise, then a projection to other channels): its copy reads
    the projected channels, so its depthwise convolution takes as many groups (was refused:
    'Conv2d with groups=4 cannot change its input channels alone')."""
    gm = _captured(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), InvertedResidual(4, 6, expand=False),
                                 InvertedResidual(6, 6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)))
    grown = transforms.grow(gm, after="1", init="zero", shortcut=True)
    new_block = graphmorph.history(grown)[-1]["new_block"]
    depthwise = grown.get_submodule(f"{new_block}.0")
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (6, 6, 6)
    assert grown.get_submodule(f"{new_block}.1").num_features == 6
    assert_state_carried(gm, grown, added=(new_block,))
    assert max(output_differences(gm, grown, X, ("eval", "train")).values()) <= ATOL


@pytest.mark.parametrize("timm_norm", [False, True], ids=["torchvision", "timm-functional-norm"])
def test_the_copy_of_a_gated_block_that_changes_channels_resizes_its_gate_and_functional_norm(timm_norm):
    """EfficientNet's first block (8 -> 4 channels, a squeeze-excitation gate): its copy reads 4
    channels, so the gate's expanding convolution makes 4 (was: 'size of tensor a (8) must match
    the size of tensor b (4)'), and a norm fx traced into F.batch_norm gets 4-wide tensors (was:
    'running_mean should contain 4 elements not 8')."""
    blocks = nn.Sequential(DepthwiseSeparable(8, 4, timm_norm), DepthwiseSeparable(4, 4, timm_norm))
    gm = _captured(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 4)))
    grown = transforms.grow(gm, after="1.0", init="zero", shortcut=True)
    new_block = graphmorph.history(grown)[-1]["new_block"]           # the copy's layers, in a new shortcut
    gate = f"{new_block}.1"
    assert grown.get_submodule(f"{gate}.fc1").in_channels == 4 and grown.get_submodule(f"{gate}.fc2").out_channels == 4
    assert grown.get_submodule(f"{new_block}.0.0").groups == 4
    norm = f"{new_block}.0.1"
    assert {n: tuple(t.shape) for n, t in grown.state_dict().items() if n.startswith(norm)
            and not n.endswith("num_batches_tracked")} == {f"{norm}.{k}": (4,) for k in
                                                           ("weight", "bias", "running_mean", "running_var")}
    assert_state_carried(gm, grown, added=(new_block,))
    assert max(output_differences(gm, grown, X, ("eval", "train")).values()) <= ATOL


def test_the_copy_of_a_projection_block_drops_the_whole_shortcut_for_the_identity():
    """timm's Xception: the projection's norm reads the shape of the conv before it, so the conv
    has a reader outside the shortcut. The copy's merge must read its own input (it read the
    template's projection, 5e-7 off on xception41) and keep none of the projection's parameters."""
    gm = _captured(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), XceptionModule(4, 6, stride=2), XceptionModule(6, 6),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)))
    grown = transforms.grow(gm, after="1", init="zero")              # verified: preserves eval and train
    new_block = graphmorph.history(grown)[-1]["new_block"]
    added = {n for n, _ in grown.named_parameters()} - {n for n, _ in gm.named_parameters()}
    assert added and all(n.startswith(f"{new_block}.stack.") for n in added), sorted(added)
    assert_state_carried(gm, grown, added=(new_block,))
    assert max(output_differences(gm, grown, X, ("eval", "train")).values()) <= ATOL


class _AddChannelsLast(nn.Module):
    """A residual add made channels-last and permuted back after it (timm's Swin reshapes so)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 2, 3, 1) + self.bn(self.conv(x)).permute(0, 2, 3, 1)
        return y.permute(0, 3, 1, 2)


def test_a_layout_op_after_the_residual_add_does_not_stop_zero_growth():
    gm = _captured(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _AddChannelsLast(4), _AddChannelsLast(4),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)))
    grown = transforms.grow(gm, stage=0, init="zero")
    assert_state_carried(gm, grown, added=(graphmorph.history(grown)[-1]["new_block"],))
    assert max(output_differences(gm, grown, X, ("eval", "train")).values()) <= ATOL


def test_an_inception_style_block_is_refused_with_its_structure_named():
    class Inception(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.a, self.b = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c // 2, 3, padding=1)

        def forward(self, x):
            return torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)

    gm = _captured(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Inception(4), Inception(4), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 4)))
    with pytest.raises(graphmorph.RewriteError, match="joins parallel branches with no shortcut"):
        transforms.grow(gm, stage=0, init="identity")


def test_a_ghost_modules_channel_slice_prunes_with_moved_bounds_as_sliced_by_hand():
    """GhostNet cuts `cat([x1, cheap(x1)])` to an odd width with `out[:, :C]`: removing primary
    channel 0 removes cheap channel 0 with it (depthwise), so of the 5 sliced channels 1, 2 and 4
    stay; the reference slices the state and the head's columns by hand."""
    model = randomize_state(nn.Sequential(GhostModule(3, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(5, 4)).double(), 0).eval()
    gm = graphmorph.capture(model, X).eval()
    pruned = transforms.prune_channels(gm, "0.primary_conv.0", [0])     # verified: equals masking, float64
    rows, columns = torch.tensor([1, 2]), torch.tensor([1, 2, 4])
    expected = {name: tensor[rows] if name.startswith("0.") and tensor.dim() else tensor
                for name, tensor in model.state_dict().items()}
    expected["3.weight"] = model.get_submodule("3").weight[:, columns]
    assert pruned.state_dict().keys() == expected.keys()
    for name, tensor in pruned.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    features = model[:3](X)[:, columns]
    by_hand = F.linear(features, expected["3.weight"], expected["3.bias"])
    assert torch.allclose(pruned(X), by_hand, atol=ATOL, rtol=0)


def test_ghost_bottlenecks_prune_every_group_through_their_slices():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), GhostBottleneck(6, 7), GhostBottleneck(6, 9),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    gm = _captured(model)
    assert [g.producers[0] for g in channel_dependencies(gm).groups if g.refused] == ["5"]
    pruned = transforms.prune_filters(gm, 0.3, per_layer=True)        # verified: equals masking, float64
    assert_state_carried(gm, pruned, resized=True)
    assert pruned.get_submodule("5").in_features < 6
