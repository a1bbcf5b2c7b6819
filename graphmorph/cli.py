"""The `graphmorph` command line: a command per registered search (`autogrow`, the main job; `nac`;
`prune`), and `train`, `replay`, `report`, `flops`, `export`."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from graphmorph import models
from graphmorph.errors import ConfigError, GraphmorphError
from graphmorph.run.rundir import CHECKPOINT, WriteError
from graphmorph.search.algorithms import Algorithm, algorithm, algorithms
from graphmorph.search.options import (add_options, flag_of, given_options, non_negative_float, positive,
                                       positive_float, shape, sizes)

EXIT_USAGE = 2      # bad arguments, as argparse uses
EXIT_FAILURE = 1    # the job itself failed
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with models.size_limits(None, None) if getattr(args, "allow_large", False) else contextlib.nullcontext():
            return args.run(args)
    except KeyboardInterrupt:
        _say(f"interrupted; {_interrupted_state(args)}")
        return EXIT_INTERRUPTED
    except WriteError as err:
        hint = _resume_hint(args)
        _say(f"error: {err}; " + (f"the last checkpoint is kept{hint}" if hint else "free space and run it again"))
        return EXIT_FAILURE
    except GraphmorphError as err:
        _say(f"error: {err}")
        return EXIT_USAGE if isinstance(err, ValueError) else EXIT_FAILURE
    except torch.distributed.DistBackendError as err:  # a peer failed or was stopped mid-collective
        _say(f"error: lost contact with another rank, which failed or was stopped ({str(err).splitlines()[0]}); "
             f"the last checkpoint is kept{_resume_hint(args)}")
        return EXIT_FAILURE
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


def _say(message: str) -> None:
    """A message on stderr, naming the rank in a distributed run."""
    rank = f" (rank {os.environ['RANK']})" if _world_size() > 1 else ""
    print(f"graphmorph{rank}: {message}", file=sys.stderr)


def _tell(line: str) -> None:
    """Print on rank 0 only (every rank of a distributed run would say the same)."""
    if _is_main():
        print(line)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _resume_hint(args) -> str:
    """How to continue the run, when its directory holds a checkpoint; else nothing."""
    run_dir = _run_directory(args)
    if run_dir is None or not (run_dir / CHECKPOINT).is_file():
        return ""
    launcher = f"torchrun --nproc-per-node {_world_size()} -m graphmorph" if _world_size() > 1 else "graphmorph"
    command = _search_kind(args)
    return f": resume with {launcher} {command} --resume {run_dir}"


def _interrupted_state(args) -> str:
    """What an interrupted command left behind, naming only directories that exist."""
    run_dir = _run_directory(args)
    if run_dir is None:
        return "nothing was written"
    if (run_dir / CHECKPOINT).is_file():
        unit = algorithm(_search_kind(args)).unit
        return f"the last completed {unit} is checkpointed in {run_dir}{_resume_hint(args)}"
    if run_dir.is_dir():
        return f"{run_dir} holds no checkpoint yet; remove it and start again"
    return f"it stopped before creating {run_dir}: nothing was written"


def _search_kind(args) -> str:
    """The search a command runs (`train` is AutoGrow without growth)."""
    return "autogrow" if args.command == "train" else args.command


def _run_directory(args) -> Path | None:
    if args.command != "train" and args.command not in algorithms():
        return None
    run_dir = getattr(args, "resume", None) or getattr(args, "run_dir", None)
    return Path(run_dir) if run_dir else None


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the cause, then where the usage is), exit 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graphmorph",
        description="Grow and prune PyTorch models as verified torch.fx graph rewrites.",
    )
    parser.add_argument("--version", action="version", version=f"graphmorph {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for entry in algorithms().values():
        _search_command(commands, entry)

    train = commands.add_parser(
        "train", help="train a fixed net from scratch with the staircase schedule",
        description="Train a fixed network from scratch (staircase LR: x0.1 at 1/2 and 3/4), the baseline for "
                    "AutoGrow's Delta.",
    )
    train.add_argument("arch", metavar="ARCH", help=f"architecture: {models.valid_forms()}")
    add_options(train, algorithm("autogrow").config_type, only=TRAIN_OPTIONS)
    _run_dir_argument(train)
    train.add_argument("--epochs", type=positive, help="epochs (default: the dataset's baseline)")
    train.add_argument("--lr", type=positive_float, help="initial LR (default 0.1 residual, 0.01 plain)")
    train.set_defaults(run=_run_train)

    replay = commands.add_parser(
        "replay", help="re-apply a rewrite history to a fresh model and save the weights",
        description="Build a fresh model (the history's, or --model) under its seed, apply every rewrite of "
                    "HISTORY.json with its recorded seed, and save the weights with the history: the run's "
                    "architecture and, before any training, the same parameters.")
    replay.add_argument("history", metavar="HISTORY.json", help="a history document, e.g. a run's rewrites.json")
    _source_overrides(replay)
    replay.add_argument("-o", "--output", required=True, help="weights file to write, e.g. out.pt")
    _allow_code_argument(replay)
    replay.set_defaults(run=_run_replay)

    report = commands.add_parser(
        "report", help="compare finished runs: a table and accuracy vs FLOPs",
        description="Print a table of finished runs and plot test accuracy against MACs.",
    )
    report.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    report.add_argument("-o", "--output", default="report.png", help="plot to write (default report.png)")
    report.add_argument("--force", action="store_true", help="overwrite the plot if it exists")
    report.set_defaults(run=_run_report)

    flops = commands.add_parser(
        "flops", help="count MACs, FLOPs and parameters of a seed net, per stage",
        description="Count MACs, FLOPs (2 x MACs), elementwise ops and parameters of a seed net "
                    "for one image, per stage and in total.",
    )
    _model_arguments(flops)
    flops.add_argument("--json", action="store_true", help="print the report as JSON")
    flops.set_defaults(run=_run_flops)

    export = commands.add_parser(
        "export", help="export a net, or a checkpoint with its history, to ONNX checked in onnxruntime",
        description="Export a net (ARCH, or package.module:factory) or a trained checkpoint (--checkpoint, its "
                    "architecture rebuilt from its history) to ONNX with a dynamic batch, check it with "
                    "onnx.checker and compare onnxruntime with PyTorch.",
    )
    _model_arguments(export, optional=True)
    export.add_argument("--checkpoint", metavar="FILE",
                        help="weights to export: a run's checkpoint.pt or a graphmorph replay output")
    export.add_argument("--history", metavar="FILE", help="the checkpoint's history (default: inside it, or "
                                                          "rewrites.json beside it)")
    export.add_argument("--normalize", action="store_true",
                        help="put the run's input normalisation into the graph, so it takes raw images (pixels in "
                             "[0, 1]); with --checkpoint of a run on built-in data")
    export.add_argument("-o", "--output", required=True, help="path of the .onnx file to write")
    export.add_argument("--atol", type=positive_float, default=1e-4,
                        help="parity: absolute tolerance, > 0 (default 1e-4)")
    export.add_argument("--rtol", type=non_negative_float, default=1e-5,
                        help="parity: tolerance relative to the largest output magnitude (default 1e-5); "
                             "outputs agree when |ort - torch| <= atol + rtol x max|torch|")
    _allow_code_argument(export)
    export.set_defaults(run=_run_export)
    for name, command in commands.choices.items():
        if name == "report":   # reads results, builds no net
            continue
        command.add_argument("--allow-large", action="store_true",
                             help="build nets past the size limits (100M parameters, 2,000 blocks)")
    return parser


def _model_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument("arch", metavar="ARCH", nargs="?" if optional else None,
                        help=f"architecture: {models.valid_forms()}; or package.module:factory")
    parser.add_argument("--input-size", type=positive, help="input height and width (default 32, or the run's "
                                                            "for a run's architecture.json)")
    parser.add_argument("--in-channels", type=positive, help="input channels (default 3, or the run's)")
    parser.add_argument("--num-classes", type=positive, help="classes (default 10, or the run's)")
    parser.add_argument("--widths", type=sizes, default=None,
                        help="per-stage widths, comma-separated (default: the family's, e.g. 16,32,64)")
    parser.add_argument("--stem", choices=("cifar", "imagenet"),
                        help="seed nets: cifar (3x3 stride 1, the default) or imagenet (7x7 stride 2 + max-pool)")


def _source_overrides(parser: argparse.ArgumentParser) -> None:
    """Options that replace parts of a history's model description."""
    parser.add_argument("--model", help="build this instead of the history's model: ARCH or package.module:factory")
    parser.add_argument("--input-shape", type=shape, metavar="C,H,W", help="one input's shape (default: the history's)")
    parser.add_argument("--num-classes", type=positive, help="classes (default: the history's)")
    parser.add_argument("--seed", type=int, help="seed the fresh model is built under (default: the history's)")


