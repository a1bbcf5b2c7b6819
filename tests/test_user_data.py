"""`--data package.module:factory`: a user's Datasets, DataLoaders or tensors become graphmorph's
splits exactly, for autogrow, nac and train; a malformed factory is one clear line and exit 2."""
import json

import pytest
import torch

import user_data
from graphmorph.cli import main
from graphmorph.run.data import DataError, load


def _permuted_train(seed, fraction=1.0):
    """The oracle for the kept training data: the factory's train split in the seeded order."""
    (x, y), _, _ = user_data.digits_tensors()
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: max(2, round(fraction * len(y)))]
    return x[keep], y[keep]


@pytest.mark.parametrize("factory", ["user_data:datasets", "user_data:loaders"])
def test_datasets_and_loaders_become_the_same_splits_as_given(factory):
    data = load(factory, fraction=0.5, seed=3)
    (_, _), (val_x, val_y), (test_x, test_y) = user_data.digits_tensors()
    train_x, train_y = _permuted_train(3, fraction=0.5)
    assert torch.equal(data.train_x, train_x) and torch.equal(data.train_y, train_y)    # not normalised
    assert torch.equal(data.val_x, val_x) and torch.equal(data.val_y, val_y)            # the user's val, whole
    assert torch.equal(data.test_x, test_x) and torch.equal(data.test_y, test_y)
    assert (data.num_classes, data.input_shape, data.augment) == (10, (1, 8, 8), False)
    assert data.train_y.dtype == torch.int64 and data.train_x.dtype == torch.float32


def test_without_a_validation_split_one_is_held_out_of_train_and_the_seed_is_passed():
    data = load("user_data:train_and_test", val_fraction=0.2, seed=5)
    assert user_data.train_and_test.seen_seed == 5
    train_x, train_y = _permuted_train(5)
    assert torch.equal(data.val_x, train_x[:200]) and torch.equal(data.train_x, train_x[200:])
    assert torch.equal(data.val_y, train_y[:200]) and torch.equal(data.train_y, train_y[200:])


@pytest.mark.parametrize("factory, message", [
    ("user_data:flat_images", "images must be C,H,W each (a batch of shape N,C,H,W), got a batch of shape (1000, 64)"),
    ("user_data:float_labels", "labels must be 1000 integer class indices, got torch.float32"),
    ("user_data:a_number", "returned a int; expected (train, test), (train, val, test) or a dict"),
    ("user_data:raises", "calling it raised FileNotFoundError: no such file: digits.npz"),
    ("user_data:missing", "'user_data' has no 'missing'"),
    ("no_such_module_here:make", "cannot import 'no_such_module_here'"),
])
def test_a_malformed_factory_is_a_data_error_naming_it(factory, message):
    with pytest.raises(DataError, match=None) as caught:
        load(factory)
    assert message in str(caught.value) and factory in str(caught.value)


def test_the_command_line_refuses_a_malformed_factory_in_one_line_with_exit_2(refused, tmp_path):
    code, err = refused(["train", "Basic3ResNet-1-1-1", "--data", "user_data:flat_images", "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "images must be C,H,W each" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["train", "Basic3ResNet-1-1-1", "--widths", "4,4,4", "--epochs", "1"],
    ["autogrow", "--seed-net", "Basic3ResNet", "--widths", "4,4,4", "--K", "1", "--J", "1", "--max-growth-epochs", "2",
     "--finetune-epochs", "1"],
    ["nac", "--base", "EnvelopeNet-4/1-1/3", "--iterations", "1", "--steps", "4", "--epochs", "1"],
])
def test_autogrow_nac_and_train_run_on_a_users_loaders(tmp_path, capsys, argv):
    where = tmp_path / "run"
    assert main([*argv, "--data", "user_data:loaders", "--batch-size", "64", "--run-dir", str(where)]) == 0
    config = json.loads((where / "config.json").read_text())
    result = json.loads((where / "result.json").read_text())
    assert config["data"] == "user_data:loaders"
    _, _, (test_x, test_y) = user_data.digits_tensors()
    assert result["test_acc"] is not None and 0 <= result["test_acc"] <= 100
    # the test accuracy is scored on the factory's 500 test images: a multiple of 100/500
    assert abs(result["test_acc"] * len(test_y) / 100 - round(result["test_acc"] * len(test_y) / 100)) < 1e-6
