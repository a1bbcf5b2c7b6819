"""ONNX export with torch's dynamo-based exporter, checked by onnx.checker and onnxruntime; named
inputs and outputs, metadata, and optionally the input normalisation inside the graph."""
from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from graphmorph.errors import ExportError, first_line
from graphmorph.graph.onnx_ops import translation_table
from graphmorph.graph.quiet import quiet_torch_export
from graphmorph.graph.shapes import Inputs, as_inputs, evaluating

__all__ = ["ExportReport", "export_onnx", "Normalized", "onnx_session"]


class Normalized(nn.Module):
    """`model` behind its input normalisation, `(x - mean) / std` per channel: exported, the graph
    takes raw images (for graphmorph's built-in data, pixels in [0, 1])."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def onnx_session(path: str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 threads: int | None = None):
    """An onnxruntime session on `threads` threads, by default torch's setting (which a job's
    `--threads` sets), so onnxruntime does not start a pool of its own on every core; its threads
    sleep rather than spin between runs, leaving the cores to training."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=list(providers))


@dataclass(frozen=True)
class ExportReport:
    """Where the model went, how long export took, and how closely onnxruntime agrees with torch."""

    path: Path
    opset: int
    export_seconds: float
    check_batch: int
    max_abs_diff: float
    atol: float
    rtol: float
    output_scale: float       # max |PyTorch output|, what rtol is relative to
    providers: tuple[str, ...]

    @property
    def tolerance(self) -> float:
        """The largest difference the parity check allowed: atol + rtol x output_scale."""
        return self.atol + self.rtol * self.output_scale


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: torch.Tensor | Inputs,
    dynamic_batch: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    input_names: tuple[str, ...] | None = None,
    output_names: tuple[str, ...] | None = None,
    metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export `model` (in eval mode) to ONNX at `path` and check it.

    Runs onnx.checker, then runs onnxruntime on a batch size different from the example's (when
    `dynamic_batch`) and compares with PyTorch in float32: every output element must satisfy
    |onnxruntime - PyTorch| <= atol + rtol x max |PyTorch output|, so deep nets whose outputs
    run to 1e12 are held to float32 round-off. The file is written beside `path` and moved into
    place only once every check passed: a failed export leaves an existing file as it was.
    Returns the largest absolute difference; raises ExportError naming the cause when export
    fails or the difference exceeds the tolerance. The model's train/eval mode is restored.
    `input_names`/`output_names` name the graph's inputs and outputs; `metadata` is stored in the
    model's metadata_props (onnxruntime: `session.get_modelmeta().custom_metadata_map`).
    """
    if not (atol > 0 and rtol >= 0):
        raise ExportError(f"atol must be > 0 and rtol >= 0, got atol={atol!r}, rtol={rtol!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create the folder for {path}: {err.strerror}") from err
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        report = _export_checked(model, staging, as_inputs(example_input), dynamic_batch, atol, rtol, providers,
                                 (input_names, output_names), metadata or {})
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return dataclasses.replace(report, path=path)


def _export_checked(model, path: Path, inputs, dynamic_batch, atol, rtol, providers, names, metadata) -> ExportReport:
    import onnx

    export_inputs = tuple(_batch_of(t, max(2, t.shape[0])) for t in inputs)  # batch 1 would specialise
    check_batch = export_inputs[0].shape[0] + 1 if dynamic_batch else inputs[0].shape[0]
    check_inputs = tuple(_batch_of(t, check_batch if dynamic_batch else t.shape[0]) for t in inputs)
    if not dynamic_batch:
        export_inputs = inputs

    with evaluating(model):
        start = time.perf_counter()
        program = _export(model, export_inputs, dynamic_batch, *names)
        try:
            program.save(str(path))
            if metadata:
                _store_metadata(path, metadata)
        except OSError as err:
            raise ExportError(f"cannot write into {path.parent}: {err.strerror}") from err
        seconds = time.perf_counter() - start
        expected = [t.float().numpy() for t in _flat_outputs(model(*check_inputs))]

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected the exported model: {first_line(err)}") from err
    session = onnx_session(path, providers)
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), check_inputs)}
    outputs = session.run(None, feeds)
    if len(outputs) != len(expected):
        raise ExportError(f"onnxruntime returned {len(outputs)} outputs, PyTorch {len(expected)}")
    diff = scale = 0.0
    for got, want in zip(outputs, expected):
        if got.shape != want.shape:
            raise ExportError(
                f"onnxruntime output shape {got.shape} differs from PyTorch's {want.shape} at batch "
                f"size {check_batch}; is the batch dimension really dynamic?"
            )
        diff = max(diff, float(abs(got.astype("float64") - want.astype("float64")).max(initial=0.0)))
        scale = max(scale, float(abs(want.astype("float64")).max(initial=0.0)))
    if not diff <= atol + rtol * scale:
        raise ExportError(
            f"parity check failed: onnxruntime and PyTorch differ by up to {diff:.3g} at batch size "
            f"{check_batch}, over the tolerance atol + rtol x max|output| = {atol:g} + {rtol:g} x {scale:.3g} "
            f"(relative difference {diff / scale if scale else float('inf'):.2g}); the file was not written"
        )
    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), 0)
    return ExportReport(path, opset, seconds, check_batch, diff, atol, rtol, scale, tuple(session.get_providers()))


def _store_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
    onnx.save(proto, str(path))


def _export(model: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic_batch: bool,
            input_names: tuple[str, ...] | None, output_names: tuple[str, ...] | None):
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    names = {"input_names": list(input_names) if input_names else None,
             "output_names": list(output_names) if output_names else None}
    with quiet_torch_export():
        try:
            return torch.onnx.export(
                model, inputs, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False, report=False,
                custom_translation_table=translation_table(), **names
            )
        except Exception as err:
            raise ExportError(f"ONNX export failed: {_export_cause(err)}") from err


def _export_cause(err: Exception) -> str:
    """The exporter's own summary of what went wrong, else the innermost error's first line."""
    text = str(err)
    marker = "## Exception summary"
    if marker in text:
        summary = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if summary:
            return re.sub(r"^<class '[\w.]+\.(\w+)'>", r"\1", summary[0])
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {first_line(err)}"


def _batch_of(t: torch.Tensor, batch: int) -> torch.Tensor:
    """A seeded random tensor like `t` with `batch` rows (values differ from the example's)."""
    generator = torch.Generator().manual_seed(batch)
    shape = (batch, *t.shape[1:])
    if t.is_floating_point():
        return torch.randn(shape, generator=generator, dtype=t.dtype)
    return t.repeat((batch // max(1, t.shape[0]) + 1,) + (1,) * (t.dim() - 1))[:batch]


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat_outputs(o)]
    raise ExportError(f"cannot compare an output of type {type(out).__name__}")

