"""Data factories as a user would write them, for `--data user_data:...`: scikit-learn's digits as
torch Datasets, DataLoaders or tensors, and malformed ones."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset


def digits_tensors(seed: int = 0):
    """Digits as (images N,1,8,8 in [0, 1], labels), split 1000 / 297 / 500 in a fixed order."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    return (x[:1000], y[:1000]), (x[1000:1297], y[1000:1297]), (x[1297:], y[1297:])


def datasets():
    return tuple(TensorDataset(*pair) for pair in digits_tensors())


def loaders():
    return tuple(DataLoader(TensorDataset(*pair), batch_size=100) for pair in digits_tensors())


def train_and_test(seed):
    """No validation split (graphmorph holds one out); records the seed it was called with."""
    train_and_test.seen_seed = seed
    train, _, test = digits_tensors()
    return {"train": train, "test": test, "num_classes": 10}


def flat_images():
    return tuple((x.flatten(1), y) for x, y in digits_tensors())


def float_labels():
    return tuple((x, y.float()) for x, y in digits_tensors())


def a_number():
    return 3


def raises():
    raise FileNotFoundError("no such file: digits.npz")


def two_images():
    """A training set of two examples: one is held out for validation, one is left."""
    (x, y), _, test = digits_tensors()
    return (x[:2], y[:2]), test


def label_twelve_of_ten():
    (x, y), val, test = digits_tensors()
    return {"train": (x, torch.where(y == 3, 12, y)), "val": val, "test": test, "num_classes": 10}


def label_minus_one():
    (x, y), val, test = digits_tensors()
    return (x, torch.where(y == 3, -1, y)), val, test


def label_two_hundred():
    (x, y), val, test = digits_tensors()
    return (x, torch.where(y == 3, 200, y)), val, test


def strings():
    """A map-style dataset yielding strings where images belong."""
    return [("not an image", 1)] * 4, [("nor this", 0)] * 2


def nan_pixels():
    (x, y), val, test = digits_tensors()
    x = x.clone()
    x[5, 0, 3, 3] = float("nan")
    return (x, y), val, test
