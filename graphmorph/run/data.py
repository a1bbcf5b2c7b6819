"""Image-classification datasets read from standard files (never downloaded), split for AutoGrow.

`load("digits")` needs no files (scikit-learn's 8x8 digits). Others read a folder the user names,
`load("mnist:DIR")`:

| name | files in DIR |
|---|---|
| mnist, fashion-mnist | train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (gzip IDX) |
| cifar10 | data_batch_1 .. data_batch_5, test_batch (python pickles) |
| cifar100 | train, test (python pickles) |
| svhn | train_32x32.mat, test_32x32.mat (MATLAB) |
| folder | train/CLASS/*.png|jpg and test/CLASS/*, or CLASS/* (a seeded 20% becomes the test set) |

Or a data factory of the user's, `load("package.module:factory")` (see `graphmorph.run.user_data`).

Growth and stopping decisions use a validation split held out from the training data (seeded);
the test set is only scored. Every split is checked before anything is trained or written: as many
labels as images, one image shape, finite pixels, labels that are class indices with every class
present somewhere, at least two classes and enough examples to train and validate on. CIFAR's
pickles are read by an unpickler that builds only what the official files hold (dicts, lists,
bytes and numpy arrays), so a crafted pickle runs no code.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from graphmorph.errors import GraphmorphError
from graphmorph.run.imports import is_factory
from graphmorph.run.user_data import Splits, read_factory

__all__ = ["DataError", "Dataset", "DATASETS", "load", "data_factory"]

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


class DataError(GraphmorphError, ValueError):
    """A dataset name, folder or file is missing or not in the expected format."""


@dataclass
class Dataset:
    """Normalised float32 images (N, C, H, W) and int64 labels for train, validation and test."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: bool            # random crop + flip suits natural images (CIFAR, folders)
    mean: tuple[float, ...] | None = None   # per channel, subtracted from the raw images (built-in data)
    std: tuple[float, ...] | None = None    # per channel, divided into them after

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """{"mean": [...], "std": [...]} per channel, applied to raw images (built-in data: pixels in
        [0, 1]) before the net sees them; None for a factory's data, used as given."""
        return None if self.mean is None else {"mean": list(self.mean), "std": list(self.std)}

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C, H, W of one example."""
        return tuple(self.train_x.shape[1:])


def data_factory(spec: str) -> str | None:
    """`spec` when it names a user's data factory (code to import), else None (built-in data)."""
    return spec if is_factory(spec) and spec.partition(":")[0] not in DATASETS else None


def load(spec: str, val_fraction: float = 0.1, fraction: float = 1.0, seed: int = 0) -> Dataset:
    """Load `NAME`, `NAME:DIR` or a data factory `package.module:factory`
    (`graphmorph.run.user_data`); keep `fraction` of the training data (the dataset-size study) and,
    unless the factory gives a validation split, hold out `val_fraction` of what remains for
    validation, both seeded with `seed`. Built-in data is normalised by the training split's
    per-channel mean and std; a factory's is used as given."""
    if not 0 < fraction <= 1:
        raise DataError(f"--fraction must be in (0, 1], got {fraction}")
    if not 0 < val_fraction < 1:
        raise DataError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    name, _, folder = spec.partition(":")
    built_in = name in DATASETS
    if built_in:
        splits, augment = _built_in(name, folder), DATASETS[name][2]
    elif is_factory(spec):
        splits, augment, name = read_factory(spec, seed, DataError), False, spec
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} (NAME or NAME:DIR), "
                        "or name your own: package.module:factory")
    classes = _checked_classes(splits, spec)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = splits.train
    available = len(train_y)
    keep = torch.randperm(len(train_y), generator=generator)[: max(2, round(fraction * len(train_y)))]
    train_x, train_y = train_x[keep], train_y[keep]
    if splits.val is None:
        n_val = max(1, round(val_fraction * len(train_y)))
        (train_x, val_x), (train_y, val_y) = (train_x[n_val:], train_x[:n_val]), (train_y[n_val:], train_y[:n_val])
    else:
        val_x, val_y = splits.val
    test_x, test_y = splits.test
    _check_enough(train_y, available, fraction, spec)
    mean = std = None
    if built_in:   # normalised by the training split
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        train_x, val_x, test_x = (((x - mean) / std).contiguous() for x in (train_x, val_x, test_x))
        mean, std = tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())
    return Dataset(name, train_x, train_y, val_x, val_y, test_x, test_y, classes, augment, mean, std)


