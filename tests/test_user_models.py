"""AutoGrow on a user's own model (`--model module:factory`), the versioned rewrite history,
`graphmorph replay` and `graphmorph export --checkpoint`, and what each refuses."""
import json

import pytest
import torch

import graphmorph
import transforms
from graphmorph.search.artifacts import load_checkpoint
from graphmorph.cli import main
from graphmorph.models import arch_of
from graphmorph.search.autogrow import AutoGrowConfig, run

ALLOW = ["--allow-code", "user_models:gated"]   # histories naming a factory build it only when the user names it
TINY = {"model": "user_models:gated", "input_shape": (1, 8, 8), "K": 1, "J": 1, "max_growth_epochs": 4,
        "finetune_epochs": 1, "fraction": 0.5, "batch_size": 64, "device": "cpu"}


@pytest.fixture(scope="module")
def grown_run(tmp_path_factory):
    where = tmp_path_factory.mktemp("user") / "run"
    return where, run(AutoGrowConfig.from_dict(TINY), where, progress=lambda line: None)


@pytest.mark.slow
def test_autogrow_grows_a_users_model_and_records_its_history(grown_run):
    where, result = grown_run
    source, rewrites = graphmorph.read_history(where / "rewrites.json")
    assert (source.model, source.input_shape, source.num_classes) == ("user_models:gated", (1, 8, 8), 10)
    assert result["seed_arch"] == "user_models:gated" and result["found"].startswith("GatedNet-")
    depths = [int(d) for d in result["found"].split("-")[1:]]
    grown = [sum(1 for r in rewrites if r["stage"] == stage) for stage in range(len(depths))]
    assert depths == [1 + g for g in grown] and sum(grown) >= 2   # per-stage counts = the history's growths
    assert {r["rewrite"] for r in rewrites} == {"grow"} and (where / "model.onnx").stat().st_size > 0


@pytest.mark.slow
def test_replay_of_a_runs_history_rebuilds_its_architecture_and_export_takes_its_checkpoint(grown_run, tmp_path,
                                                                                            capsys):
    where, result = grown_run
    assert main(["replay", str(where / "rewrites.json"), "-o", str(tmp_path / "out.pt"), *ALLOW]) == 0
    replayed = torch.load(tmp_path / "out.pt", weights_only=True)
    trained = torch.load(where / "checkpoint.pt", weights_only=True)["model"]
    assert {k: v.shape for k, v in replayed["model"].items()} == {k: v.shape for k, v in trained.items()}
    assert f"now {result['found']}" in capsys.readouterr().out
    gm, _ = load_checkpoint(where / "checkpoint.pt", allow_code=["user_models:gated"])  # history and weights in it
    assert arch_of(gm) == result["found"]
    assert all(torch.equal(gm.state_dict()[k], v) for k, v in trained.items())
    assert main(["export", "--checkpoint", str(tmp_path / "out.pt"), "-o", str(tmp_path / "net.onnx"), *ALLOW]) == 0
    assert (tmp_path / "net.onnx").stat().st_size > 0 and "max abs diff" in capsys.readouterr().out


@pytest.mark.parametrize("model, widths", [("user_models:gated", None), ("Plain3Net-1-1-1", (4, 4, 4))])
def test_replay_gives_a_fresh_model_the_same_architecture_and_parameters(tmp_path, model, widths):
    source = graphmorph.ModelSource(model, (1, 8, 8), 10, widths=widths, seed=7)
    gm = source.capture()
    generator = torch.Generator().manual_seed(1)
    for stage, init in [(0, "gau"), (1, "uni"), (0, "zero" if model.startswith("user") else "identity")]:
        gm = transforms.grow(gm, stage=stage, init=init, generator=generator)
    (tmp_path / "h.json").write_text(json.dumps(graphmorph.history_document(source, graphmorph.history(gm))))
    assert main(["replay", str(tmp_path / "h.json"), "-o", str(tmp_path / "out.pt"), *ALLOW]) == 0
    replayed = torch.load(tmp_path / "out.pt", weights_only=True)
    assert replayed["history"]["rewrites"] == graphmorph.history(gm)
    assert replayed["model"].keys() == gm.state_dict().keys()
    assert all(torch.equal(v, gm.state_dict()[k]) for k, v in replayed["model"].items())


