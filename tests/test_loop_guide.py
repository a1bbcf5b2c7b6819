"""docs/your-loop.md works as written: its loop grows the net with graphmorph.AutoGrow, and its
resume rebuilds the saved net."""
import re
from pathlib import Path

import torch

import graphmorph

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "your-loop.md"


def test_the_guides_loop_grows_the_net_and_its_resume_restores_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    loop, resume = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    namespace: dict = {}
    exec(compile(loop, str(GUIDE), "exec"), namespace)
    grower = namespace["grower"]
    printed = capsys.readouterr().out.splitlines()

    growths = [line for line in printed if "grew stage" in line]
    stages = [r["stage"] for r in graphmorph.history(grower.model)]
    assert grower.done and len(growths) == len(stages) >= 1
    assert stages == [int(re.search(r"grew stage (\d)", line).group(1)) for line in growths]
    found = grower.state.found
    assert found == graphmorph.models.arch_of(grower.model)
    depths = [int(d) for d in found.split("-")[1:]]
    assert sum(depths) == 3 + len(stages)                       # one block per growth
    epochs = grower.state.epoch
    assert len([line for line in printed if line.startswith("epoch ")]) == epochs
    assert printed[-1].startswith(f"found {found}")

    exec(compile(resume, str(GUIDE), "exec"), namespace)
    resumed = namespace["resumed"]
    assert resumed.state == grower.state
    assert graphmorph.history(resumed.model) == graphmorph.history(grower.model)
    saved = grower.model.state_dict()
    assert resumed.model.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in resumed.model.state_dict().items())
