"""The import direction is one way, down (DESIGN section 3): the graphmorph core, then the
rewrites in `transforms`, then what uses rewrites (the searches, rewrite artifacts, the command
line). Every import statement is read with `ast`, those inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("graphmorph.search", "graphmorph.artifacts", "graphmorph.cli", "graphmorph.__main__")


def layer_of(module: str) -> int | None:
    """0 for the core, 1 for the rewrites, 2 for what builds on them; None for other packages."""
    if module == "transforms" or module.startswith("transforms."):
        return 1
    if any(module == upper or module.startswith(upper + ".") for upper in UPPER):
        return 2
    if module == "graphmorph" or module.startswith("graphmorph."):
        return 0
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


SOURCES = sorted(p for package in ("graphmorph", "transforms") for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = layer_of(module_name(path))
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target}" for line, target in imports(path)
              if (layer_of(target) or 0) > own]
    assert not upward, "imports against the layer order (core < transforms < searches, artifacts, cli): " \
                       + "; ".join(upward)


def test_the_check_sees_lazy_imports_and_the_layers(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from transforms.replayer import replay\n    import graphmorph.cli\n")
    assert imports(sample) == [(2, "transforms.replayer.replay"), (3, "graphmorph.cli")]
    assert [layer_of(m) for m in ("graphmorph.verify", "transforms.growth", "graphmorph.search.nac",
                                  "graphmorph.artifacts", "torch")] == [0, 1, 2, 2, None]
