"""The import direction is one way, down, through the layers the packages show:

    graphmorph.errors, graphmorph.graph      the graph engine
    graphmorph.models                        seed nets and EnvelopeNets
    graphmorph.run, graphmorph.testing       run infrastructure; strategies and assertions
    graphmorph (the package's own re-exports)
    transforms                               the rewrites
    graphmorph.search                        the searches and rewrite artifacts
    graphmorph.cli, graphmorph.__main__,     the command line and the Lightning callback
    graphmorph.lightning

Every import statement is read with `ast`, those inside functions and `if TYPE_CHECKING` included. Inside
a package (`graphmorph.graph`, `graphmorph.run`, `transforms`, ...) imports run one way too: no cycle."""
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


def package_of(module: str) -> str:
    """The package whose modules must not import each other in a circle: graphmorph.X or transforms."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "graphmorph" and len(parts) > 1 else parts[0]


MODULES = {module_name(path): path for path in SOURCES}


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports (an imported name resolved to its module)."""
    found = set()
    for _, target in imports(path):
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target:
            found.add(target)
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as one path that returns to its start (depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycle_inside_a_package():
    edges = {name: {t for t in imported_modules(path) if t != name and package_of(t) == package_of(name)
                    and not name.startswith(t + ".")}   # a module imports its own package's __init__ implicitly
             for name, path in MODULES.items()}
    assert not cycles(edges), "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(edges))


def test_the_cycle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
