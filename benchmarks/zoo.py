"""The real model zoos: capture, FLOPs, stages, ONNX, growth, pruning and widening on torchvision, timm and
Hugging Face transformers models.

Each model runs in its own subprocess with a time limit and gives one JSON line: per check a status
(ok, refused with the reason, wrong, crash, timeout) and its numbers, and Torch-Pruning's result on
the same model when it is installed. Both prune RATIO of every layer (`prune_filters(per_layer=True)`,
Torch-Pruning's default uniform ratio), L2 magnitude, the classifier kept. The summary counts the statuses per check and per family.

Its environment is a second virtual environment (torchvision and timm need a torch build of their
own; the project's stays on torch 2.13 CPU):

    python3 -m venv ../zoo-venv && ../zoo-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        timm torch-pruning "transformers>=5" onnx onnxscript onnxruntime networkx \
        && ../zoo-venv/bin/pip install --no-deps -e .
    ../zoo-venv/bin/python benchmarks/zoo.py --set all --timeout 900

The Hugging Face suite (`--set hf`, models `hf:NAME` of `benchmarks/hf_models.py`, small configs,
nothing downloaded) also checks that the blocks found are the config's layers (`layers`) and that
the graph saves as a torch.export program that reloads with the same output (`program`); it needs
`pip install transformers` in that environment. `--method export` captures every model through
torch.export, to compare the engine on exported graphs with the default capture.

Results: benchmarks/results/zoo-<set>-<device>.jsonl (one line per model) and .json (the summary).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MAX_PARAMS = 150e6
RATIO = 0.3                      # nominal pruning ratio, graphmorph and Torch-Pruning alike
GAP = 0.03                       # the largest MACs-ratio difference from Torch-Pruning counted as matching it
FLOPS_TOLERANCE = 0.01           # |count_flops / FlopCounterMode - 1| above this is wrong
TIMM = ("resnet18", "resnet50d", "resnext26ts", "seresnet18", "convnext_atto", "convnextv2_atto", "efficientnet_b0",
        "tf_efficientnet_b0", "efficientnetv2_rw_t", "mobilenetv3_small_100", "mobilenetv4_conv_small", "ghostnet_100",
        "rexnet_100", "regnetx_002", "regnety_002", "densenet121", "dpn68", "cspdarknet53", "nf_resnet26",
        "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "levit_128s",
        "poolformer_s12", "edgenext_xx_small", "fastvit_t8", "mixer_s16_224", "resmlp_12_224", "mobilevit_xxs",
        "efficientformer_l1", "coatnet_nano_rw_224", "maxvit_nano_rw_256", "hrnet_w18_small", "inception_v3",
        "xception41", "dla34", "repvgg_a0", "mnasnet_100", "lcnet_050", "tinynet_e")
CHECKS = ("capture", "flops", "stages", "layers", "onnx", "program", "grow", "prune", "widen", "torch_pruning")
WIDEN_SEED = 0                   # which group of each kind the widen check draws


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("torchvision", "timm", "all", "hf"), default="all")
    parser.add_argument("--models", help="comma-separated tv:NAME / timm:NAME / hf:NAME instead of a set")
    parser.add_argument("--method", choices=("auto", "fx", "export"), default="auto",
                        help="graphmorph.capture's front-end (default auto: fx where it traces)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model (default 900)")
    parser.add_argument("--size", type=int, help="input height and width where the model runs at it "
                                                 "(default, and for fixed-size models: the model's own)")
    parser.add_argument("--summarise", metavar="JSONL", help="summarise the lines of an earlier (or unfinished) run")
    parser.add_argument("--only", help=f"comma-separated checks to run (default: all of {', '.join(CHECKS)}; "
                                       "capture always runs)")
    parser.add_argument("--keep", metavar="JSONL", help="an earlier run's lines: each model's checks not run now "
                                                        "are carried from it (rerun what a change affects)")
    parser.add_argument("--out", metavar="JSONL", help="where the lines go (default: benchmarks/results/zoo-<set>-<device>.jsonl)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a graphmorph check crashes, is wrong or "
                                                              "times out (CI)")
    parser.add_argument("--one", help=argparse.SUPPRESS)      # a child: check one model, print its line
    parser.add_argument("--tool", choices=("graphmorph", "torch_pruning"), default="graphmorph", help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else set(CHECKS)
    if only - set(CHECKS):
        parser.error(f"unknown checks {sorted(only - set(CHECKS))}; choose from {', '.join(CHECKS)}")
    if args.one:
        print(json.dumps(check_model(args.one, args.size, args.tool, only, args.method)))
        return 0
    if args.summarise:
        rows = [json.loads(line) for line in Path(args.summarise).read_text().splitlines() if line.strip()]
        write_summary(Path(args.summarise), rows)
        return 0
    earlier = {row["model"]: row for row in map(json.loads, Path(args.keep).read_text().splitlines())} \
        if args.keep else {}
    names = args.models.split(",") if args.models else model_names(args.set)
    label = ("custom" if args.models else args.set) + ("-export" if args.method == "export" else "")
    out = Path(args.out) if args.out else RESULTS / f"zoo-{label}-{_device()}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with out.open("w") as stream:
        for k, name in enumerate(names, 1):
            row = run_child(name, args.timeout, args.size, only, args.method)
            if name in earlier:
                row["checks"] = {**earlier[name]["checks"], **row["checks"]}
            rows.append(row)
            stream.write(json.dumps(row) + "\n")
            stream.flush()
            print(f"[{k}/{len(names)}] {name}: " + "  ".join(f"{c} {row['checks'].get(c, {}).get('status', '-')}"
                                                              for c in CHECKS), flush=True)
    write_summary(out, rows)
    failed = [f"{row['model']} {check}: {result['status']} {result.get('detail', '')}" for row in rows
              for check, result in row["checks"].items()
              if check != "torch_pruning" and result["status"] in ("crash", "wrong", "timeout")]
    for line in failed:
        print("FAILED", line)
    return 1 if args.strict and failed else 0


def write_summary(lines: Path, rows: list[dict]) -> None:
    """The summary of `rows` beside their JSON lines (same name, .json), and its table on stdout."""
    summary = summarise(rows)
    lines.with_suffix(".json").write_text(json.dumps({"machine": _machine(), "summary": summary}, indent=2) + "\n")
    print(table(summary))


def model_names(which: str) -> list[str]:
    names = []
    if which in ("torchvision", "all"):
        import torchvision
        for name in torchvision.models.list_models(module=torchvision.models):
            weights = torchvision.models.get_model_weights(name)
            if next(iter(weights)).meta["num_params"] <= MAX_PARAMS:
                names.append(f"tv:{name}")
    if which in ("timm", "all"):
        names += [f"timm:{name}" for name in TIMM]
    if which == "hf":
        from hf_models import MODELS
        names += [f"hf:{name}" for name in MODELS]
    return names


def run_child(name: str, timeout: int, size: int | None, only: set[str], method: str = "auto") -> dict:
    """graphmorph's checks and Torch-Pruning's in two subprocesses, each with its own time limit,
    so that one tool hanging or dying does not take the other's results with it."""
    row = _child(name, timeout, size, only, "graphmorph", "capture", method)
    if "torch_pruning" in only and not name.startswith("hf:"):
        row["checks"].update(_child(name, timeout, size, only, "torch_pruning", "torch_pruning")["checks"])
    return row


