"""capture: shapes in node.meta, the caller's model untouched, and clear errors with their fix."""
import inspect

import pytest
import torch
from torch import fx, nn

import graphmorph
import transforms
from graphmorph.graph.capture import example_inputs
from graphmorph.models import build


class DataDependentGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.conv(x)
        return x


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), DataDependentGate())
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.head(self.body(x))


class RootLoop(nn.Module):
    def forward(self, x):
        return x if x.max() > 0 else -x


def test_capture_annotates_every_tensor_node_with_its_shape():
    gm = graphmorph.capture(build("Basic3ResNet-1-1-1", widths=(4, 8, 16)), torch.zeros(2, 3, 16, 16))
    assert isinstance(gm, fx.GraphModule)
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if "tensor_meta" in n.meta}
    assert shapes["x"] == (2, 3, 16, 16)
    assert shapes["layer2_0_conv1"] == (2, 8, 8, 8)
    assert shapes["fc"] == (2, 10)
    assert [tuple(t.shape) for t in example_inputs(gm)] == [(2, 3, 16, 16)]


def test_capture_leaves_the_model_untouched():
    model = build("Plain3Net-1-1-1", widths=(4, 8, 16)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = graphmorph.capture(model, torch.randn(4, 3, 16, 16))
    assert model.training and gm.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    with torch.no_grad():
        gm.get_submodule("layer1.0.conv").weight.add_(1.0)
    assert torch.equal(model.layer1[0].conv.weight, before["layer1.0.conv.weight"])


def test_untraceable_submodule_names_its_path_cause_and_fix():
    with pytest.raises(graphmorph.CaptureError) as info:
        graphmorph.capture(GatedNet(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "module 'body.1' (DataDependentGate)" in message
    assert "test_capture.py" in message  # the user's own line
    assert "control flow" in message
    assert "leaf_modules=[DataDependentGate]" in message and "torch.fx.wrap" in message


@pytest.mark.parametrize("leaf", [DataDependentGate, "body.1"])
def test_leaf_modules_fix_untraceable_submodules(leaf):
    x = torch.randn(1, 3, 8, 8)
    model = GatedNet().eval()
    gm = graphmorph.capture(model, x, leaf_modules=[leaf])
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["body.0", "body.1", "head"]
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_untraceable_root_forward_is_reported_as_such():
    with pytest.raises(graphmorph.CaptureError, match=r"the model's own forward \(RootLoop\)"):
        graphmorph.capture(RootLoop(), torch.randn(1, 3))


def test_input_that_does_not_fit_names_the_node():
    with pytest.raises(graphmorph.ShapeError, match=r"\(1, 1, 8, 8\) does not fit the model at node 'conv1'.*3 channels"):
        graphmorph.capture(build("Basic3ResNet-1-1-1"), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("model, example, error", [
    ("not a model", torch.zeros(1), graphmorph.CaptureError),
    (nn.Identity(), [1, 2], graphmorph.ShapeError),
])
def test_wrong_argument_types_are_refused(model, example, error):
    with pytest.raises(error):
        graphmorph.capture(model, example)


def test_bad_leaf_module_entries_are_refused():
    with pytest.raises(graphmorph.CaptureError, match="leaf_modules entries must be"):
        graphmorph.capture(nn.Identity(), torch.zeros(1), leaf_modules=[3])


def test_untraceable_submodules_can_become_leaves_on_request():
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="fx cannot trace DataDependentGate: captured as leaf modules"):
        gm = graphmorph.capture(GatedNet(), x, untraceable="leaf")
    assert gm.meta["graphmorph.auto_leaves"] == ["DataDependentGate"]
    assert [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("body.1")] == ["body.1"]
    model = GatedNet()
    model.load_state_dict(gm.state_dict())
    assert torch.equal(gm(x), model(x))
    with pytest.raises(graphmorph.CaptureError, match="untraceable='leaf'"):
        graphmorph.capture(GatedNet(), x)
    with pytest.raises(graphmorph.CaptureError, match=r"the model's own forward \(RootLoop\)"):
        graphmorph.capture(RootLoop(), torch.randn(1, 3), untraceable="leaf")


class _StraightThrough(torch.autograd.Function):
    """sign in the forward, the identity in the backward: a straight-through estimator."""

    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _BinaryNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(_StraightThrough.apply(self.conv(x)).mean((2, 3)))


def test_a_custom_autograd_function_is_kept_whole_so_its_backward_still_trains():
    """Tracing inlined the Function's forward: sign's zero gradient replaced the estimator's (0.360 -> 0.0)."""
    torch.manual_seed(0)
    model, x = _BinaryNet(), torch.randn(3, 1, 6, 6)
    apply_before = inspect.getattr_static(torch.autograd.Function, "apply")
    gm = graphmorph.capture(model, x)
    assert inspect.getattr_static(torch.autograd.Function, "apply") is apply_before   # restored after tracing
    calls = [n for n in gm.graph.nodes if getattr(n.target, "autograd_function", None) is _StraightThrough]
    assert len(calls) == 1 and calls[0].op == "call_function"
    assert not any(n.target is torch.sign for n in gm.graph.nodes)
    model(x).square().sum().backward()
    gm(x).square().sum().backward()
    assert model.conv.weight.grad.norm() > 0
    assert torch.equal(gm.conv.weight.grad, model.conv.weight.grad)
    assert torch.equal(gm(x), model(x))
    with pytest.raises(graphmorph.RewriteError, match="has no channel handler"):
        transforms.prune_channels(gm, "conv", [0])   # opaque to the channel engine: refused, never changed
