"""The import direction is one way, down (DESIGN section 3), through the layers the packages show:

    graphmorph.errors, graphmorph.graph      the graph engine
    graphmorph.models                        seed nets and EnvelopeNets
    graphmorph.run, graphmorph.testing       run infrastructure; strategies and assertions
    graphmorph (the package's own re-exports)
    transforms                               the rewrites
    graphmorph.search                        the searches and rewrite artifacts
    graphmorph.cli, graphmorph.__main__,     the command line and the Lightning callback
    graphmorph.lightning

Every import statement is read with `ast`, those inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (("graphmorph.errors", "graphmorph.graph"), ("graphmorph.models",), ("graphmorph.run", "graphmorph.testing"),
          ("graphmorph",), ("transforms",), ("graphmorph.search",), ("graphmorph.cli", "graphmorph.__main__", "graphmorph.lightning"))


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the most specific package holding `module`; None for other packages."""
    best = None
    for index, packages in enumerate(LAYERS):
        for package in packages:
            if (module == package or module.startswith(package + ".")) and (best is None or len(package) > best[1]):
                best = (index, len(package))
    return best[0] if best else None


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
    assert not upward, "imports against the layer order (" + " < ".join("/".join(p) for p in LAYERS) + "): " \
                       + "; ".join(upward)


def test_the_check_sees_lazy_imports_and_the_layers(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from transforms.replayer import replay\n    import graphmorph.cli\n")
    assert imports(sample) == [(2, "transforms.replayer.replay"), (3, "graphmorph.cli")]
    assert [layer_of(m) for m in ("graphmorph.graph.verify", "graphmorph.models.envelope", "graphmorph.run.train",
                                  "graphmorph.models", "graphmorph", "transforms.growth", "graphmorph.search.nac",
                                  "graphmorph.cli", "torch")] == [0, 1, 2, 1, 3, 4, 5, 6, None]
