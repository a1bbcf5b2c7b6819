"""Searches are registered algorithms: the command line, run directories, the report and the top
level read the registry, so a new search is one module and one registration."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

import graphmorph
from graphmorph.cli import main
from graphmorph.run.report import pareto_front
from graphmorph.run.rundir import RunDirectory
from graphmorph.search import algorithms as registry
from graphmorph.search.algorithms import Algorithm, ResultKind, algorithms, register_algorithm
from graphmorph.search.options import option


def test_the_built_in_searches_are_registered_with_their_controllers():
    found = algorithms()
    assert list(found)[:3] == ["autogrow", "nac", "prune"]
    for entry in found.values():
        name, _ = entry.controller
        assert getattr(graphmorph, name).__name__ == name and name in dir(graphmorph)


@dataclass(frozen=True)
class _EchoConfig:
    words: int = field(default=2, metadata=option("words to say", type=int))

    @classmethod
    def from_dict(cls, values):
        return cls(**values)

    def validate(self):
        pass


def test_a_registered_search_gets_a_command_with_its_options_and_its_summary(monkeypatch, capsys, tmp_path):
    ran = []

    def run(config, run_dir, resume=False, progress=print, allow_code=()):
        ran.append((config, str(run_dir), resume))
        return {"said": " ".join(["echo"] * config.words)}

    entry = Algorithm(kind="echo", title="Echo", config_type=_EchoConfig, run=run, help="say echo",
                      description="Say echo.", unit="word", net=lambda c: "words", plan=lambda c: f"{c.words} words",
                      summary=lambda result, where: [result["said"]], results={"echo": ResultKind("echoed", "x")})
    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY})
    register_algorithm(entry)
    assert main(["echo", "--words", "3", "--run-dir", str(tmp_path / "e")]) == 0
    assert ran == [(_EchoConfig(3), str(tmp_path / "e"), False)]
    assert capsys.readouterr().out.splitlines() == [f"3 words; writing {tmp_path / 'e'}", "echo echo echo"]
    with pytest.raises(ValueError, match="registered already"):
        register_algorithm(Algorithm(**{**entry.__dict__, "title": "another"}))


def test_config_json_records_the_kind_that_resume_checks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "prune", "seed_net": "Basic3ResNet-3-3-3"}))
    (run / "checkpoint.pt").write_bytes(b"")
    assert RunDirectory(run).kind() == "prune"
    with pytest.raises(graphmorph.GraphmorphError, match="is a prune run, not an autogrow run"):
        RunDirectory.existing(run, "autogrow")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(50, 56), st.sampled_from(("a", "b"))), min_size=1,
                max_size=8))
def test_the_pareto_front_holds_exactly_the_undominated_results(points):
    results = [{"macs": m, "test_acc": float(a), "data": d} for m, a, d in points]
    front = pareto_front(results)
    for k, r in enumerate(results):   # the oracle: sort the same data by MACs, keep the running best accuracy
        same = sorted((o["macs"], -o["test_acc"]) for o in results if o["data"] == r["data"])
        best_below = max([-acc for macs, acc in same if macs < r["macs"]], default=-1.0)
        best_at = max(-acc for macs, acc in same if macs == r["macs"])
        undominated = r["test_acc"] > best_below and r["test_acc"] == best_at
        assert (k in front) == undominated