def _child(name: str, timeout: int, size: int | None, only: set[str], tool: str, first: str,
           method: str = "auto") -> dict:
    command = [sys.executable, __file__, "--one", name, "--tool", tool, "--only", ",".join(sorted(only)),
               "--method", method, *(["--size", str(size)] if size else [])]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "family": family(name), "seconds": timeout,
                "checks": {first: {"status": "timeout", "detail": f"over {timeout} s"}}}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        detail = f"exit {done.returncode}" + (" (killed: out of memory?)" if done.returncode == -9 else "")
        return {"model": name, "family": family(name), "seconds": round(time.perf_counter() - began, 1),
                "checks": {first: {"status": "crash", "detail": f"{detail}: " + _unplaced(" | ".join(tail))}}}
    return json.loads(lines[-1])


def family(name: str) -> str:
    """tv:resnet50 -> resnet, timm:mobilenetv3_small_100 -> mobilenet, tv:wide_resnet50_2 -> wide_resnet."""
    base = name.split(":", 1)[1]
    stem = re.split(r"[\d_]", base.removeprefix("wide_").removeprefix("tf_"))[0]
    return ("wide_" if base.startswith("wide_") else "") + re.sub(r"(net|next)v$", r"\1", stem)


# ---------------------------------------------------------------------------------------------- one model