def _search_command(commands, entry: Algorithm) -> None:
    """A search's subcommand: an option per config field, the run directory, --resume."""
    parser = commands.add_parser(entry.kind, help=entry.help, description=entry.description)
    add_options(parser, entry.config_type)
    _run_dir_argument(parser)
    parser.add_argument("--resume", metavar="RUN", help="continue the interrupted run in RUN")
    _allow_code_argument(parser)
    parser.set_defaults(run=lambda args: _run_search(args, entry))


def _allow_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-code", action="append", default=[], metavar="MODULE:FACTORY",
                        help="import and run this factory where a file (a history, a run's settings) names it; "
                             "graphmorph runs no code a file names otherwise (repeatable)")


def _run_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", help="where to write the run (default runs/<kind>-<net>-<data>-<time>)")


# the settings `graphmorph train` takes: the data and the net, no growth
TRAIN_OPTIONS = ("data", "fraction", "val_fraction", "widths", "batch_size", "seed", "device", "threads", "test_every")


def _label_for_path(arch: str) -> str:
    """An architecture as one folder name: an architecture file by its run, '/' and ':' replaced."""
    if arch.endswith(".json"):
        arch = Path(arch).resolve().parent.name + "-" + Path(arch).stem
    return arch.replace("/", "_").replace(":", ".")


