"""Refusals are values: the sentence users read, and the nodes that caused it, from the channel
analysis through a rewrite's check to the RewriteError it raises."""
import copy
import pickle

import pytest
import torch
from torch import nn

import graphmorph
from graphmorph.graph.channels import channel_dependencies
import transforms
from graphmorph import Refusal


def shuffled():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(2, 4, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return graphmorph.capture(net, torch.zeros(1, 3, 8, 8))


def test_a_refused_group_names_the_node_that_refuses_it():
    gm = shuffled()
    group = channel_dependencies(gm).group_of("0")
    assert isinstance(group.refused, Refusal) and not group.prunable
    assert "moves channels into space" in group.refused                   # the text, as before
    shuffle = next(n.name for n in gm.graph.nodes if n.op == "call_module" and n.target == "1")
    assert shuffle in group.refused.nodes


def test_a_rewrite_error_carries_the_refusal_of_its_check():
    gm = shuffled()
    with pytest.raises(graphmorph.RewriteError, match="cannot prune channels of 0: .* moves channels into space") as err:
        transforms.prune_channels(gm, "0", [0])
    group = channel_dependencies(gm).group_of("0")
    assert err.value.refusal.nodes == group.refused.nodes and str(err.value) == str(err.value.refusal)
    refusal = transforms.PruneChannels("0", (0,)).refusal(gm)
    assert isinstance(refusal, Refusal) and refusal.nodes == group.refused.nodes


def test_a_check_that_returns_text_gives_a_refusal_naming_no_nodes():
    gm = graphmorph.capture(graphmorph.models.build("Basic3ResNet-1-1-1", num_classes=4, in_channels=1),
                            torch.randn(2, 1, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match="no block named 'layer9'") as err:
        transforms.remove_block(gm, "layer9")
    assert isinstance(err.value.refusal, Refusal) and err.value.refusal.nodes == ()


def test_a_refusal_survives_pickling_and_copying():
    refusal = Refusal("conv2 mixes channels", ["conv2", "conv2"])
    assert refusal.nodes == ("conv2",)
    for copied in (pickle.loads(pickle.dumps(refusal)), copy.deepcopy(refusal)):
        assert copied == "conv2 mixes channels" and copied.nodes == ("conv2",) and isinstance(copied, Refusal)