@pytest.mark.parametrize("args, message", [
    (["--model", "user_models:mlp"], "user_models:mlp has no block AutoGrow can grow. Blocks considered: "
                                     "1 (plain, 64 -> 32); 3 (plain, 32 -> 10). No block has a spatial"),
    (["--model", "user_models:dense_only"], "Blocks considered: grow1 (dense, 4x8x8 -> 8x8x8). Stage 0: block "
                                            "'grow1' is not shape-preserving"),
    (["--model", "user_models"], "model must be package.module:factory"),
    (["--model", "user_models:missing"], "'user_models' has no 'missing'"),
    (["--model", "no_such_module:make"], "cannot import 'no_such_module'"),
    (["--model", "user_models:not_a_model"], "returned a str; it must return a torch.nn.Module"),
    (["--model", "user_models:hundred_classes"], "gives outputs of shape (1, 100)"),
    (["--model", "user_models:gated", "--input-shape", "3,32,32"], "does not match the data: digits has 1x8x8"),
    (["--model", "user_models:gated", "--widths", "4,4"], "widths apply to seed nets"),
])
def test_autogrow_refuses_a_model_it_cannot_grow_with_the_reason(tmp_path, monkeypatch, refused, args, message):
    monkeypatch.chdir(tmp_path)
    code, err = refused(["autogrow", *args, "--device", "cpu"])
    assert code == 2 and message in err
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_a_stage_that_cannot_grow_is_reported_and_left_out(tmp_path):
    lines = []
    config = AutoGrowConfig.from_dict({**TINY, "model": "user_models:half_dense", "max_growth_epochs": 2,
                                       "finetune_epochs": 0})
    result = run(config, tmp_path / "run", progress=lines.append)
    assert lines[0].startswith("stage 0 will not grow: block 'grow1' is not shape-preserving")
    _, rewrites = graphmorph.read_history(tmp_path / "run" / "rewrites.json")
    assert rewrites and {r["stage"] for r in rewrites} == {1}
    assert result["found"] == f"HalfDense-1-{1 + len(rewrites)}"


def test_model_and_seed_net_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["autogrow", "--model", "user_models:gated", "--seed-net", "Basic3ResNet"])
    assert exit.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.fixture
def history_file(tmp_path):
    source = graphmorph.ModelSource("user_models:gated", (1, 8, 8), 10)
    gm = transforms.grow(source.capture(), stage=0, init="gau")
    document = graphmorph.history_document(source, graphmorph.history(gm))
    path = tmp_path / "h.json"
    path.write_text(json.dumps(document))
    return path, document


@pytest.mark.parametrize("change, options, message", [
    (lambda d: {**d, "version": 2}, [], "has history version 2; this graphmorph reads version 1; upgrade"),
    (lambda d: d["rewrites"], [], "is a bare list of rewrites, from graphmorph before history version 1"),
    (lambda d: {**d, "format": "other"}, [], "is not a graphmorph history"),
    (lambda d: d, ["--model", "user_models:dense_only"],
     "history record 0 (grow) does not fit the model: no block named 'early.0'"),
    (lambda d: {**d, "rewrites": [{**d["rewrites"][0], "init": "adam"}]}, [], "grow with AdamInit"),
    (lambda d: {**d, "rewrites": [{"rewrite": "shrink"}]}, [], "history record 0 has unknown rewrite 'shrink'"),
])
def test_replay_refuses_a_history_it_cannot_apply(history_file, tmp_path, refused, change, options, message):
    path, document = history_file
    path.write_text(json.dumps(change(document)))
    code, err = refused(["replay", str(path), *options, "-o", str(tmp_path / "out.pt"), *ALLOW])
    assert code in (1, 2) and message in err and not (tmp_path / "out.pt").exists()


def test_export_refuses_weights_that_do_not_fit_their_history(history_file, tmp_path, refused):
    path, document = history_file
    assert main(["replay", str(path), "-o", str(tmp_path / "grown.pt"), *ALLOW]) == 0
    path.write_text(json.dumps({**document, "rewrites": []}))
    code, err = refused(["export", "--checkpoint", str(tmp_path / "grown.pt"), "--history", str(path),
                          "-o", str(tmp_path / "n.onnx"), *ALLOW])
    assert code == 2 and "do not fit user_models:gated after its 0 rewrites" in err
    torch.save({"model": {}}, tmp_path / "bare.pt")
    code, err = refused(["export", "--checkpoint", str(tmp_path / "bare.pt"), "-o", str(tmp_path / "n.onnx")])
    assert code == 2 and "no history inside it and no rewrites.json beside it" in err
    code, err = refused(["export", "Basic3ResNet-1-1-1", "--checkpoint", str(tmp_path / "bare.pt"),
                          "-o", str(tmp_path / "n.onnx")])
    assert code == 2 and "not both" in err


def test_flops_takes_a_factory_in_place_of_an_arch(capsys):
    assert main(["flops", "user_models:gated", "--input-size", "8", "--in-channels", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = graphmorph.ModelSource("user_models:gated", (1, 8, 8), 10).build()
    assert report["arch"] == "GatedNet-1-1" and report["params"] == sum(p.numel() for p in model.parameters())