def check_model(name: str, size: int | None, tool: str = "graphmorph", only: set[str] = set(CHECKS),
                method: str = "auto") -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model, size = _build(name, size)
    x = _example(name, size)
    began = time.perf_counter()
    checks: dict[str, dict] = {}
    gm = _check(checks, "capture", lambda: _capture(model, x, method)) if tool == "graphmorph" else None
    if gm is not None:
        runs = {"flops": lambda: _flops(model, gm, x), "stages": lambda: _stages(gm), "onnx": lambda: _onnx(gm, x),
                "program": lambda: _program(gm, x), "grow": lambda: _grow(gm),
                "prune": lambda: _prune(gm, heads=name.startswith("hf:")),
                "widen": lambda: _widen(gm)}
        if name.startswith("hf:"):
            runs["layers"] = lambda: _layers(model, gm)
        for check, run in runs.items():
            if check in only:
                _check(checks, check, run)
    if tool == "torch_pruning":
        _check(checks, "torch_pruning", lambda: _torch_pruning(name, size))
    return {"model": name, "family": family(name), "size": size, "seconds": round(time.perf_counter() - began, 1),
            "params": sum(p.numel() for p in model.parameters()), "checks": checks}


def _build(name: str, size: int | None):
    """The model with random weights in eval mode, and its input size: `size` if it runs at it."""
    import torch

    source, model_name = name.split(":", 1)
    if source == "hf":
        import hf_models
        return hf_models.build(model_name), None
    if source == "tv":
        import torchvision
        model = torchvision.models.get_model(model_name, weights=None)
        default = 299 if model_name == "inception_v3" else 224
    else:
        import timm
        model = timm.create_model(model_name, pretrained=False)
        default = model.default_cfg["input_size"][-1]
    model.eval()
    if size and size != default:
        try:
            model(torch.randn(1, 3, size, size))
        except Exception:  # noqa: BLE001 - a fixed-size model (ViT, Swin, ...): its own size
            size = None
    return model, size or default


def _example(name: str, size: int | None):
    """The model's input: a Hugging Face suite model's own (token ids or images), else one image."""
    import torch

    if name.startswith("hf:"):
        import hf_models
        return hf_models.example(name.split(":", 1)[1])
    return torch.randn(1, 3, size, size)


def _check(checks: dict, check: str, run):
    """Run one check: its (status, detail, numbers) go into `checks`; returns what it gives on
    (the captured graph) where that is not numbers."""
    from graphmorph import GraphmorphError

    began = time.perf_counter()
    try:
        status, detail, value = run()
    except GraphmorphError as err:
        status, detail, value = "refused", str(err).splitlines()[0][:300], None
    except Exception as err:  # noqa: BLE001 - a crash is a result here
        frame = traceback.extract_tb(err.__traceback__)[-1]
        status, detail, value = "crash", f"{type(err).__name__}: {str(err)[:200]} ({_where(frame.filename)}:{frame.lineno})", None
    checks[check] = {"status": status, "detail": detail, "seconds": round(time.perf_counter() - began, 1)}
    if isinstance(value, dict):
        checks[check].update(value)
        return None
    return value


def _unplaced(text: str) -> str:
    """`text` with this machine's paths cut down to what lies within site-packages or the project."""
    text = re.sub(r"\S*/site-packages/", "", text)
    return text.replace(str(Path(__file__).resolve().parents[1]) + "/", "")


def _where(filename: str) -> str:
    """A source file named without this machine's paths: within site-packages or the project."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    root = Path(__file__).resolve().parents[1]
    path = Path(filename).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


def _capture(model, x, method: str = "auto"):
    import graphmorph
    gm = graphmorph.capture(model, x, untraceable="leaf", method=method)
    leaves = gm.meta.get("graphmorph.auto_leaves", [])
    return "ok", f"auto leaves: {', '.join(leaves)}" if leaves else "", gm


def _flops(model, gm, x):
    """count_flops against the reference count."""
    import graphmorph
    ratio = graphmorph.count_flops(gm, x).flops / max(1, _reference_flops(model, x))
    status = "ok" if abs(ratio - 1) <= FLOPS_TOLERANCE else "wrong"
    return status, f"count_flops / FlopCounterMode = {ratio:.4f}", {"ratio": round(ratio, 4)}


def _reference_flops(model, x) -> int:
    """FlopCounterMode run as it counts attention everywhere: autograd on (no fused fast path) and
    torch's own attention formula for the CPU kernel it has none for; experts' grouped products,
    for which it has no formula, counted as each routed token's row through its expert."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def attention(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def grouped(a, b, *args, out_shape=None, **kwargs):   # experts: each routed token's row through its expert
        return 2 * a[0] * a[1] * b[-1]

    cpu = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention, torch.ops.aten._grouped_mm: grouped}
    if hasattr(torch.ops, "transformers") and hasattr(torch.ops.transformers, "grouped_mm_fallback"):
        cpu[torch.ops.transformers.grouped_mm_fallback] = grouped
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=cpu) as counter:
        model(x)
    return counter.get_total_flops()


