"""What a new user meets around runs on the command line: interrupts that name a directory that
exists, names and files that rebuild a constructed net, report over unfinished and malformed runs,
the log kept apart from the rewrite history, corrupt checkpoints, and --version."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import graphmorph
import transforms
from graphmorph.cli import main
from graphmorph.models import build, envelope_arch, structure_label
from graphmorph.run.train import Trainer

TINY_NAC = ["--base", "EnvelopeNet-4/1-1/3", "--iterations", "1", "--steps", "6", "--epochs", "0",
            "--fraction", "0.3", "--batch-size", "32", "--device", "cpu"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("graphmorph 0.")


# --------------------------------------------------------------------------- interrupts and resuming


def test_an_interrupt_before_the_run_directory_exists_names_no_directory(tmp_path, capsys, monkeypatch):
    import graphmorph.search.autogrow as autogrow

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(autogrow._Session, "run", classmethod(interrupted))
    code, _, err = run_cli(capsys, "autogrow", "--run-dir", str(tmp_path / "comp"))
    assert code == 130
    assert f"it stopped before creating {tmp_path / 'comp'}: nothing was written" in err
    assert "--resume" not in err                          # before: 'resume with graphmorph autogrow --resume comp'


def test_nac_interrupted_in_its_first_iteration_resumes_from_the_directory_it_names(tmp_path, capsys, monkeypatch):
    real_steps = Trainer.train_steps

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "train_steps", interrupted)
    where = tmp_path / "nac"
    code, _, err = run_cli(capsys, "nac", *TINY_NAC, "--run-dir", str(where))
    assert code == 130 and f"resume with graphmorph nac --resume {where}" in err
    assert (where / "checkpoint.pt").is_file()        # before: 'holds no checkpoint.pt'
    monkeypatch.setattr(Trainer, "train_steps", real_steps)
    code, out, err = run_cli(capsys, "nac", "--resume", str(where))
    assert code == 0, err
    result = json.loads((where / "result.json").read_text())
    assert result["found"] in out and "\r" not in err   # no progress bar when not on a terminal
    code, out, err = run_cli(capsys, "flops", str(where / "architecture.json"), "--json")
    assert code == 0, err                  # before: 3x32x32 assumed, 1.87M MACs where the run had 112.21K
    assert json.loads(out)["input_shape"] == [1, 1, 8, 8] and json.loads(out)["macs"] == result["macs"]


def test_resuming_with_the_other_command_names_the_right_one(tmp_path, capsys):
    nac_run = tmp_path / "nac"
    nac_run.mkdir()
    (nac_run / "config.json").write_text(json.dumps({"base": "EnvelopeNet-4/1/3"}))
    code, _, err = run_cli(capsys, "autogrow", "--resume", str(nac_run))
    assert code == 2 and f"is a nac run, not an autogrow run: graphmorph nac --resume {nac_run}" in err


def test_a_garbage_checkpoint_is_called_corrupt(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed_net": "Basic3ResNet"}))
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint at all" * 10)
    code, _, err = run_cli(capsys, "autogrow", "--resume", str(run))
    assert code == 2 and "is corrupt or is not a file graphmorph wrote" in err
    assert "weights_only" not in err
    code, _, err = run_cli(capsys, "export", "--checkpoint", str(run / "checkpoint.pt"), "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and "is corrupt" in err and "weights_only" not in err


def test_replaying_the_log_says_which_file_to_replay(tmp_path, capsys):
    log = tmp_path / "log.json"
    log.write_text(json.dumps([{"epoch": 1, "arch": "Basic3ResNet-1-1-1", "event": ""}]))
    code, _, err = run_cli(capsys, "replay", str(log), "-o", str(tmp_path / "out.pt"))
    assert code == 2 and "is a run's log" in err and "replay the rewrites.json beside it" in err


# --------------------------------------------------------------------------- constructed nets by file


def constructed(tmp_path: Path, branch: str) -> tuple[Path, dict]:
    gm = graphmorph.capture(build("EnvelopeNet-4/2/3"), torch.randn(2, 3, 8, 8))
    pruned = transforms.prune_branches(gm, "stage0.cell1", [branch])
    structure = envelope_arch(pruned)
    path = tmp_path / branch / "architecture.json"
    path.parent.mkdir()
    path.write_text(json.dumps(structure))
    return path, structure


def test_a_constructed_net_has_a_name_of_its_own_and_its_file_rebuilds_it(tmp_path, capsys):
    first, first_structure = constructed(tmp_path, "conv1x1")
    second, second_structure = constructed(tmp_path, "conv3x3")
    assert graphmorph.models.arch_of(build(first_structure)) == graphmorph.models.arch_of(build(second_structure))
    assert structure_label(first_structure) != structure_label(second_structure)   # same old name, two nets
    expected = sum(p.numel() for p in build(first_structure).parameters())
    code, out, err = run_cli(capsys, "flops", str(first), "--input-size", "8", "--json")
    assert code == 0, err                                # before: 'unknown architecture ...architecture.json'
    assert json.loads(out)["params"] == expected
    code, _, err = run_cli(capsys, "export", str(first), "--input-size", "8", "-o", str(tmp_path / "c.onnx"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "flops", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read the architecture file" in err


# --------------------------------------------------------------------------- report


def fake_run(root: Path, name: str, **result) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    if result:
        (run / "result.json").write_text(json.dumps(result))
    return run


def test_report_lists_finished_runs_in_full_and_leaves_out_the_rest_with_a_reason(tmp_path, capsys):
    common = dict(test_acc=90.0, macs=1_000_000, params=10_000, growth_seconds=1.0, finetune_seconds=2.0)
    prefix = "autogrow-Basic3ResNet-1-1-1-digits-2026120"
    grown = fake_run(tmp_path, prefix + "1", kind="autogrow", data="digits", found="Basic3ResNet-3-2-2", **common)
    other = fake_run(tmp_path, prefix + "2", kind="autogrow", data="mnist:x", found="Basic3ResNet-4-2-2", **common)
    nac = fake_run(tmp_path, "nac-run", kind="nac", data="digits", found="EnvelopeNet-4/2 (5 branches, 1 skips, #abc)",
                   **{**common, "finetune_seconds": None})
    unfinished = fake_run(tmp_path, "unfinished")
    broken = fake_run(tmp_path, "broken")
    (broken / "result.json").write_text("{not json")
    plot = tmp_path / "report.png"
    code, out, err = run_cli(capsys, "report", *map(str, (grown, other, nac, unfinished, broken)), "-o", str(plot))
    assert code == 0, err                                 # before: rc 1 on the unfinished run
    rows = out.splitlines()
    assert rows[0].split()[:3] == ["run", "kind", "data"]
    assert any(str(grown) in r and "digits" in r for r in rows) and any(str(other) in r and "mnist:x" in r for r in rows)
    assert "unfinished" in err and "not valid JSON" in err and "Traceback" not in err
    assert plot.read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(capsys, "report", str(grown), "-o", str(plot))
    assert code == 2 and "pass --force" in err            # before: overwritten silently
    assert run_cli(capsys, "report", str(grown), "-o", str(plot), "--force")[0] == 0
    code, _, err = run_cli(capsys, "report", str(unfinished), "-o", str(tmp_path / "none.png"))
    assert code == 2 and "none of the runs has a result" in err
