"""Speed of graphmorph.testing: architectures per second the `cnns()` strategy generates, and the
time of one `assert_preserves_function` on a 50-block net.

Generation: hypothesis draws `cnns()` specs under `@given` (generate phase only, no database) and
each is drawn alone, built as an nn.Module, and captured with shapes; the baseline is the same
work on one fixed 4-piece spec, measured in the same run. The assertion compares a zero-init
grown Basic3ResNet-17-17-16 (50 blocks, 51 after growth) against the original in float64, in
eval and train mode; the baseline is one float32 eval forward of the same net on the same input.
Run:
    python benchmarks/testing_helpers.py [--repeats 5]
Writes benchmarks/results/testing_helpers-<device>.json.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hypothesis import Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphmorph  # noqa: E402
import transforms  # noqa: E402
from common import save, start, time_call  # noqa: E402
from graphmorph.testing import CNNSpec, assert_preserves_function, cnns  # noqa: E402

FIXED = CNNSpec(pieces=(("residual", 4, 1), ("bottleneck", 3, 2), ("dense", 4, 1), ("se", 4, 1)))


def per_second(examples: int, work) -> float:
    """Examples per second of `work(spec)` on `examples` drawn `cnns()` specs."""
    @settings(max_examples=examples, phases=[Phase.generate], database=None, deadline=None)
    @given(spec=cnns())
    def run(spec):
        work(spec)

    began = time.perf_counter()
    run()
    return examples / (time.perf_counter() - began)


def generation_rows(examples: int, repeats: int) -> list[dict]:
    steps = {"draw": lambda spec: None, "draw+build": lambda spec: spec.build(),
             "draw+build+capture": lambda spec: graphmorph.capture(spec.build(), spec.example_input())}
    rows = []
    for step, work in steps.items():
        rates = sorted(per_second(examples, work) for _ in range(repeats))
        fixed = time_call(lambda: work(FIXED), repeats=repeats)["median_s"] if step != "draw" else None
        row = {"step": step, "examples": examples, "per_second_median": round(rates[len(rates) // 2], 1),
               "per_second_min": round(rates[0], 1), "per_second_max": round(rates[-1], 1),
               "fixed_spec_per_second": round(1 / fixed, 1) if fixed else None}
        rows.append(row)
        print(f"{step:<20} {row['per_second_median']:>8.1f} architectures/s "
              f"(fixed spec: {row['fixed_spec_per_second'] or '-'} /s)", flush=True)
    return rows


def assertion_rows(repeats: int) -> list[dict]:
    rows = []
    for widths, size in (((16, 32, 64), 32), ((4, 4, 4), 8)):
        model = graphmorph.models.build("Basic3ResNet-17-17-16", widths=widths)
        x = torch.randn(2, 3, size, size)
        gm = graphmorph.capture(model, x)
        grown = transforms.grow(gm, stage=1, init="zero", verify=False)
        blocks = sum(len(s.blocks) for s in graphmorph.find_stages(gm))
        assertion = time_call(lambda: assert_preserves_function(gm, grown, x), repeats=repeats)
        eval_only = time_call(lambda: assert_preserves_function(gm, grown, x, modes=("eval",)), repeats=repeats)
        with torch.no_grad():
            forward = time_call(lambda: gm.eval()(x), repeats=repeats)
        row = {"net": "Basic3ResNet-17-17-16", "blocks": blocks, "widths": list(widths), "input": list(x.shape),
               "assert_preserves_function_eval_train": assertion, "eval_only": eval_only,
               "float32_forward": forward,
               "over_forward": round(assertion["median_s"] / forward["median_s"], 1)}
        rows.append(row)
        print(f"{blocks} blocks, widths {widths}, input {tuple(x.shape)}: assert_preserves_function "
              f"{assertion['median_s'] * 1e3:.0f} ms (eval only {eval_only['median_s'] * 1e3:.0f} ms; "
              f"{row['over_forward']}x a float32 forward)", flush=True)
    return rows


def main() -> None:
    parser_args = start(__doc__, repeats=5)
    examples = 200
    generation = generation_rows(examples, parser_args.repeats)
    assertion = assertion_rows(parser_args.repeats)
    summary = {"architectures_per_second": {r["step"]: r["per_second_median"] for r in generation},
               "assert_preserves_function_50_blocks_s": {f"{r['widths']} {r['input'][2]}px": round(
                   r["assert_preserves_function_eval_train"]["median_s"], 3) for r in assertion}}
    print("wrote", save("testing_helpers", generation + assertion, summary))


if __name__ == "__main__":
    main()