def _stages(gm):
    import graphmorph
    stages = graphmorph.find_stages(gm)
    blocks = [len(s.blocks) for s in stages]
    if not stages:
        return "refused", "no stages: no block with a spatial output was found", None
    return "ok", f"{len(stages)} stages, blocks {blocks}", {"blocks": blocks}


def _layers(model, gm):
    """The blocks found against the layers the model's config asks for."""
    import graphmorph
    import hf_models
    found, expected = sum(len(s.blocks) for s in graphmorph.find_stages(gm)), hf_models.layers(model)
    if expected is None:
        return "refused", f"{found} blocks found; the config gives no layer count", {"blocks": found}
    status = "ok" if found == expected else "wrong"
    return status, f"{found} blocks found, {expected} layers in the config", {"blocks": found, "layers": expected}


def _program(gm, x):
    """save_program's .pt2 round trip (it reloads the file and compares)."""
    import tempfile

    import graphmorph
    from graphmorph.errors import ExportError
    with tempfile.TemporaryDirectory() as folder:
        try:
            report = graphmorph.save_program(gm, Path(folder) / "model.pt2", x)
        except ExportError as err:
            wrong = "differs" in str(err)
            return ("wrong" if wrong else "refused"), str(err).splitlines()[0][:300], None
    return "ok", f"max |reloaded - graph| {report.max_abs_diff:.3g}", {"max_abs_diff": report.max_abs_diff}


def _onnx(gm, x):
    import tempfile

    import graphmorph
    from graphmorph.errors import ExportError
    with tempfile.TemporaryDirectory() as folder:
        try:
            report = graphmorph.export_onnx(gm, Path(folder) / "model.onnx", x)
        except ExportError as err:
            wrong = "differ" in str(err) or "parity" in str(err)
            return ("wrong" if wrong else "refused"), str(err).splitlines()[0][:300], None
    return "ok", f"max |ort - torch| {report.max_abs_diff:.3g}", {"max_abs_diff": report.max_abs_diff}


def _grow(gm):
    """A function-preserving growth of every stage: one more layer in its last dense block, else
    `grow(init="zero")` after a residual or branch block (the copy of a branch block in a new
    shortcut), identity (or ZeroInit in a new shortcut) after a plain one (a refusal, with its
    reason, where the block fits none)."""
    import graphmorph
    import transforms
    grown, reasons, stages = [], {}, graphmorph.find_stages(gm)
    for stage in stages:
        dense = next((b.name for b in reversed(stage.block_info) if _is_dense(gm, b.name)), None)
        try:
            if dense is not None:
                transforms.grow_dense(gm, dense)
            elif stage.block_info[-1].kind != "plain":
                transforms.grow(gm, stage=stage.index, init="zero")
            else:
                _grow_plain(gm, stage.index)
            grown.append(stage.index)
        except graphmorph.RewriteError as err:
            reasons[stage.index] = str(err).splitlines()[0][:200]
    if not stages:
        return "refused", "no stages", None
    status = "ok" if len(grown) == len(stages) else ("refused" if not grown else "partial")
    return status, "; ".join(f"stage {k}: {r}" for k, r in reasons.items()), {"grown": grown, "stages": len(stages)}


def _grow_plain(gm, stage: int) -> None:
    """A plain block: as an identity (conv-BN-ReLU, conv-ReLU), else zero-initialised inside a new
    identity shortcut (a block ending in BatchNorm, MobileNet's); the first refusal if neither applies."""
    import graphmorph
    import transforms
    try:
        transforms.grow(gm, stage=stage, init="identity")
    except graphmorph.RewriteError as identity:
        try:
            transforms.grow(gm, stage=stage, init="zero", shortcut=True)
        except graphmorph.RewriteError:
            raise identity from None


def _is_dense(gm, block: str) -> bool:
    import graphmorph
    import transforms
    try:
        transforms.dense_layer(gm, block)
    except graphmorph.RewriteError:
        return False
    return True


