"""The budget a run derives from its training set's size, and the estimate printed before it."""
import pytest
import torch

import graphmorph
from graphmorph.run.train import Trainer
from graphmorph.search import budget as budget_module
from graphmorph.search.autogrow import AutoGrowConfig
from graphmorph.search.budget import Budget, baseline_epochs, estimate


@pytest.mark.parametrize("n_train, epochs", [
    (1294, 16),      # the embedded digits: its plateau, 200 * (1294/50000)^0.69 = 16.1
    (50_000, 200),   # the paper's CIFAR schedule
    (54_000, 200),   # MNIST in full: at most the paper's
    (2_700, 27),     # MNIST at 5%: 200 * 0.054^0.69 = 26.7
    (10, 4),         # at least 4
])
def test_the_baseline_schedule_follows_the_power_law_through_its_anchors(n_train, epochs):
    assert baseline_epochs(n_train) == epochs


@pytest.mark.parametrize("settings, J, finetune", [
    ({}, 13, 27),                                       # periodic: half the baseline at the top LR
    ({"policy": "convergent", "K": 4}, 4, 27),          # convergent: J = K
    ({"J": 5, "finetune_epochs": 0}, 5, 0),             # given values stand
])
def test_J_and_finetuning_come_from_the_data_unless_given(settings, J, finetune):
    budget = AutoGrowConfig(**settings).budget(2_700)
    assert (budget.baseline_epochs, budget.J, budget.finetune_epochs) == (27, J, finetune)


def test_without_growth_the_estimate_is_the_timed_epoch_times_the_finetuning(monkeypatch):
    monkeypatch.setattr(budget_module, "step_seconds", lambda *args: 0.5)
    gm = graphmorph.capture(graphmorph.models.build("Basic3ResNet-1-1-1", in_channels=1, widths=(4, 4, 4)),
                            torch.zeros(1, 1, 8, 8))
    x, y = torch.zeros(300, 1, 8, 8), torch.zeros(300, dtype=torch.int64)
    trainer = Trainer(torch.device("cpu"), batch_size=100)
    plan = Budget(300, 4, 2, 7, None)
    found = estimate(gm, torch.zeros(1, 1, 8, 8), trainer, x, y, 150, plan, K=1, growing=[], max_depth=8)
    # 3 steps and half a step of evaluation (150 examples forward, a third of a step each 100) per epoch
    assert (found.growth_epochs, found.growths) == (0, 0)
    assert found.seconds == pytest.approx(7 * 0.5 * (3 + 150 / 100 / 3))
    grown = estimate(gm, torch.zeros(1, 1, 8, 8), trainer, x, y, 150, plan, K=1, growing=[0, 1, 2], max_depth=8)
    assert (grown.growth_epochs, grown.growths) == (8, 8) and grown.seconds > found.seconds * (1 + 8 / 7)   # 4J, a block an epoch
