"""docs/lightning.md works as written: AutoGrowCallback grows the LightningModule's net during a
fit, keeps the trainer's optimizer on the grown net's parameters with their momentum, stops the fit
when the search is done, and a resumed fit continues from the saved architecture (Lightning's strict
weight loading into it is the check that the architecture matches)."""
import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import torch

import graphmorph

pytest.importorskip("lightning")

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "lightning.md"
FIT, RESUME = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    """Both of the guide's blocks, run in a folder of their own, each one's namespace after it."""
    folder, before = tmp_path_factory.mktemp("lightning"), os.getcwd()
    namespace: dict = {}
    seen = {}
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            exec(compile(FIT, str(GUIDE), "exec"), namespace)
            seen["fit"] = dict(namespace)
            exec(compile(RESUME, str(GUIDE), "exec"), namespace)
    finally:
        os.chdir(before)
    return seen["fit"], namespace


def test_the_callback_grows_the_modules_net_and_stops_the_fit_when_the_search_is_done(guide):
    fit, _ = guide
    grower, module, trainer = fit["grow"].grower, fit["module"], fit["trainer"]
    growths = graphmorph.history(grower.model)
    assert grower.done and len(growths) >= 1
    assert module.net is grower.model and graphmorph.models.arch_of(module.net) == grower.state.found
    assert trainer.current_epoch == grower.state.epoch < trainer.max_epochs     # stopped by the search
    assert grower.state.epoch - grower.state.finetune_start == 2                  # its fine-tuning epochs
    optimizer = trainer.optimizers[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.parameters()}                  # the grown net, no stale copy
    assert all("momentum_buffer" in optimizer.state[p] for p in module.parameters())


def test_the_logged_accuracy_reaches_the_search_as_percent(guide):
    fit, _ = guide
    grower, trainer = fit["grow"].grower, fit["trainer"]
    logged = float(trainer.callback_metrics["val_acc"])                           # the last epoch's
    assert grower.state.val_accuracy[-1] == pytest.approx(100 * logged, abs=1e-4)
    data, net = fit["data"], fit["module"].net.eval()
    with torch.no_grad():
        correct = (net(data.val_x).argmax(1) == data.val_y).sum().item()
    assert grower.state.val_accuracy[-1] == pytest.approx(100 * correct / len(data.val_y), abs=1e-4)


def test_a_resumed_fit_grows_from_the_saved_architecture_and_weights(guide):
    fit, resumed = guide
    first, again = resumed["first"].grower, resumed["resumed"].grower
    assert first.state.epoch == 3 and not first.done
    prefix = graphmorph.history(first.model)
    assert graphmorph.history(again.model)[: len(prefix)] == prefix                # continued, not restarted
    assert again.done and again.state.val_accuracy[:3] == first.state.val_accuracy
    assert resumed["resumed_module"].net is again.model
    assert resumed["again"].current_epoch == again.state.epoch      # Lightning's epochs and the search's agree
