"""docs/your-models.md works as written: its Python runs, and its commands run in order from a
folder holding the project's examples/, with the README's .venv/bin/ standing for this interpreter's."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import Phase

import graphmorph
from graphmorph.run.report import read_results
from transforms import REWRITES

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "your-models.md"


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_the_guides_morphism_test_runs_and_catches_the_bug_it_describes():
    (code,) = _blocks("python")
    namespace: dict = {}
    exec(compile(code, str(GUIDE), "exec"), namespace)               # the property test passes
    unshrunk = "@settings(max_examples=20, deadline=None, phases=[Phase.generate], database=None)"  # shrinking is
    broken = (code.replace("    nn.init.zeros_(conv.bias)\n", "")                           # tested elsewhere
              .replace("@settings(max_examples=20, deadline=None)", unshrunk)
              .replace("test_deepen_stem_is_a_morphism()  #", "#"))
    assert broken.count("zeros_") == 0 and unshrunk in broken
    buggy: dict = {"Phase": Phase}
    exec(compile(broken, str(GUIDE), "exec"), buggy)
    with pytest.raises(AssertionError, match="outputs differ"):
        buggy["test_deepen_stem_is_a_morphism"]()


@pytest.mark.slow
def test_the_guides_commands_grow_replay_and_export_a_users_model(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    bin_dir = Path(sys.executable).parent
    commands = [line for block in _blocks("bash") for line in block.splitlines() if line.strip()]
    assert [shlex.split(c)[:2] for c in commands] == [[".venv/bin/graphmorph", verb]
                                                      for verb in ("autogrow", "replay", "export")]
    printed = []
    for command in commands:
        argv = shlex.split(command.replace(".venv/bin/", f"{bin_dir}/"))
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr)
        printed.append(done.stdout)
    found = read_results([tmp_path / "runs" / "tinynet"])[0][0]["found"]
    assert found.startswith("TinyNet-") and found != "TinyNet-1-1"
    assert f"on a fresh examples.tinynet:make: now {found}" in printed[1]
    weights = torch.load(tmp_path / "tinynet-grown.pt", weights_only=True)
    assert weights["history"]["model"]["model"] == "examples.tinynet:make"
    assert (tmp_path / "tinynet.onnx").stat().st_size > 0


def test_the_contributing_guides_rewrite_applies_verified_records_and_replays():
    guide = ROOT / "docs" / "contributing.md"
    code, _ = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    namespace: dict = {"__name__": "contributing_guide"}
    try:
        exec(compile(code, str(guide), "exec"), namespace)
        REWRITES.pop("deepen_after")
        broken = code.replace("        nn.init.zeros_(conv.bias)\n", "        nn.init.ones_(conv.bias)\n")
        with pytest.raises(graphmorph.RewriteError, match="should preserve the function"):
            exec(compile(broken, str(guide), "exec"), {"__name__": "contributing_guide_broken"})
    finally:
        REWRITES.pop("deepen_after", None)


def test_the_contributing_guides_op_is_taught_by_one_registration():
    guide = ROOT / "docs" / "contributing.md"
    _, code = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(code, str(guide), "exec"), namespace)
    wider, counted = namespace["wider"], namespace["counted"]
    shrink = next(n for n in wider.graph.nodes if n.op == "call_module" and n.target == "2")
    assert counted.total.elementwise - graphmorph.count_flops(wider).total.elementwise == \
        shrink.meta["tensor_meta"].shape.numel()               # counted by the registry, measured (0) without
    untaught = code.replace(", registry=registry)", ")")
    with pytest.raises(graphmorph.RewriteError, match="no channel handler"):
        exec(compile(untaught, str(guide), "exec"), {})
