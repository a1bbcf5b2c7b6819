"""A benchmark run writes its numbers beside the recorded ones, never over them, unless asked."""
import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_common(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "LOCAL", tmp_path / "results" / "local")
    return common


def test_results_go_to_local_unless_recorded(tmp_path, monkeypatch):
    common = load_common(tmp_path, monkeypatch)
    monkeypatch.delenv(common.RECORD, raising=False)
    written = common.save("probe", [{"x": 1}], {"s": 2})
    assert written.parent == tmp_path / "results" / "local" and not list((tmp_path / "results").glob("*.json"))
    assert json.loads(written.read_text())["summary"] == {"s": 2}
    monkeypatch.setenv(common.RECORD, "1")
    assert common.save("probe", [], {}).parent == tmp_path / "results"


def test_local_results_are_ignored_by_git():
    ignored = (BENCHMARKS.parent / ".gitignore").read_text().splitlines()
    assert "benchmarks/results/local/" in ignored
