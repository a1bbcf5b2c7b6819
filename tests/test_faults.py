"""Fault injection: a kill at every write point of `autogrow` and `nac`, a full disk, two processes on
one run directory. Every kill point either resumes to the uninterrupted run's result (log, history,
result, final weights: bit for bit, timings aside) or, where no run directory exists yet, restarts
cleanly.

A kill is taken as a snapshot of the run's folder at a write point, just before the write is made
visible (its temporary file written, the target still the old one) and just after: the states a
kill -9 can leave, since every write goes through one temporary file and one rename
(`graphmorph.run.rundir.publish`). The test resumes or restarts each snapshot in a fresh folder.
The README's test command checks a spread of points; `GRAPHMORPH_FAULTS=all` (run by .ci/run)
checks every one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import graphmorph.run.rundir as rundir
from graphmorph.cli import main
from graphmorph.run.rundir import RunDirectory, WriteError
from graphmorph.search import autogrow, nac

AUTOGROW = autogrow.AutoGrowConfig.from_dict({
    "seed_net": "Basic3ResNet", "widths": (2, 2, 2), "K": 1, "J": 1, "tau": 0.5, "finetune_epochs": 1,
    "batch_size": 64, "fraction": 0.2, "max_growth_epochs": 3, "device": "cpu", "test_every": 2, "threads": 1})
NAC = nac.NACConfig(base="EnvelopeNet-4/1-1/3", iterations=2, steps=3, log_every=3, epochs=1, fraction=0.2,
                    batch_size=32, device="cpu", threads=1)
SEARCHES = {"autogrow": (autogrow.run, AUTOGROW), "nac": (nac.run, NAC)}
TIMINGS = {"seconds", "rewrite_seconds", "estimated_seconds", "compile_seconds", "growth_seconds",
           "finetune_seconds", "construction_seconds", "train_seconds", "construction_to_training"}


def quiet(_line: str) -> None:
    """Progress lines are not under test here."""


def untimed(value):
    """`value` with every timing field dropped, recursively (timings differ between runs)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def outcome(run_dir: Path) -> dict:
    """What a finished run leaves, to compare: log, history, result and the final weights."""
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    weights = checkpoint.get("final_model") or checkpoint["model"]
    return {"log": untimed(json.loads((run_dir / "log.json").read_text())),
            "rewrites": json.loads((run_dir / "rewrites.json").read_text()),
            "result": untimed(json.loads((run_dir / "result.json").read_text())),
            "weights": {name: tensor.clone() for name, tensor in weights.items()}}


def assert_same_outcome(got: dict, expected: dict, label: str) -> None:
    for key in ("log", "rewrites", "result"):
        assert got[key] == expected[key], f"{label}: {key} differs from the uninterrupted run's"
    assert list(got["weights"]) == list(expected["weights"]), f"{label}: other tensors"
    for name, tensor in expected["weights"].items():
        assert torch.equal(got["weights"][name], tensor), f"{label}: {name} differs"


@pytest.fixture(scope="module", params=sorted(SEARCHES))
def snapshots(request, tmp_path_factory):
    """(search, the uninterrupted run's outcome, [(label, folder as a kill at that point left it)])."""
    search = request.param
    run, config = SEARCHES[search]
    root = tmp_path_factory.mktemp(search)
    home, store = root / "home", root / "snapshots"
    home.mkdir()
    taken: list[tuple[str, Path]] = []
    real_publish = rundir.publish

    def snapshot(label: str) -> None:
        target = store / f"{len(taken):03d}"
        shutil.copytree(home, target)
        taken.append((label, target))

    def publishing(temporary: Path, target: Path) -> None:
        point = f"write {len(taken) // 2} ({target.name})"
        snapshot(f"killed before {point} was renamed into place")
        real_publish(temporary, target)
        snapshot(f"killed after {point}")

    rundir.publish = publishing
    try:
        run(config, home / "run", progress=quiet)
    finally:
        rundir.publish = real_publish
    return search, outcome(home / "run"), taken


