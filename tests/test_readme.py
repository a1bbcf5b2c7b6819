"""The README's Python examples run as written, each block alone (a fresh interpreter, a scratch
folder), as a reader who copies one block would run it."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_readme_python_block_runs_alone(tmp_path, index):
    done = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout.splitlines()
    if "transforms.grow(gm2" in BLOCKS[index]:
        assert "Basic3ResNet-4-4-3" in printed and "layer2.3" in printed
    if "resnet20.onnx" in BLOCKS[index]:
        assert (tmp_path / "resnet20.onnx").stat().st_size > 0
    if "llama.pt2" in BLOCKS[index]:
        assert (tmp_path / "llama.pt2").stat().st_size > 0


def test_the_readme_has_its_examples():
    assert len(BLOCKS) >= 4