def _prune(gm, heads: bool = False):
    """prune_filters at RATIO per layer; where a grouped convolution's groups round the count, also
    with rounding="up" (Torch-Pruning's count), as `macs_ratio_up`; with `heads`, also with whole
    attention heads as the units, as `macs_ratio_heads`."""
    import graphmorph
    import transforms
    from graphmorph.graph.channels import channel_dependencies, channel_groups
    pruned = transforms.prune_filters(gm, RATIO, criterion="l2", per_layer=True)   # as Torch-Pruning's default
    record = graphmorph.history(pruned)[-1]
    reasons = Counter(reason.split(":")[0][:80] for _, reason in record["skipped"])
    if not record["pruned"]:
        refusals = reasons or Counter(g.refused[:100] for g in channel_groups(gm) if g.refused)
        return "refused", f"every group refused: {dict(refusals.most_common(3))}", {"macs_ratio": 1.0}
    result = {"macs_ratio": _macs_ratio(gm, pruned), "skipped": len(record["skipped"]),
              "skip_reasons": dict(reasons.most_common(5))}
    deps = channel_dependencies(gm)
    if any(len(deps.partition(g)) > 1 for g in deps.groups if g.prunable):
        up = transforms.prune_filters(gm, RATIO, criterion="l2", per_layer=True, rounding="up")
        result["macs_ratio_up"] = _macs_ratio(gm, up)
    if heads:
        result["macs_ratio_heads"] = _macs_ratio(gm, transforms.prune_filters(gm, RATIO, per_layer=True, heads=True))
    return "ok", f"{len(record['skipped'])} groups skipped" if reasons else "", result


def _widen(gm):
    """`transforms.widen` (verified: the function preserved in float64) of one group of each kind,
    drawn at random among the groups `prune_channels` accepts and widening accepts too: a layer's
    own channels, channels several layers share (residual adds, concatenations), a grouped
    convolution's; by one channel per group of the convolution, with init "zero" and "split". The
    prunable groups widening refuses are counted by reason (a norm or mean over the channels,
    attention scores: what new channels would change); a failed verification is wrong."""
    import random

    import transforms
    from graphmorph import GraphmorphError
    from graphmorph.graph.channel_surgery import check_removal
    from graphmorph.graph.channels import channel_dependencies
    from graphmorph.graph.memo import unchanged

    kinds: dict[str, list] = defaultdict(list)
    refusals: Counter = Counter()
    with unchanged(gm):
        deps = channel_dependencies(gm)
        for group in deps.groups:
            if group.refused or check_removal(gm, deps, deps.removal(deps.group_classes(group)[:1])) is not None:
                continue
            runs = len(deps.partition(group))
            reason = transforms.Widen(group.producers[0], runs).refusal(gm)
            if reason is not None:
                refusals[re.sub(r"^.*?: \S+ \(.*?\) ", "", str(reason))] += 1
                continue
            kinds["grouped" if runs > 1 else "shared" if len(group.producers) > 1 else "own"].append((group, runs))
    if not kinds:
        return "refused", "; ".join(f"{n} groups: {r}" for r, n in refusals.items()) or "no prunable group", None
    chooser, widened = random.Random(WIDEN_SEED), []
    for kind, groups in sorted(kinds.items()):
        group, runs = chooser.choice(groups)
        for init in ("zero", "split"):
            try:
                transforms.widen(gm, group.producers[0], runs, init)
            except GraphmorphError as err:
                return "wrong", f"{group.producers[0]} ({init}): {str(err)[:200]}", None
            widened.append(f"{kind}:{init}")
    accepted = sum(len(groups) for groups in kinds.values())
    return "ok", "; ".join(f"{n} groups: {r}" for r, n in refusals.items()), {
        "widened": widened, "accepted_groups": accepted, "refused_groups": sum(refusals.values())}


def _macs_ratio(before, after) -> float:
    import graphmorph
    return round(graphmorph.count_flops(after).macs / graphmorph.count_flops(before).macs, 4)


def _torch_pruning(name: str, size: int):
    """Torch-Pruning 1.x on a fresh copy: magnitude (L2) importance, RATIO per layer, classifier kept;
    its MACs ratio by the same reference count as graphmorph's (Torch-Pruning's own counter counts
    other ops: 0.525 against 0.551 on timm's MobileNetV3-Small)."""
    import torch
    try:
        import torch_pruning as tp
    except ImportError:
        return "refused", "torch-pruning is not installed", None
    model, _ = _build(name, size)
    x = torch.randn(1, 3, size, size)
    classes = _num_classes(model)   # the classifier: a Linear, or a 1x1 convolution as in SqueezeNet
    classifier = [m for m in model.modules() if (isinstance(m, torch.nn.Linear) and m.out_features == classes)
                  or (isinstance(m, torch.nn.Conv2d) and m.out_channels == classes)]
    before = _reference_flops(model, x)      # the count graphmorph's ratio is checked against
    with torch.enable_grad():
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=RATIO, ignored_layers=classifier)
        pruner.step()
    return "ok", "", {"macs_ratio": round(_reference_flops(model, x) / before, 4)}


