"""ONNX export time, and onnxruntime inference latency against torch eager, for the seed nets and
a found net.

Each net is captured, exported with `graphmorph.export_onnx` (timed, parity checked), then
inference at batch 1 and at `--batch` is timed interleaved: torch eager (no_grad, eval) and an
onnxruntime session (CPU provider; also CUDA when a GPU is at hand), median of `--repeats`
rounds after a warm-up.

    python benchmarks/export.py [--nets ...] [--size 32] [--batch 64] [--repeats 20]

Writes results/export-<device>.json.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from graphmorph.graph.capture import capture  # noqa: E402
from graphmorph.graph.export import export_onnx  # noqa: E402
from graphmorph.models import build  # noqa: E402

# The seed nets at one block per stage, and the net AutoGrow found on digits (benchmarks/README.md).
NETS = "Basic3ResNet-1-1-1,Basic4ResNet-1-1-1-1,Bottleneck4ResNet-1-1-1-1,Plain3Net-1-1-1,Plain4Net-1-1-1-1," \
       "Basic3ResNet-4-4-4"


def providers() -> list[tuple[str, str]]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [("onnxruntime CPU", "CPUExecutionProvider")]
    if torch.cuda.is_available() and "CUDAExecutionProvider" in available:
        chosen.append(("onnxruntime CUDA", "CUDAExecutionProvider"))
    return chosen


def measure(arch: str, args, folder: Path) -> dict:
    import onnxruntime as ort

    torch.manual_seed(0)
    gm = capture(build(arch, num_classes=10), torch.zeros(1, 3, args.size, args.size)).eval()
    report = export_onnx(gm, folder / f"{arch}.onnx", torch.zeros(2, 3, args.size, args.size))
    row = {"net": arch, "export_s": round(report.export_seconds, 3), "parity_max_abs_diff": report.max_abs_diff,
           "latency_ms": {}}
    devices = [("torch eager CPU", torch.device("cpu"))]
    if torch.cuda.is_available():
        devices.append(("torch eager CUDA", torch.device("cuda")))
    for batch in (1, args.batch):
        x = torch.randn(batch, 3, args.size, args.size)
        runners = {}
        for name, device in devices:
            model = gm if device.type == "cpu" else copy.deepcopy(gm).to(device)
            xd = x.to(device)

            def eager(model=model, xd=xd, device=device):
                with torch.no_grad():
                    model(xd)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            runners[name] = eager
        for name, provider in providers():
            session = ort.InferenceSession(str(report.path), providers=[provider])
            feed = {session.get_inputs()[0].name: x.numpy()}
            runners[name] = lambda session=session, feed=feed: session.run(None, feed)
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for fn in runners.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runners.items():
                began = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - began)
        row["latency_ms"][f"batch {batch}"] = {name: round(1000 * statistics.median(v), 3)
                                               for name, v in samples.items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=NETS)
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.nets.split(","):
            row = measure(arch, args, Path(folder))
            rows.append(row)
            cells = "  ".join(f"{batch}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in timing.items())
                              for batch, timing in row["latency_ms"].items())
            print(f"{arch:<28} export {row['export_s']:.2f} s  {cells}", flush=True)
    speedups = {row["net"]: {batch: round(t["torch eager CPU"] / t["onnxruntime CPU"], 2)
                             for batch, t in row["latency_ms"].items()} for row in rows}
    print("onnxruntime CPU speed-up over torch eager CPU:", speedups)
    print("wrote", save("export", rows, {"ort_cpu_speedup_over_eager_cpu": speedups,
                                         "median_export_s": statistics.median(r["export_s"] for r in rows)}))


if __name__ == "__main__":
    main()