def chosen(taken: list) -> list:
    """Every kill point with GRAPHMORPH_FAULTS=all; else the first two (assembling the run
    directory), three spread between, and the last two (finishing)."""
    if os.environ.get("GRAPHMORPH_FAULTS") == "all":
        return taken
    between = taken[2:-2]
    return taken[:2] + between[len(between) // 6::len(between) // 3][:3] + taken[-2:]


def test_every_kill_point_resumes_to_the_same_result_or_restarts_cleanly(snapshots):
    search, expected, taken = snapshots
    run, config = SEARCHES[search]
    assert len(taken) >= 40, "every checkpoint, log and history write is a kill point"
    for label, folder in chosen(taken):
        run_dir = folder / "run"
        if run_dir.exists():
            assert (run_dir / "checkpoint.pt").is_file(), f"{label}: a run directory without a checkpoint"
            run(None, run_dir, resume=True, progress=quiet)
        else:   # killed while the run directory was being assembled: nothing to resume, start again
            run(config, run_dir, progress=quiet)
        assert_same_outcome(outcome(run_dir), expected, f"{search} {label}")
        assert not list(run_dir.glob(".*.tmp")), f"{label}: temporary files left after recovery"
        shutil.rmtree(folder)


def test_the_checkpoint_always_carries_the_history_its_weights_fit(snapshots):
    """export --checkpoint of a killed run failed when rewrites.json ran ahead of the checkpoint."""
    from graphmorph.search.artifacts import load_checkpoint

    search, _, taken = snapshots
    for label, folder in taken[::5]:
        checkpoint = folder / "run" / "checkpoint.pt"
        if checkpoint.is_file():
            load_checkpoint(checkpoint)   # raises HistoryError when the weights do not fit the history


def test_a_full_disk_is_one_line_and_the_run_resumes_from_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """torch.save reports a full disk as RuntimeError('unexpected pos ...'); the third checkpoint fails."""
    real_save, saves = torch.save, []

    def filling(payload, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:
            Path(path).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 33152 vs 33048")
        real_save(payload, path, *args, **kwargs)

    monkeypatch.setattr(rundir.torch, "save", filling)
    where = tmp_path / "run"
    code = main(["autogrow", "--seed-net", "Basic3ResNet", "--widths", "2,2,2", "--K", "1", "--J", "1",
                 "--max-growth-epochs", "3", "--finetune-epochs", "1", "--fraction", "0.2", "--batch-size", "64",
                 "--device", "cpu", "--test-every", "2", "--threads", "1", "--run-dir", str(where)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"cannot write {where / 'checkpoint.pt'}: " in err and "MB free on that disk" in err
    assert f"the last checkpoint is kept: resume with graphmorph autogrow --resume {where}" in err
    assert not list(where.glob(".*.tmp")), "the failed write's temporary file is removed"
    monkeypatch.setattr(rundir.torch, "save", real_save)
    assert main(["autogrow", "--resume", str(where)]) == 0
    whole = tmp_path / "whole"
    autogrow.run(AUTOGROW, whole, progress=quiet)
    assert_same_outcome(outcome(where), outcome(whole), "after a full disk")


def test_a_failing_text_write_keeps_the_old_file(tmp_path, monkeypatch):
    directory = RunDirectory(tmp_path)
    directory.write_json("log.json", [1])

    def no_space(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(WriteError, match="cannot write .*log.json: No space left on device"):
        directory.write_json("log.json", [1, 2])
    monkeypatch.undo()
    assert json.loads((tmp_path / "log.json").read_text()) == [1] and not list(tmp_path.glob(".*.tmp"))


def test_a_run_directory_in_use_is_not_resumed_twice(tmp_path, refused):
    where = tmp_path / "run"
    autogrow.run(AUTOGROW, where, progress=quiet)
    with RunDirectory(where).locked():
        code, err = refused(["autogrow", "--resume", str(where)])
    assert code == 2 and "is being written by another graphmorph process" in err
