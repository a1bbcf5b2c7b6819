"""PruneCallback drives graphmorph.Prune in a Lightning fit: the module's net is the pruned one, the
trainer's optimizer holds its parameters, each target is met within 2% (FlopCounterMode on the
module's net) and recorded with its monitored accuracy, and the fit stops after the last target's
fine-tuning; a fit stopped after its first point and resumed from its checkpoint ends with the
points and the net of one uninterrupted fit."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import graphmorph

lightning = pytest.importorskip("lightning")
from graphmorph.lightning import PruneCallback  # noqa: E402


class _Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = graphmorph.models.build("Basic3ResNet-1-1-1", num_classes=10, in_channels=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)


def _macs(net, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(x)
    return counter.get_total_flops() // 2


def test_the_callback_prunes_to_each_target_fine_tunes_and_stops():
    data = graphmorph.load_data("digits", seed=0, fraction=0.2)
    train = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(data.val_x, data.val_y), batch_size=256)
    torch.manual_seed(0)
    module = _Classifier()
    x = data.train_x[:1]
    unpruned = _macs(module.net, x)
    prune = PruneCallback(x, monitor="val_acc", targets=(0.7, 0.5), steps=1, finetune_epochs=1)
    trainer = lightning.Trainer(max_epochs=20, callbacks=[prune], accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train, val)
    assert trainer.current_epoch == 2 and prune.pruner.done            # 2 targets x 1 epoch each, then stop
    assert module.net is prune.pruner.model
    assert abs(_macs(module.net, x) / unpruned - 0.5) <= 0.02 * 0.5
    assert [(p.target, p.within) for p, _ in prune.points] == [(0.7, True), (0.5, True)]
    assert all(0.0 <= metric <= 1.0 for _, metric in prune.points)
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.parameters()}


def _fit(module, prune, train, val, max_epochs, folder=None, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    saving = [ModelCheckpoint(dirpath=folder, save_last=True, every_n_epochs=1)] if folder else []
    trainer = lightning.Trainer(max_epochs=max_epochs, callbacks=[prune, *saving], accelerator="cpu", logger=False,
                                enable_checkpointing=bool(folder), enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return trainer


def test_an_interrupted_fit_resumes_pruned_to_the_same_points(tmp_path):
    data = graphmorph.load_data("digits", seed=0, fraction=0.2)
    train = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=64)
    val = DataLoader(TensorDataset(data.val_x, data.val_y), batch_size=256)
    x, settings = data.train_x[:1], dict(monitor="val_acc", targets=(0.7, 0.5), steps=1, finetune_epochs=1)
    torch.manual_seed(0)
    whole = PruneCallback(x, **settings)
    _fit(_Classifier(), whole, train, val, max_epochs=20)
    torch.manual_seed(0)
    first = PruneCallback(x, **settings)
    _fit(_Classifier(), first, train, val, max_epochs=1, folder=tmp_path)     # stopped after the first point
    assert [p.target for p, _ in first.points] == [0.7] and not first.pruner.done
    checkpoint = tmp_path / "last.ckpt"
    module, resumed = _Classifier(), PruneCallback(x, resume_from=checkpoint, **settings)
    trainer = _fit(module, resumed, train, val, max_epochs=20, folder=tmp_path / "resumed", ckpt_path=checkpoint)
    assert trainer.current_epoch == 2 and resumed.pruner.done and module.net is resumed.pruner.model
    assert [(p.target, p.fraction) for p, _ in resumed.points] == [(p.target, p.fraction) for p, _ in whole.points]
    assert [m.shape for m in module.net.state_dict().values()] == \
        [m.shape for m in whole.pruner.model.state_dict().values()]
    torch.save({"callbacks": {}}, tmp_path / "other.ckpt")
    with pytest.raises(graphmorph.ConfigError, match=r"holds no PruneCallback\[net\] state"):
        _fit(_Classifier(), PruneCallback(x, resume_from=tmp_path / "other.ckpt", **settings), train, val, 1)
