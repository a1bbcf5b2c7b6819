"""Graph analysis: stages and blocks on seed nets and on third-party nets in other styles."""
import pytest
import torch
from torch import fx

import graphmorph
from graphmorph.models import build
from zoo import ZOO


def captured(name):
    factory, size, _ = ZOO[name]
    return graphmorph.capture(factory(), torch.randn(2, 3, size, size))


def blocks_by_name(gm):
    return {b.name: b for b in graphmorph.find_blocks(gm)}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_stages_are_found_as_a_person_names_them(name):
    stages = graphmorph.find_stages(captured(name))
    assert [s.blocks for s in stages] == ZOO[name][2]
    assert [s.index for s in stages] == list(range(len(stages)))
    sizes = [s.out_shape[1:] for s in stages]
    assert len(set(sizes)) == len(sizes)


@pytest.mark.parametrize("name, block, kind, shortcut, last_affine", [
    ("ProjectionResNet", "layer1.0", "residual", "identity", "layer1.0.bn2"),
    ("ProjectionResNet", "layer2.0", "residual", "projection", "layer2.0.bn2"),
    ("PreActResNet", "layer1.1", "residual", "identity", "layer1.1.conv2"),
    ("PreActResNet", "layer2.0", "residual", "projection", "layer2.0.conv2"),
    ("MobileNetV2ish", "features.3", "residual", "identity", "features.3.conv.5"),
    ("MobileNetV2ish", "features.2", "plain", None, "features.2.conv.5"),
    ("TinyDenseNet", "block2.1", "dense", "identity", "block2.1.conv"),
    ("SEResNet", "stage1.0", "residual", "identity", "stage1.0.bn2"),   # through the SE gate
    ("SEResNet", "stage2.0", "residual", "projection", "stage2.0.bn2"),
    ("PlusEqualsResNeXt", "stages.1.0", "residual", "projection", "stages.1.0.bn3"),
    ("VGGish", "features.3", "plain", None, "features.4"),
    ("InlineResidualNet", "c3", "residual", "identity", "c4"),
    ("ParentAddNet", "blocks.1", "residual", "identity", "blocks.1.bn2"),
])
def test_block_kind_shortcut_and_last_affine(name, block, kind, shortcut, last_affine):
    info = blocks_by_name(captured(name))[block]
    assert (info.kind, info.shortcut, info.last_affine_module) == (kind, shortcut, last_affine)


def test_functional_conv_blocks_own_their_parameter_and_last_bn():
    gm = captured("FunctionalNet")
    info = blocks_by_name(gm)["blocks.1"]
    assert info.last_affine_module == "blocks.1.bn"
    assert "blocks_1_weight" in info.nodes  # the get_attr feeding F.conv2d belongs to the block
    assert info.residual and info.growable and not info.reduces


def test_projection_shortcut_nodes_and_pre_activation_membership():
    gm = captured("PreActResNet")
    info = blocks_by_name(gm)["layer2.0"]
    assert info.shortcut_nodes == ("layer2_0_shortcut_0",)
    assert {"layer2_0_bn1", "relu_4", "layer2_0_conv1", "layer2_0_conv2", "add_2"} <= set(info.nodes)
    assert info.reduces and not info.growable


@pytest.mark.parametrize("arch, names", [
    ("Basic3ResNet-2-1-3", [("layer1.0", "layer1.1"), ("layer2.0",), ("layer3.0", "layer3.1", "layer3.2")]),
    ("Plain4Net-1-2-1-1", [("layer1.0",), ("layer2.0", "layer2.1"), ("layer3.0",), ("layer4.0",)]),
    ("Bottleneck4ResNet-1-1-2-1", [("layer1.0",), ("layer2.0",), ("layer3.0", "layer3.1"), ("layer4.0",)]),
])
def test_seed_net_stages_first_block_reduces_the_rest_grow(arch, names):
    stages = graphmorph.find_stages(graphmorph.capture(build(arch, widths=(4, 4, 4, 4)[: len(names)]),
                                                       torch.zeros(1, 3, 16, 16)))
    assert [s.blocks for s in stages] == names
    for stage in stages:
        first, *rest = stage.block_info
        assert first.reduces == (stage.index > 0)
        assert all(b.growable and not b.reduces for b in rest)


def test_seed_residual_and_plain_blocks_know_their_last_bn():
    gm = graphmorph.capture(build("Basic3ResNet-2-1-1", widths=(4, 8, 16)), torch.zeros(1, 3, 16, 16))
    info = blocks_by_name(gm)
    assert (info["layer1.1"].last_affine_module, info["layer1.1"].shortcut) == ("layer1.1.bn2", "identity")
    assert info["layer2.0"].shortcut_nodes == ("layer2_0_downsample_0", "layer2_0_downsample_1")
    plain = blocks_by_name(graphmorph.capture(build("Plain3Net-1-1-1"), torch.zeros(1, 3, 8, 8)))
    assert plain["layer3.0"].last_affine_module == "layer3.0.bn" and plain["layer3.0"].kind == "plain"


def test_dataflow_graph_keeps_only_tensor_paths():
    gm = captured("PreActResNet")
    graph = graphmorph.dataflow_graph(gm)
    names = {n.name for n in graph}
    assert "size" not in names  # x.size(0) is an int, not dataflow
    assert {"x", "output", "linear"} <= names
    assert all(n.op != "get_attr" for n in graph)
    assert set(graph.predecessors(next(n for n in graph if n.name == "add_2"))) == {
        next(n for n in graph if n.name == "layer2_0_conv2"),
        next(n for n in graph if n.name == "layer2_0_shortcut_0"),
    }


def test_analysis_needs_shapes():
    gm = fx.symbolic_trace(build("Plain3Net-1-1-1"))
    with pytest.raises(graphmorph.AnalysisError, match="graphmorph.capture"):
        graphmorph.find_stages(gm)


def test_analysis_restores_missing_shapes_from_the_captured_input():
    gm = graphmorph.capture(build("Plain3Net-1-1-2", widths=(2, 4, 8)), torch.zeros(1, 3, 8, 8))
    for node in gm.graph.nodes:
        node.meta.pop("tensor_meta", None)
        node.meta.pop("type", None)
    assert [s.blocks for s in graphmorph.find_stages(gm)] == [("layer1.0",), ("layer2.0",), ("layer3.0", "layer3.1")]