MIN_TRAIN = 2   # BatchNorm trains on two examples at least


def _checked_classes(splits: Splits, spec: str) -> int:
    """The number of classes, once every split is checked: as many labels as images, one image
    shape, finite pixels, labels in 0..classes-1 with each class present in some split."""
    parts = {"training": splits.train, "validation": splits.val, "test": splits.test}
    parts = {name: pair for name, pair in parts.items() if pair is not None}
    for name, (x, y) in parts.items():
        if len(x) != len(y):
            raise DataError(f"{spec}: the {name} split has {len(x)} images but {len(y)} labels; each image needs "
                            "one label")
        if len(y) == 0:
            raise DataError(f"{spec}: the {name} split is empty")
        if x.dim() != 4:
            raise DataError(f"{spec}: the {name} images have shape {tuple(x.shape)}; expected N,C,H,W")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{spec}: the {name} images hold NaN or infinite values")
    shapes = {name: tuple(x.shape[1:]) for name, (x, _) in parts.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in shapes.items())
        raise DataError(f"{spec}: the splits' images differ in shape ({listed}); every split needs one C,H,W")
    labels = torch.cat([y for _, y in parts.values()])
    lowest, highest = int(labels.min()), int(labels.max())
    if lowest < 0:
        raise DataError(f"{spec}: a label is {lowest}; labels are class indices 0, 1, ..., classes-1")
    classes = splits.num_classes or highest + 1
    if highest >= classes:
        raise DataError(f"{spec}: a label is {highest}, but the data has {classes} classes: labels must be below it")
    present = torch.unique(labels)
    if splits.num_classes is None and len(present) < classes:
        missing = sorted(set(range(classes)) - set(present.tolist()))
        raise DataError(f"{spec}: labels run up to {highest} but {len(missing)} of the classes 0..{highest} have no "
                        f"example (first {missing[0]}); number the {len(present)} classes 0..{len(present) - 1}, or "
                        "return num_classes from the factory")
    training = torch.unique(splits.train[1])
    if len(training) < 2:
        raise DataError(f"{spec}: the training split holds a single class ({int(training[0])}); a classifier needs "
                        "two at least")
    return classes


def _check_enough(train_y: torch.Tensor, available: int, fraction: float, spec: str) -> None:
    """Refuse a training split too small to train on once the validation split is held out."""
    if len(train_y) < MIN_TRAIN:
        raise DataError(f"{spec}: {len(train_y)} training example(s) remain of {available} (--fraction {fraction:g}, "
                        f"less the validation split); training needs {MIN_TRAIN} at least: raise --fraction")


def _built_in(name: str, folder: str) -> Splits:
    reader, needs_folder, _ = DATASETS[name]
    if needs_folder and not folder:
        raise DataError(f"{name} is read from files: pass --data {name}:DIR (graphmorph never downloads)")
    if folder and not Path(folder).is_dir():
        raise DataError(f"{name}: folder {folder} does not exist")
    train_x, train_y, test_x, test_y = reader(Path(folder)) if needs_folder else reader()
    return Splits((train_x, train_y), None, (test_x, test_y), CLASSES.get(name))


# --------------------------------------------------------------------------- readers


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(2024))  # a fixed test split
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    return x[train], y[train], x[test], y[test]


def _idx(folder: Path):
    paths = _require(folder, "mnist/fashion-mnist", IDX_FILES, "gzip IDX")
    train_x, train_y, test_x, test_y = (_read_idx(p, dims) for p, dims in zip(paths, (3, 1, 3, 1)))
    return _images(train_x), torch.from_numpy(train_y.astype(np.int64)), _images(test_x), torch.from_numpy(test_y.astype(np.int64))


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """An unsigned-byte IDX array of `expected_dims` dimensions (3: images, 1: labels)."""
    what = "images (3 dimensions)" if expected_dims == 3 else "labels (1 dimension)"
    try:
        raw = gzip.open(path).read()
        if len(raw) < 4:
            raise ValueError(f"it holds {len(raw)} bytes, not even a header")
        magic = struct.unpack(">I", raw[:4])[0]
        dims = magic & 0xFF
        if magic >> 8 != 0x08 or dims not in (1, 3):
            raise ValueError(f"magic number {magic:#x} is not an unsigned-byte IDX file")
        if dims != expected_dims:
            raise ValueError(f"it holds {dims}-dimensional data where {what} belong; are two files swapped?")
        shape = struct.unpack(">" + "I" * dims, raw[4: 4 + 4 * dims])
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as err:
        raise DataError(f"{path} is not a valid gzip IDX file of {what}: {err}") from None


