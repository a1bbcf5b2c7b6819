"""docs/your-loop.md works as written: its loop grows the net with graphmorph.AutoGrow, finds what
`graphmorph autogrow` finds with the same data, seeds and settings, and its resume rebuilds the
saved net; its NAC loop constructs what `graphmorph nac` constructs."""
import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch

import graphmorph
from graphmorph.cli import main

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "your-loop.md"
TEXT = GUIDE.read_text()
LOOP, RESUME, NAC_LOOP = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


@contextlib.contextmanager
def keeping_the_thread_count():
    """The guide's loops set the process's thread count (to match the command's --threads): the
    tests after them keep theirs."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def guide_run(tmp_path_factory):
    """The guide's loop, run once in a folder of its own: (namespace, printed lines, folder)."""
    folder, before = tmp_path_factory.mktemp("guide"), os.getcwd()
    namespace: dict = {}
    out = io.StringIO()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), keeping_the_thread_count():
            exec(compile(LOOP, str(GUIDE), "exec"), namespace)
    finally:
        os.chdir(before)
    return namespace, out.getvalue().splitlines(), folder


def test_the_guides_loop_grows_the_net_and_its_resume_restores_it(guide_run, monkeypatch):
    namespace, printed, folder = guide_run
    grower = namespace["grower"]
    growths = [line for line in printed if "grew stage" in line]
    stages = [r["stage"] for r in graphmorph.history(grower.model)]
    assert grower.done and len(growths) == len(stages) >= 1
    assert stages == [int(re.search(r"grew stage (\d)", line).group(1)) for line in growths]
    found = grower.state.found
    assert found == graphmorph.models.arch_of(grower.model)
    depths = [int(d) for d in found.split("-")[1:]]
    assert sum(depths) == 3 + len(stages)                       # one block per growth
    assert len([line for line in printed if line.startswith("epoch ")]) == grower.state.epoch
    assert printed[-1].startswith(f"found {found}")

    monkeypatch.chdir(folder)
    exec(compile(RESUME, str(GUIDE), "exec"), namespace)
    resumed = namespace["resumed"]
    assert resumed.state == grower.state
    assert graphmorph.history(resumed.model) == graphmorph.history(grower.model)
    saved = grower.model.state_dict()
    assert resumed.model.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in resumed.model.state_dict().items())


def test_the_guides_loop_finds_the_net_and_history_its_autogrow_command_finds(guide_run, tmp_path):
    """The guide says its loop trains as `graphmorph autogrow` does; its command, run here, must find
    the same net through the same growths, accuracies and weights."""
    namespace, printed, _ = guide_run
    grower = namespace["grower"]
    command = re.search(r"`graphmorph\s+autogrow\s+([^`]*)`", TEXT).group(1).split()
    assert main(["autogrow", *command, "--test-every", "0", "--run-dir", str(tmp_path / "cli")]) == 0

    result = json.loads((tmp_path / "cli" / "result.json").read_text())
    _, rewrites = graphmorph.read_history(tmp_path / "cli" / "rewrites.json")
    log = json.loads((tmp_path / "cli" / "log.json").read_text())
    assert result["found"] == grower.state.found and len(rewrites) >= 2
    assert rewrites == graphmorph.history(grower.model)
    assert [row["val_acc"] for row in log] == [round(acc, 4) for acc in grower.state.val_accuracy]
    assert [row["event"] for row in log if row["event"]] == [
        line.split("%  ", 1)[1] for line in printed if line.startswith("epoch ") and line.split("%  ", 1)[1]]
    trained = torch.load(tmp_path / "cli" / "checkpoint.pt", weights_only=True)["model"]
    ours = grower.model.state_dict()
    assert trained.keys() == ours.keys() and all(torch.equal(trained[k], ours[k]) for k in ours)


def test_the_guides_nac_loop_constructs_the_net_its_nac_command_constructs(tmp_path):
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out, keeping_the_thread_count():
        exec(compile(NAC_LOOP, str(GUIDE), "exec"), namespace)
    nac = namespace["nac"]
    printed = out.getvalue().splitlines()
    command = re.search(r"`graphmorph\s+nac\s+([^`]*)`", TEXT).group(1).split()
    assert main(["nac", *command, "--run-dir", str(tmp_path / "cli")]) == 0

    structure = graphmorph.models.envelope_arch(nac.model)
    assert json.loads((tmp_path / "cli" / "architecture.json").read_text()) == structure
    assert printed[-1] == f"constructed {graphmorph.models.structure_label(structure)}"
    assert nac.done and nac.iteration == 2 and len(printed) == 3
    _, rewrites = graphmorph.read_history(tmp_path / "cli" / "rewrites.json")
    assert rewrites == nac.rewrites and {r["rewrite"] for r in rewrites} >= {"prune_branches", "add_cell"}
    trained = torch.load(tmp_path / "cli" / "checkpoint.pt", weights_only=True)["model"]
    ours = nac.model.state_dict()
    assert trained.keys() == ours.keys() and all(torch.equal(trained[k], ours[k]) for k in ours)
