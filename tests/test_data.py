"""Datasets from their standard file formats (written small by the tests), and clear errors."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from graphmorph.run.data import DataError, load

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_digits_is_embedded_split_and_normalised():
    data = load("digits", val_fraction=0.1, seed=0)
    total = len(data.train_y) + len(data.val_y) + len(data.test_y)
    assert total == 1797 and len(data.test_y) == 1797 // 5
    assert len(data.val_y) == round(0.1 * (1797 - 1797 // 5))
    assert data.train_x.shape[1:] == (1, 8, 8) and data.num_classes == 10
    assert abs(float(data.train_x.mean())) < 1e-4 and abs(float(data.train_x.std()) - 1) < 0.05
    again = load("digits", val_fraction=0.1, seed=0)
    assert torch.equal(again.val_y, data.val_y) and torch.equal(again.test_y, data.test_y)
    other = load("digits", val_fraction=0.1, seed=1)
    assert not torch.equal(other.val_y, data.val_y) and torch.equal(other.test_y, data.test_y)


def test_fraction_keeps_a_share_of_the_training_data():
    half = load("digits", fraction=0.5)
    full = load("digits")
    assert abs((len(half.train_y) + len(half.val_y)) * 2 - (len(full.train_y) + len(full.val_y))) <= 2
    assert len(half.test_y) == len(full.test_y)


def write_idx(folder: Path, n: int = 12) -> None:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, count) + labels.tobytes())


def test_idx_files_load(tmp_path):
    write_idx(tmp_path)
    data = load(f"fashion-mnist:{tmp_path}", val_fraction=0.25)
    assert data.train_x.shape == (9, 1, 28, 28) and data.test_x.shape == (6, 1, 28, 28)
    assert not data.augment


def test_malformed_idx_names_the_file(tmp_path):
    write_idx(tmp_path)
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x09\x01garbage")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz is not a valid gzip IDX file"):
        load(f"mnist:{tmp_path}")


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST copy not present")
def test_the_real_mnist_files_load():
    data = load(f"mnist:{SHARED / 'mnist'}")
    assert len(data.train_y) + len(data.val_y) == 60000 and len(data.test_y) == 10000
    assert torch.bincount(data.test_y).tolist()[:3] == [980, 1135, 1032]


def write_cifar(folder: Path, files, label_key: bytes, n: int = 6) -> None:
    rng = np.random.default_rng(1)
    for name in files:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_and_cifar100_pickles_load(tmp_path):
    ten, hundred = tmp_path / "c10", tmp_path / "c100"
    ten.mkdir(), hundred.mkdir()
    write_cifar(ten, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels")
    write_cifar(hundred, ["train", "test"], b"fine_labels")
    c10 = load(f"cifar10:{ten}", val_fraction=0.2)
    assert c10.train_x.shape == (24, 3, 32, 32) and len(c10.test_y) == 6 and c10.augment
    c100 = load(f"cifar100:{hundred}", val_fraction=0.5)
    assert c100.train_x.shape == (3, 3, 32, 32)


def test_svhn_mat_files_load_and_map_label_ten_to_zero(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    for name, n in (("train_32x32.mat", 8), ("test_32x32.mat", 4)):
        labels = np.full((n, 1), 10, dtype=np.uint8)
        labels[::2] = 3
        savemat(tmp_path / name, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": labels})
    data = load(f"svhn:{tmp_path}", val_fraction=0.25)
    assert data.train_x.shape == (6, 3, 32, 32) and set(data.test_y.tolist()) == {0, 3}


def test_class_folders_load_and_mixed_sizes_are_refused(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    data = load(f"folder:{tmp_path}", val_fraction=0.25)
    assert data.num_classes == 2 and data.train_x.shape[1:] == (3, 10, 10) and len(data.test_y) == 2
    Image.new("RGB", (12, 10)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(DataError, match="images differ in size"):
        load(f"folder:{tmp_path}")


@pytest.mark.parametrize("spec, message", [
    ("imagenet", "unknown dataset 'imagenet'; choose one of digits, mnist"),
    ("mnist", "mnist is read from files: pass --data mnist:DIR"),
    ("cifar10:{tmp}", r"lacks data_batch_1, .*test_batch; expected data_batch_1"),
    ("svhn:{tmp}", "lacks train_32x32.mat, test_32x32.mat"),
    ("mnist:{tmp}/nowhere", "does not exist"),
    ("folder:{tmp}", "expected one folder per class"),
])
def test_missing_or_unknown_data_is_one_clear_error(tmp_path, spec, message):
    with pytest.raises(DataError, match=message):
        load(spec.format(tmp=tmp_path))