def _num_classes(model) -> int:
    return getattr(model, "num_classes", 1000)


# ---------------------------------------------------------------------------------------------- summary


def summarise(rows: list[dict]) -> dict:
    totals = {c: Counter(r["checks"].get(c, {}).get("status", "not run") for r in rows) for c in CHECKS}
    by_family: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for row in rows:
        for check in CHECKS:
            by_family[row["family"]][check][row["checks"].get(check, {}).get("status", "not run")] += 1
    both = [(r["model"], r["checks"]["prune"], r["checks"]["torch_pruning"]["macs_ratio"]) for r in rows
            if r["checks"].get("prune", {}).get("status") == "ok"
            and r["checks"].get("torch_pruning", {}).get("status") == "ok"]
    gaps = {model: {"graphmorph": ours["macs_ratio"], "rounding_up": ours.get("macs_ratio_up"), "torch_pruning": tp}
            for model, ours, tp in both if abs(ours["macs_ratio"] - tp) > GAP}
    return {"models": len(rows), "totals": {c: dict(v) for c, v in totals.items()},
            "by_family": {f: {c: dict(v) for c, v in checks.items()} for f, checks in sorted(by_family.items())},
            "macs_ratio_pairs": len(both),
            "macs_ratio_median": {"graphmorph": _median([o["macs_ratio"] for _, o, _ in both]),
                                  "torch_pruning": _median([tp for _, _, tp in both])},
            "macs_ratio_gaps": gaps}


def table(summary: dict) -> str:
    statuses = ("ok", "partial", "refused", "wrong", "crash", "timeout", "not run")
    lines = [f"{summary['models']} models", f"{'check':<14}" + "".join(f"{s:>9}" for s in statuses)]
    for check, counts in summary["totals"].items():
        lines.append(f"{check:<14}" + "".join(f"{counts.get(s, 0):>9}" for s in statuses))
    medians = summary["macs_ratio_median"]
    lines.append(f"median MACs ratio at {RATIO} on the {summary['macs_ratio_pairs']} models both prune: "
                 f"graphmorph {medians['graphmorph']}, Torch-Pruning {medians['torch_pruning']}; "
                 f"within {GAP} on {summary['macs_ratio_pairs'] - len(summary['macs_ratio_gaps'])}, beyond it:")
    for model, ratios in summary["macs_ratio_gaps"].items():
        up = f" (rounding up: {ratios['rounding_up']})" if ratios["rounding_up"] is not None else ""
        lines.append(f"  {model:<28} graphmorph {ratios['graphmorph']}{up}, Torch-Pruning {ratios['torch_pruning']}")
    lines.append("")
    lines.append(f"{'family':<16}{'models':>7}  grow ok/partial/refused  prune ok/refused  widen ok/partial/refused"
                 "  crash  wrong  Torch-Pruning crash")
    for name, checks in summary["by_family"].items():
        models = sum(checks["capture"].values())
        grow, prune, widen = checks["grow"], checks["prune"], checks["widen"]
        ours = [counts for check, counts in checks.items() if check != "torch_pruning"]
        bad = {s: sum(c.get(s, 0) for c in ours) for s in ("crash", "wrong")}
        lines.append(f"{name:<16}{models:>7}  {grow.get('ok', 0):>7}/{grow.get('partial', 0)}/{grow.get('refused', 0):<10}"
                     f"  {prune.get('ok', 0):>8}/{prune.get('refused', 0):<7}"
                     f"  {widen.get('ok', 0):>8}/{widen.get('partial', 0)}/{widen.get('refused', 0):<13}"
                     f"  {bad['crash']:>5}  {bad['wrong']:>5}"
                     f"  {checks['torch_pruning'].get('crash', 0):>19}")
    return "\n".join(lines)


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return round(values[len(values) // 2], 4) if values else None


def _device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _machine() -> dict:
    import os
    import platform

    import torch
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


if __name__ == "__main__":
    sys.exit(main())
