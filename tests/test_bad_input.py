"""Bad data, bad options and giant architectures: each is one line and exit 2, within seconds, with
nothing written (the run directory is never created) and nothing trained."""
import gzip
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from graphmorph.models import FAMILIES, build, size_limits
from graphmorph.models.size import MAX_PARAMETERS

TINY = ["--widths", "4,4,4", "--K", "1", "--J", "1", "--finetune-epochs", "1", "--batch-size", "32", "--device", "cpu"]


def write_idx(folder: Path, train=(12, 12), test=(6, 6), size=(28, 28), labels=None):
    """MNIST-format files: `train`/`test` are (images, labels) counts; labels cycle 0..9 unless given."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, (n_images, n_labels) in (("train", train), ("t10k", test)):
        h, w = size if prefix == "t10k" else (28, 28)
        images = rng.integers(0, 256, (n_images, h, w), dtype=np.uint8)
        values = labels if labels is not None and prefix == "train" else np.arange(n_labels) % 10
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n_images, h, w) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n_labels) + np.asarray(values, np.uint8).tobytes())
    return folder


def swap_labels_for_images(folder: Path) -> Path:
    (folder / "train-labels-idx1-ubyte.gz").write_bytes((folder / "train-images-idx3-ubyte.gz").read_bytes())
    return folder


def empty_files(folder: Path) -> Path:
    for path in folder.iterdir():
        with gzip.open(path, "wb"):
            pass
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda d: write_idx(d, train=(600, 500)), "the training split has 600 images but 500 labels"),
    (lambda d: write_idx(d, size=(20, 20)), "images differ in shape (training 1x28x28, test 1x20x20)"),
    (lambda d: write_idx(d, labels=[200] + [i % 10 for i in range(11)]), "a label is 200, but the data has 10 classes"),
    (lambda d: write_idx(d, labels=[4] * 12), "the training split holds a single class (4)"),
    (lambda d: empty_files(write_idx(d)), "holds 0 bytes, not even a header"),
    (lambda d: swap_labels_for_images(write_idx(d)), "are two files swapped?"),
])
def test_bad_mnist_files_are_refused_before_anything_is_written(tmp_path, refused, make, message):
    folder = make(tmp_path / "data")
    code, err = refused(["autogrow", "--data", f"mnist:{folder}", *TINY, "--run-dir", str(tmp_path / "run")])
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


@pytest.mark.parametrize("factory, message", [
    ("user_data:label_twelve_of_ten", "a label is 12, but the data has 10 classes"),
    ("user_data:label_minus_one", "a label is -1; labels are class indices"),
    ("user_data:label_two_hundred", "labels run up to 200 but 190 of the classes 0..200 have no example"),
    ("user_data:strings", "yields (str, int); expected (image tensor, integer label) pairs"),
    ("user_data:nan_pixels", "the training images hold NaN or infinite values"),
    ("user_data:two_images", "1 training example(s) remain of 2"),
])
def test_bad_data_factories_are_refused_before_anything_is_written(tmp_path, refused, factory, message):
    code, err = refused(["autogrow", "--data", factory, *TINY, "--run-dir", str(tmp_path / "run")])
    assert code == 2 and message in err and not (tmp_path / "run").exists()


def test_a_one_example_training_set_is_refused_within_seconds(tmp_path):
    """It spun forever in the trainer's batch loop."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "graphmorph", "nac", "--fraction", "0.001", "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "training needs 2 at least: raise --fraction" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and time.perf_counter() - began < 60


def test_the_trainer_refuses_a_set_it_cannot_batch():
    import torch
    from graphmorph.errors import GraphmorphError
    from graphmorph.run.train import Trainer

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    trainer = Trainer(torch.device("cpu"), batch_size=8)
    with pytest.raises(GraphmorphError, match="training needs 2 examples at least, got 1"):
        trainer.train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.zeros(1, 4),
                            torch.zeros(1, dtype=torch.long), torch.Generator(), steps=3)


def test_a_run_dir_below_a_file_is_refused_before_training(tmp_path, refused):
    (tmp_path / "file").write_text("x")
    code, err = refused(["autogrow", *TINY, "--run-dir", str(tmp_path / "file" / "run")])
    assert code == 2 and f"{tmp_path / 'file'} is a file, not a folder" in err