def _cifar(folder: Path, files: tuple[str, ...], label_key: bytes):
    paths = _require(folder, "cifar", files, "python pickles of the official release")
    parts = [_unpickle(p) for p in paths]
    try:
        xs = [np.asarray(p[b"data"], np.uint8).reshape(-1, 3, 32, 32) for p in parts]
        ys = [np.asarray(p[label_key], np.int64) for p in parts]
    except (KeyError, ValueError) as err:
        raise DataError(f"{folder}: CIFAR pickles lack {err} or have the wrong size") from err
    return (torch.from_numpy(np.concatenate(xs[:-1])).float() / 255, torch.from_numpy(np.concatenate(ys[:-1])),
            torch.from_numpy(xs[-1]).float() / 255, torch.from_numpy(ys[-1]))


class _CifarUnpickler(pickle.Unpickler):
    """Builds what CIFAR's official pickles hold (dicts, lists, bytes, numpy arrays) and nothing else."""

    ALLOWED = {(f"numpy{core}.multiarray", name) for core in (".core", "._core") for name in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which CIFAR's files never hold; "
                                         "graphmorph refuses to build it")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            loaded = _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is not a CIFAR python pickle: {err}") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path} is not a CIFAR python pickle: it holds a {type(loaded).__name__}, not a dict")
    return loaded


def _svhn(folder: Path):
    from scipy.io import loadmat

    paths = _require(folder, "svhn", SVHN_FILES, "MATLAB .mat with X (32x32x3xN) and y")
    out = []
    for path in paths:
        try:
            mat = loadmat(path)
            x = torch.from_numpy(np.transpose(mat["X"], (3, 2, 0, 1)).copy()).float() / 255
            y = torch.from_numpy(mat["y"].reshape(-1).astype(np.int64) % 10)  # SVHN labels 0 as 10
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"{path} is not an SVHN .mat file: {err}") from err
        out += [x, y]
    return tuple(out)


def _folder(folder: Path):
    from PIL import Image

    def read(root: Path, classes: list[str]):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for path in sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                try:
                    with Image.open(path) as image:
                        xs.append(np.asarray(image.convert("RGB"), np.uint8))
                except OSError as err:
                    raise DataError(f"{path} is not a readable image: {err}") from err
                ys.append(label)
        if not xs:
            raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders")
        if len({x.shape for x in xs}) != 1:
            raise DataError(f"{root}: images differ in size; resize them to one size first")
        return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255, torch.tensor(ys)

    split = (folder / "train").is_dir() and (folder / "test").is_dir()
    root = folder / "train" if split else folder
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder}: expected one folder per class (CLASS/*.png), or train/CLASS and test/CLASS")
    x, y = read(root, classes)
    if split:
        test_x, test_y = read(folder / "test", classes)
        return x, y, test_x, test_y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(2024))
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    return x[train], y[train], x[test], y[test]


def _require(folder: Path, name: str, files: tuple[str, ...], kind: str) -> list[Path]:
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{name}: {folder} lacks {', '.join(missing)}; expected {', '.join(files)} ({kind})")
    return [folder / f for f in files]


def _images(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).float().unsqueeze(1) / 255


# the classes of each standard dataset (a folder tree has one per folder)
CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}

# name -> (reader, reads a folder, augment with random crop + flip)
DATASETS = {
    "digits": (_digits, False, False),
    "mnist": (_idx, True, False),
    "fashion-mnist": (_idx, True, False),
    "cifar10": (lambda folder: _cifar(folder, CIFAR10_FILES, b"labels"), True, True),
    "cifar100": (lambda folder: _cifar(folder, CIFAR100_FILES, b"fine_labels"), True, True),
    "svhn": (_svhn, True, False),          # no flips: they turn digits into other glyphs
    "folder": (_folder, True, True),
}
