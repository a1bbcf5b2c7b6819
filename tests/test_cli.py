"""The command line: tables that agree with the API, one-line errors, exit codes."""
import json
import subprocess
import sys

import pytest
import torch

import graphmorph
from graphmorph.cli import main
from graphmorph.models import build


def test_flops_prints_a_per_stage_table_with_totals(capsys):
    assert main(["flops", "Basic3ResNet-3-3-3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Basic3ResNet-3-3-3  input 1x3x32x32"
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and line[0].isalpha()}
    assert {"stem", "stage0", "stage1", "stage2", "head", "total"} <= set(rows)
    assert rows["stage1"][1] == "3"
    assert "40.81M MACs, 81.63M FLOPs, 272.47K parameters" in out


def test_flops_json_agrees_with_the_api(capsys):
    assert main(["flops", "Plain4Net-1-2-1-1", "--widths", "4,8,16,32", "--input-size", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = build("Plain4Net-1-2-1-1", widths=(4, 8, 16, 32))
    report = graphmorph.count_flops(model, torch.zeros(1, 3, 16, 16))
    assert (data["macs"], data["params"], data["arch"]) == (report.macs, report.params, "Plain4Net-1-2-1-1")
    assert data["by_stage"]["stage1"] == {"blocks": 2, "macs": report.by_stage["stage1"].macs,
                                          "flops": report.by_stage["stage1"].flops,
                                          "elementwise": report.by_stage["stage1"].elementwise,
                                          "params": report.by_stage["stage1"].params}


@pytest.mark.parametrize("argv", [["flops", "ResNet-20"], ["export", "Basic3ResNet-1-1", "-o", "x.onnx"]])
def test_wrong_arch_is_one_line_listing_valid_forms_and_exit_2(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("graphmorph: error:") and "Plain4Net-N-N-N-N" in err


def test_export_writes_a_checked_onnx_file(tmp_path, capsys):
    target = tmp_path / "net.onnx"
    assert main(["export", "Plain3Net-1-1-1", "--widths", "2,4,4", "--input-size", "8", "-o", str(target)]) == 0
    assert target.stat().st_size > 0
    assert "max abs diff" in capsys.readouterr().out


def test_console_entry_point_help_and_exit_codes(capsys):
    """The module runs as a program (one process each way: help, and a refusal); the other
    commands' help and refusals are checked in-process below."""
    run = [sys.executable, "-m", "graphmorph"]
    done = subprocess.run(run + ["--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: graphmorph" in done.stdout
    done = subprocess.run(run + ["flops", "Nope-1"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    with pytest.raises(SystemExit) as stopped:
        main(["flops", "Plain3Net-1-1-1", "--input-size", "0"])
    assert stopped.value.code == 2 and "positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["autogrow", "--K", "x"], "graphmorph autogrow: error: argument --K: invalid int value: 'x' "
                               "(see graphmorph autogrow --help)"),
    ([], "graphmorph: error: the following arguments are required: COMMAND (see graphmorph --help)"),
    (["flops", "Plain3Net-1-1-1", "--nope"], "unrecognized arguments: --nope (see graphmorph --help)"),
])
def test_a_usage_error_is_one_line_naming_help(capsys, argv, message):
    """They printed 15 lines of usage."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err


@pytest.mark.parametrize("command", ["autogrow", "nac", "train", "replay", "report", "flops", "export"])
def test_help_shows_no_empty_default(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "(default )" not in out and ("--allow-large" in out) == (command != "report")
