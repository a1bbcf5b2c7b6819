"""A user's data factory, `--data package.module:factory`: a callable (taking `seed=` if it
wants one) that returns the splits as

- `(train, test)` or `(train, val, test)`, or a dict with keys `train`, `test` and optionally `val`
  and `num_classes`;
- each split a map-style `torch.utils.data.Dataset` of `(image, label)` pairs, an iterable of
  `(images, labels)` batches (a `DataLoader`), or a pair of tensors `(images, labels)`.

Each split is read once into memory (graphmorph's trainer draws its batches from tensors), so a
random transform in the user's pipeline is drawn once, not per epoch; the images are used as
given (the user's normalisation stands). Without `val`, graphmorph holds one out of `train`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from graphmorph.run.imports import import_callable

__all__ = ["Splits", "read_factory"]

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Splits:
    """The factory's data as tensors: images (N, C, H, W) float32, labels (N,) int64."""

    train: Pair
    val: Pair | None
    test: Pair
    num_classes: int | None


def read_factory(spec: str, seed: int, error: type[Exception]) -> Splits:
    """Call the data factory `spec` and read its splits as tensors; anything that cannot be read
    as images and labels raises `error` saying what was expected."""
    factory = import_callable(spec, "--data", error)
    takes_seed = "seed" in _parameters(factory)
    try:
        returned = factory(seed=seed) if takes_seed else factory()
    except Exception as err:
        raise error(f"--data {spec!r}: calling it raised {type(err).__name__}: {err}") from None
    splits, num_classes = _named_splits(returned, spec, error)
    tensors = {name: _tensors(split, f"--data {spec!r}: its {name} split", error)
               for name, split in splits.items() if split is not None}
    return Splits(tensors["train"], tensors.get("val"), tensors["test"], num_classes)


def _parameters(factory) -> dict[str, Any]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


def _named_splits(returned: Any, spec: str, error: type[Exception]) -> tuple[dict[str, Any], int | None]:
    expected = "(train, test), (train, val, test) or a dict with train, test and optionally val, num_classes"
    if isinstance(returned, dict):
        missing = {"train", "test"} - set(returned)
        unknown = set(returned) - {"train", "val", "test", "num_classes"}
        if missing or unknown:
            raise error(f"--data {spec!r} returned a dict with keys {sorted(returned)}; expected {expected}")
        classes = returned.get("num_classes")
        if classes is not None and (not isinstance(classes, int) or classes < 2):
            raise error(f"--data {spec!r}: num_classes must be an int of at least 2, got {classes!r}")
        return {"train": returned["train"], "val": returned.get("val"), "test": returned["test"]}, classes
    if isinstance(returned, (tuple, list)) and len(returned) in (2, 3):
        train, *val, test = returned
        return {"train": train, "val": val[0] if val else None, "test": test}, None
    raise error(f"--data {spec!r} returned a {type(returned).__name__}; expected {expected}")


def _tensors(split: Any, what: str, error: type[Exception]) -> Pair:
    """(images, labels) of one split as tensors: 3-D images, integer labels (`graphmorph.run.data`
    checks the rest for every source alike: counts, shapes across splits, label range)."""
    if isinstance(split, (tuple, list)) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split):
        images, labels = split
    elif hasattr(split, "__getitem__") and hasattr(split, "__len__"):
        images, labels = _stack((split[i] for i in range(len(split))), what, error, batched=False)
    elif isinstance(split, Iterable):
        images, labels = _stack(split, what, error, batched=True)
    else:
        raise error(f"{what} is a {type(split).__name__}; expected a Dataset, a DataLoader or (images, labels)")
    if images.dim() != 4:
        raise error(f"{what}: images must be C,H,W each (a batch of shape N,C,H,W), got a batch of shape "
                    f"{tuple(images.shape)}; add the channel axis (unsqueeze)")
    if not images.dtype.is_floating_point and images.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32,
                                                                   torch.int64):
        raise error(f"{what}: images must be numbers, got {images.dtype}")
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise error(f"{what}: labels must be {len(images)} integer class indices, got {labels.dtype} of shape "
                    f"{tuple(labels.shape)}")
    return images.float().contiguous(), labels.long()


def _stack(items: Iterable, what: str, error: type[Exception], batched: bool) -> Pair:
    images, labels = [], []
    for pair in items:
        if not (isinstance(pair, (tuple, list)) and len(pair) >= 2):
            raise error(f"{what} yields {type(pair).__name__}; expected (image, label) pairs")
        try:
            image, label = torch.as_tensor(pair[0]), torch.as_tensor(pair[1])
        except (TypeError, ValueError, RuntimeError):
            raise error(f"{what} yields ({type(pair[0]).__name__}, {type(pair[1]).__name__}); expected (image "
                        "tensor, integer label) pairs") from None
        images.append(image if batched else image.unsqueeze(0))
        labels.append(label.reshape(-1))
    if not images:
        raise error(f"{what} is empty")
    try:
        return torch.cat(images), torch.cat(labels)
    except RuntimeError as err:
        raise error(f"{what}: its images differ in shape ({err}); every image needs one C,H,W") from None
