"""Training state survives growth: optimizer state carried by name, new parameters fresh."""
import copy

import pytest
import torch
import torch.nn.functional as F

import graphmorph
import transforms
from graphmorph.models import build


def trained(optimizer_class, **options):
    torch.manual_seed(0)
    model = build("Basic3ResNet-1-1-1", widths=(2, 4, 4)).double()
    gm = graphmorph.capture(model, torch.zeros(2, 3, 8, 8, dtype=torch.float64))
    optimizer = optimizer_class(gm.parameters(), **options)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(gm(torch.randn(4, 3, 8, 8, dtype=torch.float64)), torch.arange(4)).backward()
        optimizer.step()
    return gm, optimizer


@pytest.mark.parametrize("optimizer_class, options, keys", [
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}, ["momentum_buffer"]),
    (torch.optim.Adam, {"lr": 1e-3}, ["exp_avg", "exp_avg_sq", "step"]),
])
def test_surviving_state_is_carried_by_name_and_new_parameters_start_fresh(optimizer_class, options, keys):
    gm, optimizer = trained(optimizer_class, **options)
    grown = transforms.grow(gm, stage=1, init="zero")
    rebuilt = graphmorph.rebuild_optimizer(optimizer, gm, grown)
    old = dict(gm.named_parameters())
    for name, param in grown.named_parameters():
        if name in old:
            for key in keys:
                assert torch.equal(rebuilt.state[param][key], optimizer.state[old[name]][key]), (name, key)
                assert rebuilt.state[param][key] is not optimizer.state[old[name]][key]
        else:
            assert name.startswith("layer2.1.") and param not in rebuilt.state
    assert {id(p) for g in rebuilt.param_groups for p in g["params"]} == {id(p) for p in grown.parameters()}
    assert rebuilt.param_groups[0]["lr"] == options["lr"]


def test_one_step_on_the_zero_grown_net_equals_the_step_on_the_old_net():
    gm, optimizer = trained(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)
    grown = transforms.grow(gm, stage=2, init="zero")
    rebuilt = graphmorph.rebuild_optimizer(optimizer, gm, grown)
    batch, labels = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 2, 3, 4])
    shallow, shallow_opt = copy.deepcopy((gm, optimizer))
    for model, opt in ((shallow, shallow_opt), (grown, rebuilt)):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(batch), labels).backward()
        opt.step()
    stepped = dict(grown.named_parameters())
    for name, param in shallow.named_parameters():
        torch.testing.assert_close(stepped[name], param, rtol=0, atol=1e-12, msg=name)
    assert not torch.equal(stepped["layer3.1.bn2.weight"], torch.zeros_like(stepped["layer3.1.bn2.weight"]))


def test_parameter_groups_keep_their_hyper_parameters():
    gm, _ = trained(torch.optim.SGD, lr=0.1)
    heads = [p for n, p in gm.named_parameters() if n.startswith("fc.")]
    body = [p for n, p in gm.named_parameters() if not n.startswith("fc.")]
    optimizer = torch.optim.SGD([{"params": body}, {"params": heads, "lr": 0.01}], lr=0.1, momentum=0.9)
    grown = transforms.grow(gm, stage=0, init="gau")
    rebuilt = graphmorph.rebuild_optimizer(optimizer, gm, grown)
    names = {id(p): n for n, p in grown.named_parameters()}
    assert [g["lr"] for g in rebuilt.param_groups] == [0.1, 0.01]
    assert {names[id(p)] for p in rebuilt.param_groups[1]["params"]} == {"fc.weight", "fc.bias"}
    assert "layer1.1.conv1.weight" in {names[id(p)] for p in rebuilt.param_groups[0]["params"]}


def test_a_rebuilt_optimizers_state_loads_into_one_built_on_the_grown_net_afresh():
    """Lightning and plain torch restore optimizer state by index: the rebuilt optimizer must list
    the grown net's parameters in the net's own order (stage 0 grows in the middle of the list)."""
    gm, optimizer = trained(torch.optim.SGD, lr=0.1, momentum=0.9)
    grown = transforms.grow(gm, stage=0, init="zero")
    rebuilt = graphmorph.rebuild_optimizer(optimizer, gm, grown)
    assert [id(p) for p in rebuilt.param_groups[0]["params"]] == [id(p) for p in grown.parameters()]
    fresh = torch.optim.SGD(grown.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(rebuilt.state_dict())
    for param in grown.parameters():
        assert (param in fresh.state) == (param in rebuilt.state)
        if param in rebuilt.state:
            assert torch.equal(fresh.state[param]["momentum_buffer"], rebuilt.state[param]["momentum_buffer"])
