"""graphmorph's pruning against Torch-Pruning at equal measured MACs: the same trained nets, data,
fine-tuning budget and criterion, 2x and 3x fewer MACs, test accuracy after fine-tuning.

    PYTHONPATH=. .zoo-venv/bin/python benchmarks/prune_compare.py --data-root ../shared/data
        [--nets resnet56,mobilenet_v2] [--criteria l1,l2,taylor,bn_scale,random] [--fraction 0.05]
        [--epochs 8] [--finetune-epochs 2] [--resume]

Runs in the zoo environment (torchvision for MobileNetV2, torch-pruning). Nets: Basic3ResNet-9-9-9
(ResNet-56's layout) on a Fashion-MNIST subset, torchvision's MobileNetV2 on an MNIST subset (the
grey channel repeated to three). Each net is trained once; each (target, criterion, tool) prunes a
copy of it to the target and fine-tunes it with the same SGD schedule and batch order. graphmorph:
`fit_channels` (one verified `prune_filters`, globally ranked, sized by bisection to the target).
Torch-Pruning: `MetaPruner` with `global_pruning=True` and the matching importance
(MagnitudeImportance p=1 / p=2, TaylorImportance, BNScaleImportance, RandomImportance), its
`pruning_ratio` found by bisection to the same target, the classifier kept; for l1 and l2 also
with `group_reduction="first"` (the producing layer's weights alone, as graphmorph scores a
channel; tool `torch_pruning_producers_only`). Both nets' MACs are
counted by the same FlopCounterMode count. Writes results/prune_compare-<device>.json after every
row; `--resume` keeps the rows such a file holds (same budget) and runs the rest.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
import graphmorph  # noqa: E402
from graphmorph.search.budget_fit import fit_channels  # noqa: E402

TARGETS = {"2x": 1 / 2, "3x": 1 / 3}
NETS = ("resnet56", "mobilenet_v2")
CRITERIA = ("l1", "l2", "taylor", "bn_scale", "random")
BATCH, LR = 128, 0.05


class Grey3(nn.Module):
    """A net for 3-channel images fed grey ones: the channel repeated (torchvision's stems take 3)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.expand(-1, 3, -1, -1))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet56":
        return graphmorph.models.build("Basic3ResNet-9-9-9", num_classes=10, in_channels=1)
    import torchvision

    return Grey3(torchvision.models.mobilenet_v2(num_classes=10))


DATA = {"resnet56": "fashion-mnist", "mobilenet_v2": "mnist"}


def macs(model: nn.Module, example: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(example)
    return counter.get_total_flops() // 2


def train(model: nn.Module, data, epochs: int, lr: float, seed: int = 0) -> None:
    """SGD (momentum 0.9, weight decay 5e-4), cosine LR from `lr`, batches in a seeded order."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    order = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(data.train_y) / BATCH)
    step = 0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(data.train_y), generator=order)
        for i in range(0, len(perm), BATCH):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            index = perm[i: i + BATCH]
            optimizer.zero_grad()
            F.cross_entropy(model(data.train_x[index]), data.train_y[index]).backward()
            optimizer.step()
            step += 1


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum((model(x[i: i + 512]).argmax(1) == y[i: i + 512]).sum().item() for i in range(0, len(y), 512))
    return round(100.0 * correct / len(y), 3)


def calibration(data, batches: int = 4):
    return [(data.train_x[i: i + BATCH], data.train_y[i: i + BATCH]) for i in range(0, batches * BATCH, BATCH)]


def graphmorph_pruned(base: nn.Module, target: float, criterion: str, data, example) -> nn.Module:
    gm = graphmorph.capture(copy.deepcopy(base), example)
    fit = fit_channels(gm, target * macs(base, example), "macs", example, criterion=criterion,
                       data=calibration(data) if criterion in ("taylor", "featuremap_l2") else None)
    return fit.model


def torch_pruning_pruned(base: nn.Module, target: float, criterion: str, data, example,
                         reduction: str = "mean") -> nn.Module:
    """Torch-Pruning, global pruning, its ratio bisected until the MACs are nearest the target;
    a magnitude importance reduced over the group by `reduction` ("mean": every layer of the group,
    Torch-Pruning's default; "first": the layer whose output the group prunes only)."""
    import torch_pruning as tp

    importance = {"l1": lambda: tp.importance.MagnitudeImportance(p=1, group_reduction=reduction),
                  "l2": lambda: tp.importance.MagnitudeImportance(p=2, group_reduction=reduction),
                  "taylor": tp.importance.TaylorImportance, "bn_scale": tp.importance.BNScaleImportance,
                  "random": tp.importance.RandomImportance}[criterion]
    goal = target * macs(base, example)

    def pruned(ratio: float) -> nn.Module:
        model = copy.deepcopy(base)
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
        torch.manual_seed(0)      # RandomImportance draws from torch's RNG
        with torch.enable_grad():
            pruner = tp.pruner.MetaPruner(model, example, importance=importance(), global_pruning=True,
                                          pruning_ratio=ratio, ignored_layers=classifier)
            if criterion == "taylor":
                model.eval()
                model.zero_grad()
                for x, y in calibration(data):
                    F.cross_entropy(model(x), y).backward()
            pruner.step()
        model.zero_grad(set_to_none=True)
        return model

    low, high, best = 0.0, 0.95, None
    for _ in range(10):
        middle = (low + high) / 2
        model = pruned(middle)
        cost = macs(model, example)
        if best is None or abs(cost - goal) < abs(best[1] - goal):
            best = (model, cost)
        low, high = (middle, high) if cost > goal else (low, middle)
    return best[0]


def torch_pruning_producers_only(base: nn.Module, target: float, criterion: str, data, example) -> nn.Module:
    """Torch-Pruning with its magnitude importance read from the producing layer alone, as
    graphmorph's l1 and l2 score a channel: does the readers' share explain the difference?"""
    return torch_pruning_pruned(base, target, criterion, data, example, reduction="first")


TOOLS = {"graphmorph": graphmorph_pruned, "torch_pruning": torch_pruning_pruned,
         "torch_pruning_producers_only": torch_pruning_producers_only}
ONLY = {"torch_pruning_producers_only": ("l1", "l2")}      # tools that run for some criteria alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--fraction", type=float, default=0.05, help="share of each data set's training images")
    parser.add_argument("--epochs", type=int, default=8, help="epochs training each net before pruning")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--test-images", type=int, default=2000, help="test images scored (the first ones)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of the results file a run with the same budget left, run the rest")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = earlier_rows(args) if args.resume else []
    print(f"{'net':<13} {'target':<6} {'criterion':<9} {'tool':<14} {'MACs ratio':>10} {'pruned %':>9} "
          f"{'tuned %':>8} {'s':>6}")
    for name in args.nets.split(","):
        data = graphmorph.load_data(f"{DATA[name]}:{Path(args.data_root) / DATA[name]}", fraction=args.fraction)
        example = data.train_x[:1]
        test_x, test_y = data.test_x[: args.test_images], data.test_y[: args.test_images]
        base = build(name)
        began = time.perf_counter()
        train(base, data, args.epochs, LR)
        base_acc, base_macs = accuracy(base, test_x, test_y), macs(base, example)
        unpruned = {"net": name, "data": DATA[name], "target": 1.0, "criterion": None, "tool": "unpruned",
                    "macs": base_macs, "macs_ratio": 1.0, "test_acc": base_acc,
                    "seconds": round(time.perf_counter() - began, 1)}
        kept = next((r for r in rows if r["tool"] == "unpruned" and r["net"] == name), None)
        if kept is not None and (kept["test_acc"], kept["macs"]) != (base_acc, base_macs):
            raise SystemExit(f"{name} trained to {base_acc}% now, {kept['test_acc']}% in the kept rows: "
                             "the run is not reproducible here, start afresh without --resume")
        if kept is None:
            rows.append(unpruned)
        print(f"{name:<13} {'1x':<6} {'-':<9} {'unpruned':<14} {1.0:>10.3f} {base_acc:>9.2f} {base_acc:>8.2f}")
        for label, target in TARGETS.items():
            for criterion in args.criteria.split(","):
                for tool, prune in TOOLS.items():
                    if criterion not in ONLY.get(tool, CRITERIA) or any(r["net"] == name and r["target"] == round(target, 4) and r["criterion"] == criterion
                           and r["tool"] == tool for r in rows):
                        continue
                    began = time.perf_counter()
                    torch.manual_seed(0)
                    model = prune(base, target, criterion, data, example)
                    pruned_acc = accuracy(model, test_x, test_y)
                    train(model, data, args.finetune_epochs, LR / 2, seed=1)
                    row = {"net": name, "data": DATA[name], "target": round(target, 4), "speedup": label,
                           "criterion": criterion, "tool": tool, "macs": macs(model, example),
                           "params": sum(p.numel() for p in model.parameters()),
                           "pruned_acc": pruned_acc, "test_acc": accuracy(model, test_x, test_y),
                           "seconds": round(time.perf_counter() - began, 1)}
                    row["macs_ratio"] = round(row["macs"] / base_macs, 4)
                    rows.append(row)
                    print(f"{name:<13} {label:<6} {criterion:<9} {tool:<14} {row['macs_ratio']:>10.3f} "
                          f"{pruned_acc:>9.2f} {row['test_acc']:>8.2f} {row['seconds']:>6.1f}", flush=True)
                    save_rows(rows, args, done=False)
    save_rows(rows, args, done=True)


BUDGET_KEYS = ("fraction", "epochs", "finetune_epochs", "test_images")


def earlier_rows(args) -> list[dict]:
    """The rows of the recorded results file when its budget is this run's (`--resume`), else none."""
    import json
    import os

    from common import LOCAL, RECORD, RESULTS

    path = (RESULTS if os.environ.get(RECORD) == "1" else LOCAL) / "prune_compare-cpu.json"
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    budget = earlier["summary"]["budget"]
    if any(budget.get(key) != getattr(args, key) for key in BUDGET_KEYS):
        settings = ", ".join(f"{key}={budget.get(key)}" for key in BUDGET_KEYS)
        raise SystemExit(f"{path} was measured with another budget ({settings}): give the same options to resume it")
    return earlier["rows"]


def save_rows(rows: list[dict], args, done: bool) -> None:
    """Write the rows so far with the pairs compared (after every row: an interrupted run keeps them)."""
    pairs = {}
    for row in rows:
        if row["tool"] != "graphmorph":
            continue
        same = {r["tool"]: r for r in rows if r["net"] == row["net"] and r["target"] == row["target"]
                and r["criterion"] == row["criterion"]}
        if "torch_pruning" in same:
            other = same["torch_pruning"]
            pairs[f"{row['net']}/{row['speedup']}/{row['criterion']}"] = {
                "graphmorph": row["test_acc"], "torch_pruning": other["test_acc"],
                "difference": round(row["test_acc"] - other["test_acc"], 3),
                "macs_ratios": [row["macs_ratio"], other["macs_ratio"]],
                **({"torch_pruning_producers_only": same["torch_pruning_producers_only"]["test_acc"]}
                   if "torch_pruning_producers_only" in same else {})}
    wanted = len(NETS) * len(TARGETS) * len(CRITERIA)
    summary = {"budget": {key: getattr(args, key) for key in ("data_root", *BUDGET_KEYS)},
               "complete": len(pairs) == wanted, "pairs": pairs,
               "graphmorph_at_least_as_accurate": sum(p["difference"] >= 0 for p in pairs.values()),
               "pairs_compared": len(pairs), "pairs_in_the_full_comparison": wanted}
    path = save("prune_compare", rows, summary)
    if done:
        print("wrote", path)


if __name__ == "__main__":
    main()
