"""Seed networks: names, shapes, parameter counts, FLOPs, and the errors for bad requests."""
import pytest
import torch
from hypothesis import given
from torch.utils.flop_counter import FlopCounterMode

import graphmorph
from graphmorph.models import FAMILIES, arch_of, build, parse_arch
from graphmorph.testing import seed_nets


def analytic_params(arch: str, widths, in_channels: int, num_classes: int, stem: str = "cifar") -> int:
    """Parameters of a seed net from its definition, counted by hand (independent of the code)."""
    cls, depths = parse_arch(arch)
    w0 = widths[0]
    total = (49 if stem == "imagenet" else 9) * in_channels * w0 + 2 * w0
    c = w0
    for i, (depth, w) in enumerate(zip(depths, widths)):
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            if cls.family.startswith("Basic"):
                out = w
                total += 9 * c * w + 9 * w * w + 4 * w
            elif cls.family.startswith("Bottleneck"):
                out = 4 * w
                total += c * w + 9 * w * w + w * out + 2 * w + 2 * w + 2 * out
            else:
                out = w
                total += 9 * c * w + 2 * w
            if not cls.family.startswith("Plain") and (stride != 1 or c != out):
                total += c * out + 2 * out  # projection shortcut
            c = out
    return total + c * num_classes + num_classes


@given(seed_nets())
def test_seed_nets_round_trip_shape_params_and_flops(spec):
    model = spec.build()
    x = spec.example_input(batch=2)
    assert arch_of(model) == spec.arch
    gm = graphmorph.capture(model, x)
    assert arch_of(gm) == spec.arch  # read back from the graph by find_stages
    assert gm(x).shape == (2, spec.num_classes)

    report = graphmorph.count_flops(gm, x)
    with FlopCounterMode(display=False) as counter:
        gm(x)
    assert report.flops == counter.get_total_flops()
    assert report.flops == 2 * report.macs

    expected = analytic_params(spec.arch, spec.widths, spec.in_channels, spec.num_classes)
    per_module = sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False))
    assert report.params == per_module == expected
    assert sum(c.params for c in report.by_stage.values()) == expected
    assert sum(c.macs for c in report.by_stage.values()) == report.macs


def test_resnet20_is_the_cifar_resnet():
    model = build("Basic3ResNet-3-3-3")
    report = graphmorph.count_flops(model, torch.zeros(1, 3, 32, 32))
    assert report.params == analytic_params("Basic3ResNet-3-3-3", (16, 32, 64), 3, 10) == 272_474
    assert 40e6 < report.macs < 42e6  # He et al.: about 41 M MACs
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)][:2] == [16, 16]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_builds_with_stable_names(family):
    stages = len(FAMILIES[family].default_widths)
    arch = f"{family}-" + "-".join(["2"] * stages)
    names = {name for name, _ in build(arch, widths=(4,) * stages).named_modules()}
    assert {"conv1", "bn1", "fc", "layer1.0", "layer1.1", f"layer{stages}.1"} <= names
    assert build(arch, widths=(4,) * stages).state_dict().keys() == build(arch, widths=(4,) * stages).state_dict().keys()


def test_imagenet_stem_quarters_the_input():
    model = build("Basic4ResNet-1-1-1-1", widths=(4, 8, 16, 32), stem="imagenet")
    gm = graphmorph.capture(model, torch.zeros(1, 3, 64, 64))
    assert [s.out_shape[1:] for s in graphmorph.find_stages(gm)] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert analytic_params("Basic4ResNet-1-1-1-1", (4, 8, 16, 32), 3, 10, "imagenet") == graphmorph.count_flops(gm).params


@pytest.mark.parametrize("arch", ["Basic3ResNet", "Basic5ResNet-1-1", "Basic3ResNet-1-1", "Plain4Net-1-0-1-1",
                                  "basic3resnet-1-1-1", "Plain3Net-1-1-1-", ""])
def test_bad_arch_strings_are_refused_with_the_valid_forms(arch):
    with pytest.raises(graphmorph.ArchError, match="valid forms: Basic3ResNet-N-N-N, Basic4ResNet-N-N-N-N"):
        build(arch)


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": (16, 32)}, "widths must be 3 positive integers"),
    ({"widths": (16, 0, 64)}, "widths must be 3 positive integers"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"in_channels": -1}, "in_channels must be a positive integer"),
    ({"stem": "tiny"}, "stem must be one of cifar, imagenet"),
])
def test_bad_build_options_are_refused(kwargs, message):
    with pytest.raises(graphmorph.ArchError, match=message):
        build("Basic3ResNet-1-1-1", **kwargs)


def test_arch_of_refuses_inputs_too_small_to_separate_stages():
    gm = graphmorph.capture(build("Plain4Net-1-1-1-1", widths=(2, 2, 2, 2)), torch.zeros(1, 3, 2, 2))
    with pytest.raises(graphmorph.ArchError, match="at least 8 pixels"):
        arch_of(gm)


def test_arch_of_names_user_models_by_class():
    from zoo import ProjectionResNet

    gm = graphmorph.capture(ProjectionResNet(), torch.zeros(1, 3, 16, 16))
    assert arch_of(gm) == "ProjectionResNet-2-2"
    with pytest.raises(graphmorph.ArchError, match="expects a seed network or a captured GraphModule"):
        arch_of(ProjectionResNet())
