"""docs/transformers.md works as written: its Python captures a small LLaMA, prunes and grows it,
fine-tunes it in a plain loop and saves a program and an ONNX file that run."""
import os
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "transformers.md"


def test_the_transformers_guide_runs_and_leaves_what_it_says(tmp_path, capsys):
    (code,) = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    namespace: dict = {}
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, str(GUIDE), "exec"), namespace)
    finally:
        os.chdir(here)
    printed = capsys.readouterr().out
    assert "[('model.layers.0', 'model.layers.1')]" in printed
    gm, pruned, grown = namespace["gm"], namespace["pruned"], namespace["grown"]
    assert pruned.get_submodule("model.layers.0.mlp.gate_proj").out_features < 172
    assert pruned.get_submodule("model.layers.0.mlp.up_proj").out_features == \
        pruned.get_submodule("model.layers.0.mlp.gate_proj").out_features
    assert len(__import__("graphmorph").find_stages(grown)[0].blocks) == 3
    assert torch.isfinite(namespace["loss"])
    assert (tmp_path / "llama-small.pt2").stat().st_size > 0 and (tmp_path / "llama-small.onnx").stat().st_size > 0
    reloaded = torch.export.load(tmp_path / "llama-small.pt2").module()
    tokens = namespace["tokens"]
    assert torch.allclose(reloaded(tokens)["logits"], grown(tokens).logits, atol=1e-5)
    assert gm is not pruned and gm.get_submodule("model.layers.0.mlp.gate_proj").out_features == 172
