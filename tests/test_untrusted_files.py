"""No file graphmorph reads runs code the user did not name: a crafted payload for every loader
(history, a checkpoint's history, a run's saved settings on resume, run checkpoint, weights file,
Lightning checkpoint, CIFAR pickle) is refused in one line, and its marker file never appears."""
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from graphmorph.run.data import DataError, load


class Payload:
    """Unpickling this opens (creates) `marker`: any loader that builds it has run code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A folder holding evilmod.py (whose import and factories create marker files), made the
    current directory: graphmorph puts it on sys.path, as `python -m` would."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "evilmod.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(work / 'imported')!r}).touch()
        def boom(**kwargs):
            Path({str(work / 'called')!r}).touch()
        """))
    monkeypatch.chdir(work)
    monkeypatch.delitem(sys.modules, "evilmod", raising=False)
    return work


def nothing_ran(work: Path) -> bool:
    return not (work / "imported").exists() and not (work / "called").exists() and "evilmod" not in sys.modules


def history(model: str) -> dict:
    return {"format": "graphmorph.history", "version": 1, "rewrites": [],
            "model": {"model": model, "input_shape": [1, 8, 8], "num_classes": 10, "widths": None, "seed": 0}}


def test_replay_imports_no_factory_a_history_names(evil, refused):
    (evil / "h.json").write_text(json.dumps(history("evilmod:boom")))
    code, err = refused(["replay", "h.json", "-o", "out.pt"])
    assert code == 2 and "names the code 'evilmod:boom'" in err and "--allow-code evilmod:boom" in err
    assert nothing_ran(evil) and not (evil / "out.pt").exists()


@pytest.mark.parametrize("factory", ["tempfile:mkdtemp", "os:abort"])
def test_a_history_naming_a_standard_library_callable_calls_nothing(tmp_path, factory):
    """The reported cases: mkdtemp made a directory (and blamed --model), os.abort killed the process."""
    (tmp_path / "h.json").write_text(json.dumps(history(factory)))
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-m", "graphmorph", "replay", "h.json", "-o", "out.pt"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert f"names the code '{factory}'" in done.stderr and "--model" not in done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_export_of_a_checkpoint_imports_no_factory_its_history_names(evil, refused):
    run = evil / "run"
    run.mkdir()
    (run / "rewrites.json").write_text(json.dumps(history("evilmod:boom")))
    torch.save({"model": {}}, run / "checkpoint.pt")
    code, err = refused(["export", "--checkpoint", str(run / "checkpoint.pt"), "-o", "n.onnx"])
    assert code == 2 and "names the code 'evilmod:boom'" in err and nothing_ran(evil)
    torch.save({"model": {}, "history": history("evilmod:boom")}, run / "weights.pt")  # the history inside
    code, err = refused(["export", "--checkpoint", str(run / "weights.pt"), "-o", "n.onnx"])
    assert code == 2 and "names the code 'evilmod:boom'" in err and nothing_ran(evil)


def test_an_allowed_factory_is_the_only_code_imported(evil, refused):
    (evil / "h.json").write_text(json.dumps(history("evilmod:boom")))
    code, err = refused(["replay", "h.json", "-o", "out.pt", "--allow-code", "evilmod:other"])
    assert code == 2 and nothing_ran(evil)
    code, err = refused(["replay", "h.json", "-o", "out.pt", "--allow-code", "evilmod:boom"])
    assert (evil / "called").exists()      # named, so imported and called (it returns no module: refused after)
    assert code == 2 and "returned a NoneType" in err


@pytest.mark.parametrize("command, field", [("autogrow", "data"), ("autogrow", "model"), ("nac", "data")])
def test_resume_imports_no_factory_the_runs_settings_name(evil, refused, command, field):
    from graphmorph.search.autogrow import AutoGrowConfig
    from graphmorph.search.nac import NACConfig

    config = {"autogrow": AutoGrowConfig, "nac": NACConfig}[command]().__dict__ | {field: "evilmod:boom"}
    run = evil / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items()}, default=list))
    torch.save({"config": config}, run / "checkpoint.pt")
    code, err = refused([command, "--resume", str(run)])
    assert code == 2 and "names the code 'evilmod:boom'" in err and "--allow-code evilmod:boom" in err
    assert nothing_ran(evil)


@pytest.mark.parametrize("argv", [["autogrow", "--resume", "run"], ["export", "--checkpoint", "run/checkpoint.pt",
                                                                      "-o", "n.onnx"]])
def test_a_pickle_payload_in_a_checkpoint_or_weights_file_does_not_run(tmp_path, monkeypatch, refused, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    torch.save({"model": Payload(tmp_path / "marker")}, tmp_path / "run" / "checkpoint.pt")
    code, err = refused(argv)
    assert code == 2 and "corrupt or is not a file graphmorph wrote" in err
    assert not (tmp_path / "marker").exists()


def test_a_lightning_checkpoint_with_a_payload_does_not_run(tmp_path):
    pytest.importorskip("lightning")
    from graphmorph.errors import ConfigError
    from graphmorph.lightning import AutoGrowCallback, PruneCallback, _saved_state

    for callback in (AutoGrowCallback(torch.zeros(1, 1, 8, 8)), PruneCallback(torch.zeros(1, 1, 8, 8))):
        torch.save({"callbacks": {callback.state_key: Payload(tmp_path / "marker")}}, tmp_path / "evil.ckpt")
        with pytest.raises(ConfigError, match="weights_only=True and runs no code"):
            _saved_state(tmp_path / "evil.ckpt", callback.state_key)
        assert not (tmp_path / "marker").exists()


def test_a_cifar_pickle_with_a_payload_does_not_run(tmp_path):
    import numpy as np

    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        if name == "data_batch_1":
            batch[b"extra"] = Payload(tmp_path / "marker")
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    with pytest.raises(DataError, match="data_batch_1 is not a CIFAR python pickle: it asks for io.open, which"):
        load(f"cifar10:{tmp_path}")
    assert not (tmp_path / "marker").exists()
