"""NAC: the loop's decisions, a tiny run end to end, resume, baselines, refusals."""
import json
import math
import random

import pytest
import torch
from hypothesis import given, strategies as st

import graphmorph
from graphmorph.search.artifacts import load_checkpoint, replay_onto_fresh
from graphmorph.cli import main
from graphmorph.models import BRANCH_TYPES, build, envelope_arch, structure_label
from graphmorph.search.nac import NACConfig, compare, run
from graphmorph.search.nac_choices import branches_to_prune, random_structure, skips_to_prune

TINY = dict(base="EnvelopeNet-4/1-1/3", iterations=2, steps=6, log_every=3, epochs=1, fraction=0.3, batch_size=32,
            threads=1)


@st.composite
def stages_with_statistics(draw):
    cells = [{"name": f"stage0.cell{k}",
              "branches": draw(st.lists(st.sampled_from(BRANCH_TYPES), min_size=1, max_size=6, unique=True))}
             for k in range(draw(st.integers(1, 4)))]
    values = st.floats(0, 10, allow_nan=False) | st.just(math.nan)
    statistics = {cell["name"]: {b: draw(values) for b in cell["branches"]} for cell in cells}
    return {"cells": cells, "output_skips": []}, statistics


@given(stage=stages_with_statistics(), max_prune=st.integers(0, 6), prune_best=st.booleans())
def test_branch_choices_respect_the_budget_and_keep_a_branch_per_cell(stage, max_prune, prune_best):
    stage, statistics = stage
    chosen = branches_to_prune(stage, statistics, max_prune, prune_best)
    total = sum(len(c["branches"]) for c in stage["cells"])
    assert sum(map(len, chosen.values())) <= min(max_prune, total // 3)
    for cell in stage["cells"]:
        assert len(chosen.get(cell["name"], [])) < len(cell["branches"])
    picked = [statistics[c][b] for c, bs in chosen.items() for b in bs]
    assert not any(math.isnan(v) for v in picked)
    kept = [statistics[c["name"]][b] for c in stage["cells"] for b in c["branches"]
            if b not in chosen.get(c["name"], []) and not math.isnan(statistics[c["name"]][b])
            and len(c["branches"]) - len(chosen.get(c["name"], [])) > 1]
    if picked and kept:  # anything still prunable is no better a candidate than what was picked
        assert (min(kept) <= max(picked)) if prune_best else (max(kept) >= min(picked))
        assert (min(picked) >= min(kept)) if prune_best else (max(picked) <= max(kept))


def test_branch_choices_take_the_lowest_statistics():
    stage = {"cells": [{"name": "c0", "branches": ["conv1x1", "conv3x3", "sep3x3"]},
                       {"name": "c1", "branches": ["conv1x1", "conv3x3", "sep3x3"]}]}
    statistics = {"c0": {"conv1x1": 0.1, "conv3x3": 0.5, "sep3x3": 0.2}, "c1": {"conv1x1": 0.9, "conv3x3": 0.3,
                                                                                "sep3x3": 0.05}}
    assert branches_to_prune(stage, statistics, 4) == {"c1": ["sep3x3"], "c0": ["conv1x1"]}
    assert branches_to_prune(stage, statistics, 1) == {"c1": ["sep3x3"]}
    assert branches_to_prune(stage, statistics, 4, prune_best=True) == {"c1": ["conv1x1"], "c0": ["conv3x3"]}


def test_skip_choices_prune_the_smaller_half_by_magnitude():
    weights = {("r2", "input"): -0.9, ("r2", "cell0"): 0.1, ("r3", "input"): 0.5, ("r3", "cell1"): -0.2,
               ("r3", "cell0"): 2.0}
    assert skips_to_prune(weights) == [("r2", "cell0"), ("r3", "cell1")]
    assert skips_to_prune({("r1", "input"): 1.0}) == []


@given(spec_seed=st.integers(0, 1000), depths=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_random_structures_keep_cells_and_branch_counts_per_stage(spec_seed, depths):
    base = envelope_arch(build(f"EnvelopeNet-2/{'-'.join(map(str, depths))}/4"))
    rng = random.Random(spec_seed)
    base["stages"][0]["cells"][0]["branches"] = ["sep7x7"]
    other = random_structure(base, rng)
    for old, new in zip(base["stages"], other["stages"]):
        assert [c["name"] for c in new["cells"]] == [c["name"] for c in old["cells"]]
        assert sum(len(c["branches"]) for c in new["cells"]) == sum(len(c["branches"]) for c in old["cells"])
        assert all(c["branches"] and len(set(c["branches"])) == len(c["branches"]) for c in new["cells"])
        assert [c["skips"] for c in new["cells"]] == [c["skips"] for c in old["cells"]]
    build(other)  # a valid net


def test_a_tiny_run_writes_a_complete_run_directory(tmp_path):
    result = run(NACConfig(**TINY, baselines=("random", "worst"), n_random=2), tmp_path / "run", progress=lambda _: None)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "log.json", "log.csv", "architecture.json", "architecture.txt", "checkpoint.pt",
            "model.onnx", "result.json", "rewrites.json", "statistics.json", "statistics.png", "iterations.png",
            "comparison.png", "trained.json"} <= files
    assert result["onnx_max_abs_diff"] <= 1e-4
    structure = json.loads((tmp_path / "run" / "architecture.json").read_text())
    assert result["found"] != TINY["base"] and result["found"].startswith("EnvelopeNet-4/3-3 (")
    assert result["found"] == structure_label(structure) and result["architecture"] == "architecture.json"
    trained_names = [net["arch"] for net in json.loads((tmp_path / "run" / "trained.json").read_text())]
    assert len(set(trained_names)) == len(trained_names)   # baselines with other branches have other names
    assert structure != envelope_arch(build(TINY["base"]))
    rebuilt = build(structure, num_classes=10, in_channels=1)
    assert sum(p.numel() for p in rebuilt.parameters()) == result["params"]
    source, rewrites = graphmorph.read_history(tmp_path / "run" / "rewrites.json")
    assert [r["rewrite"] for r in rewrites].count("add_cell") == 4
    assert {"prune_branches", "prune_skips"} <= {r["rewrite"] for r in rewrites}
    assert (source.model, source.input_shape, source.num_classes) == (TINY["base"], (1, 8, 8), 10)
    assert envelope_arch(replay_onto_fresh(source, rewrites)) == structure
    trained, _ = load_checkpoint(tmp_path / "run" / "checkpoint.pt")   # what `graphmorph export --checkpoint` reads
    final = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["final_model"]
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in final.items())
    assert set(result["comparison"]) == {"constructed", "base", "worst", "random"}
    assert result["comparison"]["random"]["count"] == 2
    snapshots = json.loads((tmp_path / "run" / "statistics.json").read_text())
    assert [s["step"] for s in snapshots] == [3, 6, 9, 12]
    assert all(v > 0 for s in snapshots for k, v in s.items() if k not in ("iteration", "step"))


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path):
    config = NACConfig(**{**TINY, "keep_weights": False})
    whole = run(config, tmp_path / "whole", progress=lambda _: None)

    def stop_after_first_iteration(line):
        if line.startswith("iteration 1/"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "cut", progress=stop_after_first_iteration)
    resumed = run(None, tmp_path / "cut", resume=True, progress=lambda _: None)
    drop = ("seconds", "rewrite_seconds")
    rows = [json.loads((tmp_path / name / "log.json").read_text()) for name in ("whole", "cut")]
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows[0]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in rows[1]]
    for key in ("found", "test_acc", "val_acc", "params", "macs"):
        assert resumed[key] == whole[key]


def test_compare_groups_random_nets_with_mean_and_std():
    nets = [{"group": "random", "test_acc": a, "params": 10, "macs": 5} for a in (50.0, 60.0)]
    nets.append({"group": "constructed", "test_acc": 70.0, "params": 20, "macs": 8})
    table = compare(nets)
    assert table["random"]["test_acc_mean"] == 55.0 and table["random"]["test_acc_std"] == pytest.approx(7.0711)
    assert table["constructed"] == {"test_acc_mean": 70.0, "test_acc_std": 0.0, "params_mean": 20, "macs_mean": 8,
                                    "count": 1}


@pytest.mark.parametrize("argv, message", [
    (["nac", "--base", "EnvelopeNet-4/1"], "is not of the form EnvelopeNet-C/n1-n2-.../M"),
    (["nac", "--max-cells", "2,2"], "max_cells needs 3 positive counts"),
    (["nac", "--baseline", "worst", "--epochs", "0"], "baselines are compared after training"),
    (["nac", "--data", "nosuchset"], "nosuchset"),
])
def test_bad_nac_options_exit_with_a_usage_error(argv, message, tmp_path, capsys):
    assert main([*argv, "--run-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
