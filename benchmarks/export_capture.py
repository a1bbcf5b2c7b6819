"""Capture through torch.export against a bare torch.export call, and rewrites on transformers of 6 to 24 layers.

Part 1, the Hugging Face suite (`hf_models.py`): `graphmorph.capture(model, x, method="export")`
(export with free batch and sequence sizes, the lift back to modules, the exactness check and
shape propagation) against two bare calls on the same model, measured in the same run:
`torch.export.export(model, (x,), strict=False)` with static shapes, and the same call with the
free sizes capture asks for (`graphmorph.graph.lifting.export_program`), which is what a graph that
trains at other batch sizes costs torch.export. Target: capture within 3x the bare call. Part 2: LLaMA-style models of 6, 12 and 24
layers (the suite's widths): capture, `prune_filters(0.3)` and `grow(init="zero")`, both verified,
and the exponent fitted to their times against the layer count (1.0 = linear). Run:
    python benchmarks/export_capture.py [--repeats 3]
Prints tables and writes benchmarks/results/export_capture-<device>.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphmorph  # noqa: E402
import hf_models  # noqa: E402
import transforms  # noqa: E402
from common import fitted_exponent, save, start, time_call  # noqa: E402
from graphmorph.graph.lifting import export_program  # noqa: E402

LAYERS = (6, 12, 24)
TARGET = 3.0


def main() -> None:
    args = start(__doc__, repeats=3)
    torch.manual_seed(0)
    rows = []
    print(f"{'model':<10} {'static s':>9} {'free sizes s':>13} {'capture s':>10} {'/ static':>9} {'/ free':>7}")
    for name in hf_models.MODELS:
        model, x = hf_models.build(name), hf_models.example(name)
        if getattr(model.config, "use_cache", False):
            model.config.use_cache = False   # what capture does to its copy: a cache is no tensor output
        static = time_call(lambda: torch.export.export(model, (x,), strict=False), warmup=1, repeats=args.repeats)
        free = time_call(lambda: export_program(model, (x,), {}), warmup=1, repeats=args.repeats)
        ours = time_call(lambda: graphmorph.capture(model, x, method="export"), warmup=1, repeats=args.repeats)
        row = {"part": "capture", "model": name, "torch_export_static": static, "torch_export_free_sizes": free,
               "capture": ours, "ratio_static": round(ours["median_s"] / static["median_s"], 3),
               "ratio": round(ours["median_s"] / free["median_s"], 3)}
        rows.append(row)
        print(f"{name:<10} {static['median_s']:>9.3f} {free['median_s']:>13.3f} {ours['median_s']:>10.3f} "
              f"{row['ratio_static']:>9.2f} {row['ratio']:>7.2f}")
    ratios = [r["ratio"] for r in rows]
    statics = sorted(r["ratio_static"] for r in rows)
    print(f"{'layers':>6} {'nodes':>6} {'capture s':>10} {'prune_filters s':>16} {'grow s':>8}")
    deep = []
    for layers in LAYERS:
        model = _llama(layers)
        x = hf_models.example("llama")
        gm = graphmorph.capture(model, x)
        row = {"part": "rewrites", "layers": layers, "nodes": len(gm.graph.nodes),
               "capture": time_call(lambda: graphmorph.capture(model, x), warmup=0, repeats=args.repeats),
               "prune_filters": time_call(lambda: transforms.prune_filters(gm, 0.3), warmup=0, repeats=args.repeats),
               "grow": time_call(lambda: transforms.grow(gm, 0, init="zero"), warmup=0, repeats=args.repeats)}
        deep.append(row)
        print(f"{layers:>6} {row['nodes']:>6} {row['capture']['median_s']:>10.3f} "
              f"{row['prune_filters']['median_s']:>16.3f} {row['grow']['median_s']:>8.3f}")
    summary = {
        "capture_over_torch_export_max": max(ratios),
        "capture_over_torch_export_median": sorted(ratios)[len(ratios) // 2],
        "capture_over_static_torch_export_max": statics[-1],
        "capture_over_static_torch_export_median": statics[len(statics) // 2],
        "target": TARGET,
        "within_target": max(ratios) <= TARGET,
        **{f"{step}_exponent": round(fitted_exponent(list(LAYERS), [r[step]["median_s"] for r in deep]), 3)
           for step in ("capture", "prune_filters", "grow")},
    }
    print("summary:", summary)
    print("wrote", save("export_capture", rows + deep, summary))


def _llama(layers: int):
    import transformers

    _, config_class, arguments, _ = hf_models.MODELS["llama"]
    config = getattr(transformers, config_class)(**{**arguments, "num_hidden_layers": layers})
    return transformers.LlamaForCausalLM(config).eval()


if __name__ == "__main__":
    main()