@pytest.mark.parametrize("argv, message", [
    (["flops", "Basic3ResNet-100000-1-1"], "has 100,002 blocks, over the limit of 2,000"),
    (["flops", "Basic3ResNet-1-1-1", "--num-classes", "1000000000"], "would have 65,000,077,392 parameters"),
    (["flops", "Basic3ResNet-1-1-1", "--widths", "100000,1,1"], "over the limit of 100,000,000"),
    (["autogrow", "--seed-net", "Basic3ResNet-1000000000-1-1"], "has 1,000,000,002 blocks"),
    (["nac", "--base", "EnvelopeNet-1000000/2-2-2/6"], "parameters"),
])
def test_giant_architectures_are_refused_within_seconds(tmp_path, refused, argv, message):
    began = time.perf_counter()
    code, err = refused([*argv, *(["--run-dir", str(tmp_path / "run")] if argv[0] != "flops" else [])])
    assert code == 2 and message in err and "--allow-large" in err
    assert time.perf_counter() - began < 30 and not (tmp_path / "run").exists()


def test_a_history_asking_for_a_giant_model_is_refused(tmp_path, refused):
    document = {"format": "graphmorph.history", "version": 1, "rewrites": [],
                "model": {"model": "Basic3ResNet-1000000000-1-1", "input_shape": [1, 8, 8], "num_classes": 10,
                          "widths": None, "seed": 0}}
    (tmp_path / "h.json").write_text(json.dumps(document))
    code, err = refused(["replay", str(tmp_path / "h.json"), "-o", str(tmp_path / "out.pt")])
    assert code == 2 and "has 1,000,000,002 blocks" in err and not (tmp_path / "out.pt").exists()


def test_a_null_seed_in_a_history_is_one_line(tmp_path, refused):
    document = {"format": "graphmorph.history", "version": 1, "rewrites": [],
                "model": {"model": "Basic3ResNet-1-1-1", "input_shape": [1, 8, 8], "num_classes": 10, "seed": None}}
    (tmp_path / "h.json").write_text(json.dumps(document))
    code, err = refused(["replay", str(tmp_path / "h.json"), "-o", str(tmp_path / "out.pt")])
    assert code == 2 and "seed" in err


def test_allow_large_lifts_the_limits():
    with size_limits(None, None):
        model = build("Plain3Net-2001-1-1", widths=(1, 1, 1))
    assert len(model.layer1) == 2001


@settings(max_examples=15, deadline=None)
@given(family=st.sampled_from(sorted(FAMILIES)), data=st.data())
def test_the_parameter_estimate_is_the_built_nets_count(family, data):
    """The oracle is the built net itself; the limit applies to the estimate exactly."""
    stages = len(FAMILIES[family].default_widths)
    depths = data.draw(st.lists(st.integers(1, 4), min_size=stages, max_size=stages), label="depths")
    widths = data.draw(st.lists(st.integers(1, 12), min_size=stages, max_size=stages), label="widths")
    classes = data.draw(st.integers(1, 50), label="classes")
    stem = data.draw(st.sampled_from(["cifar", "imagenet"]), label="stem")
    arch = f"{family}-" + "-".join(map(str, depths))
    model = build(arch, num_classes=classes, in_channels=2, widths=widths, stem=stem)
    count = sum(p.numel() for p in model.parameters())
    with size_limits(max_parameters=count):
        build(arch, num_classes=classes, in_channels=2, widths=widths, stem=stem)
    with size_limits(max_parameters=count - 1), pytest.raises(Exception, match=f"would have {count:,} parameters"):
        build(arch, num_classes=classes, in_channels=2, widths=widths, stem=stem)
    assert count < MAX_PARAMETERS


def test_a_history_of_too_many_rewrites_is_refused_before_any_applies(tmp_path, refused):
    record = {"rewrite": "grow", "after": "layer1.0", "stage": 0, "init": "zero", "std": 1.0, "seed": 1}
    document = {"format": "graphmorph.history", "version": 1, "rewrites": [record] * 2001,
                "model": {"model": "Basic3ResNet-1-1-1", "input_shape": [1, 8, 8], "num_classes": 10, "seed": 0}}
    (tmp_path / "h.json").write_text(json.dumps(document))
    began = time.perf_counter()
    code, err = refused(["replay", str(tmp_path / "h.json"), "-o", str(tmp_path / "out.pt")])
    assert code == 2 and "has 2,001 rewrite records, over the limit of 2,000" in err and "--allow-large" in err
    assert time.perf_counter() - began < 10 and not (tmp_path / "out.pt").exists()