def _run_dir(args, kind: str, net: str) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    data = (getattr(args, "data", None) or "digits").partition(":")[0]
    return Path("runs") / f"{kind}-{net}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_search(args, entry: Algorithm) -> int:
    """Resume the run named by --resume, or start one with the options given; print its result."""
    if args.resume:
        _refuse_settings_on_resume(args, entry.config_type)
        where = Path(args.resume)
        result = entry.run(None, where, resume=True, allow_code=args.allow_code)
    else:
        config = entry.config_type.from_dict(given_options(args, entry.config_type))
        where = _run_dir(args, entry.kind, _label_for_path(entry.net(config)))
        args.run_dir = str(where)
        _tell(f"{entry.plan(config)}; writing {where}")
        result = entry.run(config, where)
    for line in entry.summary(result, where):
        _tell(line)
    return 0


def _refuse_settings_on_resume(args, config_type) -> None:
    given = [flag_of(f) for f in dataclasses.fields(config_type) if f.name in given_options(args, config_type)]
    given += ["--run-dir"] if args.run_dir else []
    if given:
        raise ConfigError(f"--resume continues with the run's saved settings; drop {', '.join(given)}")


def _run_train(args) -> int:
    entry = algorithm("autogrow")
    fixed = {"seed_net": args.arch, "grow": "none", **({"finetune_epochs": args.epochs} if args.epochs else {})}
    config = entry.config_type.from_dict({**given_options(args, entry.config_type), **fixed})
    where = _run_dir(args, "train", _label_for_path(args.arch))
    args.run_dir = str(where)
    _tell(f"training {args.arch} on {config.data}; writing {where}")
    for line in entry.summary(entry.run(config, where), where):
        _tell(line)
    return 0


def _run_replay(args) -> int:
    from graphmorph.graph.verify import parameter_count
    from graphmorph.search.artifacts import replay_onto_fresh, save_weights
    from graphmorph.run.history_file import read_history

    recorded, rewrites = read_history(args.history, args.allow_code)
    source = _overridden(recorded, args)
    gm = replay_onto_fresh(source, rewrites)
    save_weights(args.output, gm, source)
    print(f"replayed {len(rewrites)} rewrite(s) on a fresh {source.model}: now {models.arch_of(gm)}, "
          f"{parameter_count(gm):,} parameters; wrote {args.output}")
    return 0


def _overridden(source, args):
    """`source` with the model options given on the command line put in."""
    given = {"model": args.model, "input_shape": args.input_shape, "num_classes": args.num_classes,
             "seed": args.seed}
    changes = {name: value for name, value in given.items() if value is not None}
    if "model" in changes and changes["model"] != source.model:
        changes["widths"] = None
    if "model" in changes:
        changes["unnamed_in"] = None  # named on the command line
    return dataclasses.replace(source, **changes)


