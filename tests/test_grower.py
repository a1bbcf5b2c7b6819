"""graphmorph.AutoGrow, the controller a user's own loop calls once per epoch."""
import io
import re

import pytest
import torch

import graphmorph
from graphmorph import AutoGrow
from graphmorph.testing import assert_state_carried

# Accuracies reported after epochs 1..10, and what Algorithm 1 decides after each with K=1, J=2,
# tau=1 and one fine-tuning epoch, worked out by hand from the paper's rules (the metric is the
# running maximum; a grown stage stops when it rose by less than tau over the last J epochs).
ACCURACIES = [10, 20, 21, 21.5, 21.2, 21.4, 25, 25, 24, 26]
DECISIONS = [
    "grew stage 0 -> Basic3ResNet-2-1-1",
    "grew stage 1 -> Basic3ResNet-2-2-1",           # +20 over 2 epochs: stage 0 goes on
    "grew stage 2 -> Basic3ResNet-2-2-2",
    "grew stage 0 -> Basic3ResNet-3-2-2",           # 21.5 - 20 = 1.5 >= tau
    "stopped stage 0; grew stage 1 -> Basic3ResNet-3-3-2",   # 21.5 - 21 = 0.5 < tau
    "stopped stage 1; grew stage 2 -> Basic3ResNet-3-3-3",   # 21.5 - 21.5
    "grew stage 2 -> Basic3ResNet-3-3-4",           # the only stage left grows on
    "grew stage 2 -> Basic3ResNet-3-3-5",
    "stopped stage 2; found Basic3ResNet-3-3-5; fine-tuning 1 epochs",
    "",
]


def seed_model():
    torch.manual_seed(0)
    return graphmorph.models.build("Basic3ResNet-1-1-1", in_channels=1, widths=(4, 4, 4))


def grower_of(model, **options):
    return AutoGrow(model, torch.randn(2, 1, 8, 8), K=1, J=2, tau=1.0, finetune_epochs=1, seed=3, **options)


def blocks_per_stage(model):
    """Counted from the module names alone (layer{s}.{k}), independently of find_stages."""
    names = {m.group(0) for name, _ in model.named_parameters() if (m := re.match(r"layer\d\.\d+", name))}
    return [sum(name.startswith(f"layer{s}.") for name in names) for s in (1, 2, 3)]


def test_the_controller_makes_algorithm_1s_decisions_and_returns_each_grown_net():
    grower = grower_of(seed_model())
    decisions = []
    for accuracy in ACCURACIES:
        assert not grower.done
        previous = grower.model
        change = grower.epoch_end(accuracy)
        decisions.append(change.text())
        assert change.grew == ("grew" in change.text())
        if change.grew:
            assert change.model is grower.model and change.previous is previous
            assert_state_carried(previous, change.model, added=(graphmorph.history(change.model)[-1]["new_block"],))
        else:
            assert grower.model is previous
    assert decisions == DECISIONS
    assert grower.done and grower.state.found == "Basic3ResNet-3-3-5"
    assert blocks_per_stage(grower.model) == [3, 3, 5]
    assert [r["stage"] for r in graphmorph.history(grower.model)] == [0, 1, 2, 0, 1, 2, 2, 2]
    with pytest.raises(graphmorph.ConfigError, match="after the search is done"):
        grower.epoch_end(30)


def test_a_resumed_controller_continues_exactly_as_an_uninterrupted_one():
    model = seed_model()
    whole = grower_of(model)
    for accuracy in ACCURACIES:
        train(whole.model)
        whole.epoch_end(accuracy)

    first = grower_of(model)
    for accuracy in ACCURACIES[:5]:
        train(first.model)
        first.epoch_end(accuracy)
    saved = io.BytesIO()
    torch.save({"grower": first.state_dict(), "model": first.model.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=False)

    resumed = grower_of(model)
    resumed.load_state_dict(checkpoint["grower"])
    resumed.model.load_state_dict(checkpoint["model"])
    for accuracy in ACCURACIES[5:]:
        train(resumed.model)
        resumed.epoch_end(accuracy)
    assert resumed.state == whole.state and resumed.done
    assert graphmorph.history(resumed.model) == graphmorph.history(whole.model)
    whole_state = whole.model.state_dict()
    assert resumed.model.state_dict().keys() == whole_state.keys()
    assert all(torch.equal(v, whole_state[k]) for k, v in resumed.model.state_dict().items())
    assert torch.equal(resumed.generator.get_state(), whole.generator.get_state())


def train(model):
    """A stand-in for an epoch of the user's training: every weight changes, deterministically."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9).add_(0.01)


def test_the_grown_nets_optimizer_keeps_the_momentum_of_the_parameters_it_kept():
    grower = grower_of(seed_model())
    optimizer = torch.optim.SGD(grower.model.parameters(), lr=0.1, momentum=0.9)
    grower.model(torch.randn(4, 1, 8, 8)).sum().backward()
    optimizer.step()
    old = {name: optimizer.state[p]["momentum_buffer"].clone() for name, p in grower.model.named_parameters()}
    change = grower.epoch_end(10)
    rebuilt = change.optimizer(optimizer)
    new_block = graphmorph.history(change.model)[-1]["new_block"]
    for name, p in change.model.named_parameters():
        if name.startswith(new_block + "."):
            assert p not in rebuilt.state
        else:
            assert torch.equal(rebuilt.state[p]["momentum_buffer"], old[name])
    assert sum(len(g["params"]) for g in rebuilt.param_groups) == len(list(change.model.parameters()))


def test_stages_empty_fine_tunes_the_model_as_it_is():
    grower = grower_of(seed_model(), stages=[])
    model = grower.model
    assert grower.phase == "finetune" and not grower.epoch_end(50).grew and grower.done
    assert grower.model is model and grower.state.found is None


@pytest.mark.parametrize("options, message", [
    ({"policy": "periodic", "J": None}, "policy='periodic' needs J"),
    ({"policy": "sometimes"}, "policy must be one of periodic, convergent"),
    ({"init": "adam"}, "init='adam' trains the new block's last BatchNorm: pass data="),
    ({"stages": [0, 7]}, r"stages \[7\] do not exist: the model has 3 stage"),
    ({"tau": -1.0}, "tau must be 0 to 100 percentage points"),
    ({"tau": 200.0}, "tau must be 0 to 100 percentage points"),
])
def test_bad_settings_are_refused_with_the_fix(options, message):
    settings = {"K": 1, "J": 2, **options}
    with pytest.raises(graphmorph.ConfigError, match=message):
        AutoGrow(seed_model(), torch.randn(2, 1, 8, 8), **settings)


def test_a_model_without_example_input_is_refused():
    with pytest.raises(graphmorph.ConfigError, match="needs example_input"):
        AutoGrow(seed_model(), K=1, J=2)
