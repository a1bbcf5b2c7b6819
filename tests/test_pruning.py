"""EnvelopeNet pruning: pruning equals masking (float64, eval and train), refusals, replay."""
import copy

import pytest
import torch
from hypothesis import given, strategies as st

import graphmorph
import transforms
from graphmorph.graph.history import history
from graphmorph.models import build, envelope_arch
from graphmorph.testing import assert_prune_equals_mask, assert_valid_rewrite, envelope_nets
from graphmorph.graph.verify import parameter_count


@st.composite
def envelope_graphs(draw):
    spec = draw(envelope_nets(min_branches=2, min_size=8, max_size=8))
    x = spec.example_input(batch=3, seed=draw(st.integers(0, 9)))
    return graphmorph.capture(spec.build(), x), x


def branch_mask(cell, names):
    """Zero the last BatchNorm's scale and shift of each named branch: the branch outputs zeros."""
    def mask(model):
        for name in names:
            bn = [m for m in model.get_submodule(f"{cell}.{name}").modules() if isinstance(m, torch.nn.BatchNorm2d)]
            bn[-1].weight.zero_()
            bn[-1].bias.zero_()
    return mask


@given(graph=envelope_graphs(), data=st.data())
def test_pruning_branches_equals_masking_them(graph, data):
    gm, x = graph
    cells = [c for s in envelope_arch(gm)["stages"] for c in s["cells"]]
    cell = data.draw(st.sampled_from(cells))
    names = data.draw(st.lists(st.sampled_from(cell["branches"]), min_size=1, max_size=len(cell["branches"]) - 1,
                               unique=True))
    pruned = transforms.prune_branches(gm, cell["name"], names)
    assert_prune_equals_mask(gm, pruned, branch_mask(cell["name"], names), x, modes=("eval", "train"))
    after = {c["name"]: c["branches"] for s in envelope_arch(pruned)["stages"] for c in s["cells"]}
    assert after[cell["name"]] == [b for b in cell["branches"] if b not in names]
    removed = sum(p.numel() for n in names for p in gm.get_submodule(f"{cell['name']}.{n}").parameters())
    assert parameter_count(gm) - parameter_count(pruned) >= removed  # the branches, and the readers' channels


@given(graph=envelope_graphs(), data=st.data())
def test_pruning_skips_equals_zeroing_their_scalars(graph, data):
    gm, x = graph
    skips = [(n.target.rpartition(".w_")[0], n.target.rpartition(".w_")[2])
             for n in gm.graph.nodes if n.op == "get_attr" and ".w_" in str(n.target)]
    chosen = data.draw(st.lists(st.sampled_from(skips), min_size=1, max_size=len(skips), unique=True))
    pruned = transforms.prune_skips(gm, chosen)

    def zero_skip_weights(model):
        for reduce, source in chosen:
            getattr(model.get_submodule(reduce), f"w_{source}").zero_()

    assert_prune_equals_mask(gm, pruned, zero_skip_weights, x, modes=("eval", "train"))
    remaining = {(n.target.rpartition(".w_")[0], n.target.rpartition(".w_")[2])
                 for n in pruned.graph.nodes if n.op == "get_attr" and ".w_" in str(n.target)}
    assert remaining == set(skips) - set(chosen)


def test_pruned_graphs_are_structurally_valid_replay_and_export(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    gm = graphmorph.capture(build("EnvelopeNet-4/2-2/4"), x)
    fresh = copy.deepcopy(gm)
    pruned = transforms.prune_branches(gm, "stage1.cell0", ["conv3x3", 0])
    pruned = transforms.prune_skips(pruned, [("stage1.reduce2", "input")])
    assert [r["rewrite"] for r in history(pruned)] == ["prune_branches", "prune_skips"]
    assert history(pruned)[0]["branches"] == ["conv1x1", "conv3x3"]
    replayed = transforms.replay(fresh, history(pruned))
    assert envelope_arch(replayed) == envelope_arch(pruned)
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in replayed.state_dict().items())
    reference = transforms.prune_branches(gm, "stage1.cell0", ["conv3x3", "conv1x1"])
    delta = parameter_count(reference) - parameter_count(gm)
    assert delta < 0
    assert_valid_rewrite(gm, reference, x, param_delta=delta)
    assert graphmorph.export_onnx(pruned, tmp_path / "pruned.onnx", x).max_abs_diff <= 1e-4


@pytest.mark.parametrize("call, message", [
    (lambda gm: transforms.prune_branches(gm, "stage0.cell0", [7]), r"has branches 0..2 \(conv1x1, conv3x3, sep3x3\); there is no branch 7"),
    (lambda gm: transforms.prune_branches(gm, "stage0.cell0", ["conv9x9"]), "has no branch 'conv9x9'"),
    (lambda gm: transforms.prune_branches(gm, "stage0.cell0", [0, 1, 2]), "cannot prune every branch of cell 'stage0.cell0'"),
    (lambda gm: transforms.prune_branches(gm, "stage3.cell0", [0]), "no cell named 'stage3.cell0'; the cells are: stage0.cell0"),
    (lambda gm: transforms.prune_skips(gm, [("stage0.reduce1", "cell5")]), r"no skip \('stage0.reduce1', 'cell5'\); the skips are"),
])
def test_bad_pruning_requests_are_refused(call, message):
    gm = graphmorph.capture(build("EnvelopeNet-2/2/3"), torch.zeros(1, 3, 8, 8))
    with pytest.raises(graphmorph.RewriteError, match=message):
        call(gm)
