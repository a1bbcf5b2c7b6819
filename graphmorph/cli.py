"""The `graphmorph` command line: `flops` and `export` for seed networks."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import torch

from graphmorph import models
from graphmorph.errors import GraphmorphError

EXIT_USAGE = 2      # bad arguments, as argparse uses
EXIT_FAILURE = 1    # the job itself failed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except GraphmorphError as err:
        print(f"graphmorph: error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, ValueError) else EXIT_FAILURE
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphmorph",
        description="Grow and prune PyTorch models as verified torch.fx graph rewrites.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    flops = commands.add_parser(
        "flops", help="count MACs, FLOPs and parameters of a seed net, per stage",
        description="Count MACs, FLOPs (2 x MACs), elementwise ops and parameters of a seed net "
                    "for one image, per stage and in total.",
    )
    _model_arguments(flops)
    flops.add_argument("--json", action="store_true", help="print the report as JSON")
    flops.set_defaults(run=_run_flops)

    export = commands.add_parser(
        "export", help="export a seed net to ONNX and check it in onnxruntime",
        description="Export a seed net to ONNX (dynamic batch), check it with onnx.checker and "
                    "compare onnxruntime with PyTorch.",
    )
    _model_arguments(export)
    export.add_argument("-o", "--output", required=True, help="path of the .onnx file to write")
    export.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (default 1e-4)")
    export.set_defaults(run=_run_export)
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", metavar="ARCH", help=f"architecture: {models.valid_forms()}")
    parser.add_argument("--input-size", type=_positive, default=32, help="input height and width (default 32)")
    parser.add_argument("--in-channels", type=_positive, default=3, help="input channels (default 3)")
    parser.add_argument("--num-classes", type=_positive, default=10, help="classes (default 10)")
    parser.add_argument("--widths", type=_widths, default=None,
                        help="per-stage widths, comma-separated (default: the family's, e.g. 16,32,64)")
    parser.add_argument("--stem", choices=("cifar", "imagenet"), default="cifar",
                        help="cifar: 3x3 stride 1; imagenet: 7x7 stride 2 + max-pool (default cifar)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    return tuple(_positive(part) for part in text.split(","))


def _seed_net(args) -> tuple[torch.nn.Module, torch.Tensor]:
    model = models.build(args.arch, num_classes=args.num_classes, in_channels=args.in_channels,
                         widths=args.widths, stem=args.stem)
    return model, torch.zeros(1, args.in_channels, args.input_size, args.input_size)


def _run_flops(args) -> int:
    from graphmorph.flops import count_flops, si

    model, example = _seed_net(args)
    report = count_flops(model, example)
    if args.json:
        print(json.dumps({
            "arch": models.arch_of(model),
            "input_shape": list(example.shape),
            "macs": report.macs, "flops": report.flops,
            "elementwise": report.elementwise, "params": report.params,
            "by_stage": {part: {"blocks": report.stage_blocks.get(part, 0), "macs": c.macs, "flops": c.flops,
                                "elementwise": c.elementwise, "params": c.params}
                         for part, c in report.by_stage.items()},
        }, indent=2))
        return 0
    print(f"{models.arch_of(model)}  input {'x'.join(map(str, example.shape))}")
    print(report.table())
    print(f"{si(report.macs)} MACs, {si(report.flops)} FLOPs, {si(report.params)} parameters")
    return 0


def _run_export(args) -> int:
    from graphmorph.capture import capture
    from graphmorph.export import export_onnx

    model, example = _seed_net(args)
    report = export_onnx(capture(model, example), args.output, example, atol=args.atol)
    print(f"wrote {report.path} (opset {report.opset}, {report.path.stat().st_size / 1e6:.2f} MB) "
          f"in {report.export_seconds:.1f} s; onnxruntime vs PyTorch at batch {report.check_batch}: "
          f"max abs diff {report.max_abs_diff:.2e} (atol {report.atol:g})")
    return 0