def _run_report(args) -> int:
    from graphmorph.run.report import ReportError, plot_tradeoff, read_results, results_table
    from graphmorph.search.algorithms import report_rows, result_kinds

    output = Path(args.output)
    if output.exists() and not args.force:
        raise ReportError(f"{output} exists; pass --force to overwrite it or -o to write elsewhere")
    results, skipped = read_results(args.runs)
    for reason in skipped:
        _say(f"left out {reason}")
    if not results:
        raise ReportError("none of the runs has a result to report")
    rows = report_rows(results)
    print(results_table(rows))
    plot_tradeoff(rows, output, result_kinds())
    print(f"wrote {output}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("graphmorph")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "(not installed)"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _seed_net(args) -> tuple[torch.nn.Module, torch.Tensor]:
    from graphmorph.run.sources import ModelSource, is_factory

    channels, size, classes = _input_of(args)
    example = torch.zeros(1, channels, size, size)
    if is_factory(args.arch):
        source = ModelSource(args.arch, tuple(example.shape[1:]), classes)
        return source.build(), example
    model = models.build(args.arch, num_classes=classes, in_channels=channels,
                         widths=args.widths, stem=args.stem)
    return model, example


def _input_of(args) -> tuple[int, int, int]:
    """Input channels, size and classes: as given, else those of the run whose architecture.json
    ARCH is (its rewrites.json beside it records them), else 3, 32 and 10."""
    channels, size, classes = 3, 32, 10
    beside = Path(args.arch).parent / "rewrites.json" if args.arch.endswith(".json") else None
    if beside is not None and beside.is_file():
        from graphmorph.run.history_file import read_history

        source, _ = read_history(beside)
        (channels, height, width), classes = source.input_shape, source.num_classes
        size = height if height == width else size
    return (args.in_channels or channels, args.input_size or size, args.num_classes or classes)


def _run_flops(args) -> int:
    from graphmorph.graph.capture import capture
    from graphmorph.graph.flops import count_flops, si

    model, example = _seed_net(args)
    model = capture(model, example)  # arch_of reads a user's model from its graph
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


def _architecture_name(gm, fallback: str) -> str:
    """The net's architecture string, or `fallback` for a model whose stages cannot be read."""
    try:
        return models.arch_of(gm)
    except GraphmorphError:
        return fallback


def _run_export(args) -> int:
    from graphmorph.graph.capture import capture
    from graphmorph.graph.export import Normalized, export_onnx
    from graphmorph.run.report import INPUT_NAMES, OUTPUT_NAMES

    if args.checkpoint and args.arch or args.history and not args.checkpoint:
        raise ConfigError("export takes ARCH, or --checkpoint FILE (optionally with --history FILE), not both")
    if args.normalize and not args.checkpoint:
        raise ConfigError("--normalize takes the normalisation a run recorded: pass --checkpoint RUN/checkpoint.pt")
    metadata = {}
    if args.checkpoint:
        from graphmorph.run.report import onnx_metadata
        from graphmorph.search.artifacts import load_checkpoint, saved_normalization

        gm, source = load_checkpoint(args.checkpoint, args.history, args.allow_code)
        example = source.example_input()
        normalization = saved_normalization(args.checkpoint)
        metadata = onnx_metadata(_architecture_name(gm, source.model), normalization)
        if args.normalize:
            if normalization is None:
                raise ConfigError(f"{args.checkpoint} records no input normalisation (its data was used as given, or "
                                  "it is not a run's checkpoint): export it without --normalize")
            gm = Normalized(gm, normalization["mean"], normalization["std"])
            metadata["graphmorph.input"] = "images with pixels in [0, 1]: the normalisation is inside the graph"
    elif args.arch:
        model, example = _seed_net(args)
        gm = capture(model, example)
    else:
        raise ConfigError("export needs ARCH (or package.module:factory), or --checkpoint FILE")
    report = export_onnx(gm, args.output, example, atol=args.atol, rtol=args.rtol, input_names=INPUT_NAMES,
                         output_names=OUTPUT_NAMES, metadata=metadata)
    print(f"wrote {report.path} (opset {report.opset}, {report.path.stat().st_size / 1e6:.2f} MB) "
          f"in {report.export_seconds:.1f} s; onnxruntime vs PyTorch at batch {report.check_batch}: "
          f"max abs diff {report.max_abs_diff:.2e} (tolerance {report.tolerance:.2e} = atol {report.atol:g} "
          f"+ rtol {report.rtol:g} x max|output| {report.output_scale:.3g})")
    return 0
