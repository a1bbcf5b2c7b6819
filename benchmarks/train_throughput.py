"""Training throughput: graphmorph's trainer against the plain PyTorch loop a user would write.

The plain loop is a DataLoader over a TensorDataset, fp32, eager, on the same net (same
initial weights), batch size and device. Variants run interleaved, round after round, so
that drifting machine load hits them alike; each round times `--steps` optimizer steps after
a warm-up, and the table gives the median images/s and its ratio to the plain loop's median.

On a GPU each part of the fast path is added one at a time: data on the device, bf16
autocast, channels_last, torch.compile (its compile time reported apart).

    python benchmarks/train_throughput.py [--nets Basic3ResNet-1-1-1,...] [--size 32]
                                          [--batch 128] [--steps 10] [--repeats 5]

Targets: CPU ratio >= 0.95 (graphmorph's overhead at most 5%); GPU >= 2.5x the plain loop on
Basic3ResNet at batch 128 on CIFAR-sized inputs. Writes results/train_throughput-<device>.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from graphmorph.graph.capture import capture  # noqa: E402
from graphmorph.models import build  # noqa: E402
from graphmorph.run.train import Trainer  # noqa: E402

CPU_NETS = "Basic3ResNet-1-1-1,Plain3Net-1-1-1,Basic3ResNet-3-3-3"
GPU_NETS = "Basic3ResNet-1-1-1,Basic3ResNet-3-3-3,Basic3ResNet-9-9-9,Bottleneck4ResNet-1-1-1-1"
# GPU fast-path steps: (name, Trainer options); each adds one thing to the one before.
GPU_STEPS = (
    ("data on device", dict(bf16=False, channels_last=False)),
    ("+ bf16 autocast", dict(bf16=True, channels_last=False)),
    ("+ channels_last", dict(bf16=True, channels_last=True)),
    ("+ torch.compile", dict(bf16=True, channels_last=True, compile=True)),
)
CPU_STEPS = (("graphmorph trainer", {}),)


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


class PlainLoop:
    """What a user writes by hand: DataLoader, fp32, eager, host data copied per batch."""

    def __init__(self, arch: str, x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device):
        torch.manual_seed(0)
        self.model = build(arch, num_classes=10, in_channels=x.shape[1]).to(device)
        self.optimizer = sgd(self.model)
        self.loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
        self.device, self.batches = device, iter(())

    def steps(self, n: int) -> None:
        self.model.train()
        for _ in range(n):
            try:
                xb, yb = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                xb, yb = next(self.batches)
            xb, yb = xb.to(self.device), yb.to(self.device)
            loss = F.cross_entropy(self.model(xb), yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


class GraphmorphLoop:
    """graphmorph's Trainer on the captured net, with the given fast-path options."""

    def __init__(self, arch: str, x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device, **options):
        torch.manual_seed(0)
        self.trainer = Trainer(device, batch, **options)
        model = build(arch, num_classes=10, in_channels=x.shape[1])
        self.model = self.trainer.place_model(capture(model, x[:1]))
        self.optimizer = sgd(self.model)
        self.x, self.y = self.trainer.place_data(x, y)
        self.generator = torch.Generator().manual_seed(0)

    def steps(self, n: int) -> None:
        self.trainer.train_steps(self.model, self.optimizer, self.x, self.y, self.generator, n)


def timed(loop, steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps, waiting for the device to finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    loop.steps(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def measure(arch: str, args, device: torch.device) -> dict:
    images = max(4 * args.batch, args.batch * args.steps)
    x = torch.randn(images, 3, args.size, args.size)
    y = torch.randint(0, 10, (images,))
    loops = {"plain PyTorch loop": PlainLoop(arch, x, y, args.batch, device)}
    for name, options in (GPU_STEPS if device.type == "cuda" else CPU_STEPS):
        loops[name] = GraphmorphLoop(arch, x, y, args.batch, device, **options)
    warmup_seconds = {name: timed(loop, 2, device) for name, loop in loops.items()}  # compiles, allocates
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.repeats):
        for name, loop in loops.items():
            samples[name].append(args.batch * args.steps / timed(loop, args.steps, device))
    plain = statistics.median(samples["plain PyTorch loop"])
    variants = {}
    for name, values in samples.items():
        variants[name] = {"images_per_s": round(statistics.median(values), 1),
                          "min": round(min(values), 1), "max": round(max(values), 1),
                          "ratio_to_plain": round(statistics.median(values) / plain, 3),
                          "warmup_s": round(warmup_seconds[name], 3)}
    compiled = loops.get("+ torch.compile")
    return {"net": arch, "batch": args.batch, "size": args.size, "steps_per_round": args.steps,
            "rounds": args.repeats, "variants": variants,
            "compile_seconds": compiled.trainer.compile_seconds if compiled else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default=None, help=f"comma-separated archs (CPU default {CPU_NETS})")
    parser.add_argument("--size", type=int, default=32, help="input height and width (32: CIFAR-sized)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round (CPU 4, GPU 50)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.steps = args.steps or (50 if device.type == "cuda" else 4)
    nets = (args.nets or (GPU_NETS if device.type == "cuda" else CPU_NETS)).split(",")
    rows = []
    for arch in nets:
        row = measure(arch, args, device)
        rows.append(row)
        for name, v in row["variants"].items():
            print(f"{arch:<28} {name:<20} {v['images_per_s']:>10.1f} img/s  x{v['ratio_to_plain']:.3f}", flush=True)
    target = ("CPU: graphmorph trainer >= 0.95x the plain loop" if device.type == "cpu" else
              "GPU: full fast path >= 2.5x the plain loop on Basic3ResNet, batch 128, 32x32")
    last = "graphmorph trainer" if device.type == "cpu" else "+ torch.compile"
    ratios = {row["net"]: row["variants"][last]["ratio_to_plain"] for row in rows}
    print("wrote", save("train_throughput", rows, {"target": target, "ratio_to_plain": ratios}))


if __name__ == "__main__":
    main()
