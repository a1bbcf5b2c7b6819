"""EnvelopeNets: notation, shapes, dense scaled skips, wideners, FLOPs, ONNX, refusals."""
import pytest
import torch
from hypothesis import given, strategies as st
from torch.utils.flop_counter import FlopCounterMode

import graphmorph
from graphmorph.models import BRANCH_TYPES, arch_of, build, envelope_arch
from graphmorph.models.envelope import Widener


@st.composite
def envelope_nets(draw):
    width = draw(st.integers(2, 6))
    depths = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    branches = draw(st.integers(1, len(BRANCH_TYPES)))
    return f"EnvelopeNet-{width}/{'-'.join(map(str, depths))}/{branches}", width, depths, branches


@given(spec=envelope_nets(), size=st.integers(8, 16), in_channels=st.integers(1, 3))
def test_random_envelope_nets_are_shape_correct_and_read_back(spec, size, in_channels):
    arch, width, depths, branches = spec
    model = build(arch, num_classes=7, in_channels=in_channels)
    x = torch.randn(2, in_channels, size, size)
    gm = graphmorph.capture(model, x)
    assert gm(x).shape == (2, 7)
    assert arch_of(model) == arch_of(gm) == arch
    structure = envelope_arch(gm)
    assert [len(stage["cells"]) for stage in structure["stages"]] == depths
    for i, stage in enumerate(structure["stages"]):
        for k, cell in enumerate(stage["cells"]):
            assert cell["branches"] == list(BRANCH_TYPES[:branches])
            assert cell["skips"] == ["input", *(f"cell{j}" for j in range(k - 1))] if k else cell["skips"] == []
            channels = width * 2 ** i
            assert gm.get_submodule(f"stage{i}.cell{k}.{BRANCH_TYPES[0]}.0").in_channels == channels
        assert stage["output_skips"] == ["input", *(f"cell{j}" for j in range(len(stage["cells"]) - 1))]
    with FlopCounterMode(display=False) as counter:
        gm(x)
    assert graphmorph.count_flops(gm, x).flops == counter.get_total_flops()


def test_widener_halves_the_size_and_doubles_the_channels():
    assert Widener(5)(torch.randn(2, 5, 8, 8)).shape == (2, 10, 4, 4)


def test_skip_scalars_are_learned_and_scale_their_inputs():
    model = build("EnvelopeNet-4/2/2").eval()
    x = torch.randn(2, 3, 8, 8)
    reduce = model.stage0.reduce1
    assert reduce.skips == ["input"] and reduce.w_input.requires_grad
    with torch.no_grad():
        reduce.w_input.zero_()
        silenced = model(x)
        reduce.w_input.fill_(2.0)
        assert not torch.allclose(model(x), silenced)


def test_envelope_net_exports_with_parity(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    report = graphmorph.export_onnx(build("EnvelopeNet-4/1-2/3"), tmp_path / "env.onnx", x)
    assert report.max_abs_diff <= 1e-4


@pytest.mark.parametrize("arch, kwargs, message", [
    ("EnvelopeNet-8/2-2", {}, "not of the form EnvelopeNet-C/n1-n2-.../M"),
    ("EnvelopeNet-8/2-0/6", {}, "must be at least 1"),
    ("EnvelopeNet-8/2/7", {}, "asks for 7 branches per cell, but the branch set has 6"),
    ("EnvelopeNet-8/2/2", {"branches": ("conv3x3", "conv9x9")}, "unknown branch type 'conv9x9'"),
    ("EnvelopeNet-8/2/2", {"widths": (8,)}, "widths= and stem= apply to seed nets"),
    ("Basic3ResNet-1-1-1", {"branches": ("conv3x3",)}, "branches= applies to EnvelopeNets only"),
])
def test_bad_envelope_requests_are_refused(arch, kwargs, message):
    with pytest.raises(graphmorph.ArchError, match=message):
        build(arch, **kwargs)


def test_the_cli_counts_envelope_net_flops(capsys):
    from graphmorph.cli import main

    assert main(["flops", "EnvelopeNet-8/1-1/6", "--input-size", "16"]) == 0
    assert capsys.readouterr().out.startswith("EnvelopeNet-8/1-1/6  input 1x3x16x16")


def test_widener_keeps_both_halves_aligned_on_odd_sizes():
    assert Widener(3)(torch.randn(1, 3, 9, 9)).shape == (1, 6, 5, 5)  # found by the property test


@given(spec=envelope_nets(), data=st.data())
def test_the_declared_structure_follows_every_envelope_rewrite(spec, data):
    """The structure a captured EnvelopeNet declares, as its rewrites leave it, equals the one read
    from the modules of a fresh net built from it (an independent reading), and fits its weights."""
    import transforms
    from graphmorph.models import envelope_structure

    x = torch.randn(2, 1, 8, 8)
    gm = graphmorph.capture(build(spec[0], num_classes=3, in_channels=1), x)
    for _ in range(data.draw(st.integers(1, 4), label="rewrites")):
        structure = envelope_structure(gm)
        cells = [c for c in structure.cells if len(c.branches) > 1]
        choice = data.draw(st.sampled_from(["add_cell"] + ["branch"] * bool(cells) + ["skip"] * bool(structure.skips)))
        if choice == "add_cell":
            gm = transforms.add_cell(gm, data.draw(st.integers(0, len(structure.stages) - 1)),
                                     generator=torch.Generator().manual_seed(0))
        elif choice == "branch":
            cell = data.draw(st.sampled_from(cells))
            gm = transforms.prune_branches(gm, cell.name, [data.draw(st.sampled_from(cell.branches))])
        else:
            skip = data.draw(st.sampled_from(structure.skips))
            gm = transforms.prune_skips(gm, [(skip.reduction, skip.source)])
    declared = envelope_structure(gm)
    rebuilt = build(declared.to_dict(), num_classes=3, in_channels=1)
    assert envelope_structure(rebuilt) == declared
    rebuilt.load_state_dict(gm.state_dict())  # the same parameters, name for name and shape for shape
    assert graphmorph.history(gm) and torch.allclose(rebuilt.eval()(x), gm.eval()(x), atol=1e-5)


def test_a_rewrite_that_does_not_know_envelopenets_leaves_the_structure_unknown():
    from graphmorph.errors import ArchError
    from graphmorph.models import envelope_structure
    import transforms

    gm = graphmorph.capture(build("EnvelopeNet-4/1-1/2", num_classes=3, in_channels=1), torch.randn(2, 1, 8, 8))
    kept = transforms.prune_filters(gm, 0.3)
    assert envelope_structure(kept) == envelope_structure(gm)
    from graphmorph.graph import ops

    merge = next(n for n in gm.graph.nodes if ops.is_cat(n) and ops.module_path(n) == "stage0.reduce1")
    dropped = transforms.prune_skip_edges(gm, [(merge.name, merge.args[0][1].name)])  # the scaled input skip
    with pytest.raises(ArchError, match="no EnvelopeNet structure.*such as grow"):
        envelope_structure(dropped)
    with pytest.raises(graphmorph.RewriteError, match="no EnvelopeNet stage 0; the stages with cells are: none"):
        transforms.add_cell(dropped, 0)
