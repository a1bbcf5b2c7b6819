"""Initialisers for a grown block (AutoGrow section 2.2), applied to its last affine layer.

- `zero`: scale and shift 0, so a residual branch adds nothing (ZeroInit, a morphism).
- `uni` / `gau`: scale drawn from uniform / Gaussian noise with standard deviation `std` (1.0 in
  the paper), shift 0. For a conv/linear that ends a branch the std is relative to its fan-in
  (weights ~ std / sqrt(fan_in)), so that "1.0" means a unit-gain layer there too.
- `identity`: for plain conv-BN-ReLU (or VGG's conv-ReLU) blocks, a Net2DeeperNet-style morphism:
  dirac conv, BN passing its input through in eval mode, ReLU idempotent after the previous block's ReLU.
- `adam`: AdamInit, see `adam_init`.

Each is a `GrowthInit` in `GROWTH_INITS`; `register_growth_init` adds your own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from graphmorph.errors import RewriteError
from graphmorph.graph.shapes import evaluating, kept_modes

__all__ = ["GrowthInit", "register_growth_init", "GROWTH_INITS", "INITS", "AdamInitOptions", "zero_init", "noise_init", "identity_init",
           "adam_init"]


@dataclass(frozen=True)
class GrowthInit:
    """What an init does, promises and needs, so that growth, replay and the searches ask it instead
    of naming inits: `set_layer(layer, std, seed)` sets the last affine layer of each of a new
    block's residual branches (a module with `weight` and `bias`, or a layer-scale tensor; None:
    the layer stays as copied, for AdamInit to train); the modes and float64 tolerance in which the
    grown net computes what the old one did (None: it changes the function; a promise growth
    verifies), whether it trains on data after the copy (AdamInit: growth needs `data=`), the init
    that stands in for it where there is no data (a trial growth, a replay of the architecture
    whose trained weights are loaded after), and whether it sets each residual branch's last affine
    layer (every init but identity, which makes a plain block an identity)."""

    name: str
    set_layer: Callable[[nn.Module | torch.Tensor, float, int], None] | None = None
    preserves: tuple[tuple[str, ...], float] | None = None
    needs_data: bool = False
    stand_in: str | None = None
    sets_last_affine: bool = True

    def without_data(self) -> str:
        """The init to apply where no data is: this one, or its stand-in."""
        return self.stand_in if self.needs_data else self.name


def register_growth_init(init: GrowthInit) -> GrowthInit:
    """Make `init` a choice of `grow`, `graphmorph.AutoGrow` and replay, by its name: an init that
    sets each new residual branch's last affine layer with `set_layer`. Where it declares
    `preserves`, every growth checks that promise (the grown net computes what the old one did).
    Identity's whole-block init and AdamInit's training are built in; a name is registered once."""
    if not (isinstance(init, GrowthInit) and init.name and isinstance(init.name, str)):
        raise ValueError(f"register a GrowthInit with a name, got {init!r}")
    if init.name in GROWTH_INITS:
        raise ValueError(f"a growth init named {init.name!r} is registered already; choose another name")
    if not callable(init.set_layer) or init.needs_data or not init.sets_last_affine:
        raise ValueError(f"growth init {init.name!r} must set the last affine layer with set_layer(layer, std, "
                         "seed); identity's whole-block init and AdamInit's training on data are built in")
    GROWTH_INITS[init.name] = init
    return init


# Identity's BN pass-through is exact in float32 (sqrt(1 - eps + eps) == 1); cast to float64, the
# float32-rounded running variance leaves a relative error near 1e-8.
GROWTH_INITS: dict[str, GrowthInit] = {init.name: init for init in (
    GrowthInit("zero", lambda layer, std, seed: zero_init(layer), preserves=(("eval", "train"), 1e-10)),
    GrowthInit("uni", lambda layer, std, seed: noise_init(layer, "uni", std, seed)),
    GrowthInit("gau", lambda layer, std, seed: noise_init(layer, "gau", std, seed)),
    GrowthInit("adam", needs_data=True, stand_in="gau"),
    GrowthInit("identity", preserves=(("eval",), 1e-6), sets_last_affine=False),
)}
INITS = tuple(GROWTH_INITS)          # the built-in ones
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]] | Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@torch.no_grad()
def zero_init(layer: nn.Module | torch.Tensor) -> None:
    """Scale and shift to zero: the layer outputs zeros (a layer-scale parameter: set to zero)."""
    weight, bias = _scale_and_shift(layer)
    weight.zero_()
    if bias is not None:
        bias.zero_()


@torch.no_grad()
def noise_init(layer: nn.Module | torch.Tensor, distribution: str, std: float, seed: int) -> None:
    """Scale drawn from `distribution` ("uni" or "gau") with standard deviation `std`, shift zero.

    Draws on the CPU from a generator seeded with `seed`, so the result is the same on any device.
    """
    weight, bias = _scale_and_shift(layer)
    scale = std if weight.dim() == 1 else std / math.sqrt(weight[0].numel())
    generator = torch.Generator().manual_seed(seed)
    if distribution == "gau":
        draw = torch.randn(weight.shape, generator=generator, dtype=torch.float64) * scale
    else:  # uniform on [-a, a] has standard deviation a / sqrt(3)
        draw = (torch.rand(weight.shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale * math.sqrt(3)
    weight.copy_(draw)
    if bias is not None:
        bias.zero_()


def _scale_and_shift(layer: nn.Module | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's weight and bias, or a layer-scale parameter (a tensor) and no shift."""
    if isinstance(layer, torch.Tensor):
        return layer, None
    return layer.weight, getattr(layer, "bias", None)


@torch.no_grad()
def identity_init(conv: nn.Conv2d, norm: nn.modules.batchnorm._BatchNorm | None) -> None:
    """Conv passes its input through (dirac), BN (where there is one) passes it through in eval mode."""
    nn.init.dirac_(conv.weight)
    if conv.bias is not None:
        conv.bias.zero_()
    if norm is None:
        return
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0 - norm.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
    norm.weight.fill_(1.0)
    norm.bias.zero_()


@dataclass(frozen=True)
class AdamInitOptions:
    """AdamInit settings (paper section 2.2): Adam on the new block's last BN only."""

    lr: float = 1e-3
    weight_decay: float = 5e-4
    max_epochs: int = 10
    tolerance: float = 0.5          # percentage points below the shallower net's training accuracy


def adam_init(
    shallow: nn.Module,
    deep: nn.Module,
    norm: nn.Module,
    new_modules: Iterable[nn.Module],
    data: Batches,
    options: AdamInitOptions = AdamInitOptions(),
) -> dict[str, float]:
    """Optimise only `norm` (the new block's last BN) of `deep` with Adam until the deeper net's
    training accuracy reaches the shallower net's minus `options.tolerance` points, for at most
    `options.max_epochs` epochs over `data` (batches of (inputs, labels), or a callable giving them).

    Old modules run in eval mode throughout, so their parameters and BN statistics stay exactly as
    they were; the new block runs in train mode. Where the target is not reached, the new block keeps
    the state (parameters and BN statistics) of its most accurate epoch, the start included, so
    AdamInit never leaves the deeper net worse than it found it. Returns the epochs run, the epoch
    kept and both accuracies (the deeper net's is that of the state returned).
    """
    if data is None:
        raise RewriteError("init='adam' optimises on training data: pass data=<loader or callable of (x, y) batches>")
    shallow_accuracy = _accuracy(shallow, data)
    trainable = list(norm.parameters())
    frozen = [(p, p.requires_grad) for p in deep.parameters()]
    optimizer = torch.optim.Adam(trainable, lr=options.lr, weight_decay=options.weight_decay)
    new_modules = list(new_modules)
    _calibrate_statistics(deep, new_modules, data)
    epochs, deep_accuracy = 0, _accuracy(deep, data)
    best = (deep_accuracy, epochs, _states(new_modules))
    device = trainable[0].device
    try:
        with kept_modes(deep):
            for p, _ in frozen:
                p.requires_grad_(False)
            for p in trainable:
                p.requires_grad_(True)
            while deep_accuracy < shallow_accuracy - options.tolerance and epochs < options.max_epochs:
                deep.eval()
                for x, y in _batches(data):
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(deep(x.to(device)), y.to(device)).backward()
                    optimizer.step()
                epochs += 1
                deep_accuracy = _accuracy(deep, data)
                if deep_accuracy >= best[0]:
                    best = (deep_accuracy, epochs, _states(new_modules))
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    deep_accuracy, kept_epoch, kept_states = best
    if kept_epoch < epochs:
        for module, state in zip(new_modules, kept_states):
            module.load_state_dict(state)
    return {"epochs": epochs, "kept_epoch": kept_epoch, "shallow_accuracy": shallow_accuracy,
            "deep_accuracy": deep_accuracy}


@torch.no_grad()
def _calibrate_statistics(deep: nn.Module, new_modules: list[nn.Module], data: Batches) -> None:
    """Set each new BN's statistics to those of its input over the training data in eval mode (the
    cumulative average over one pass, in the order the BNs run, each after the ones before it)."""
    norms = {id(m): m for module in new_modules for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}
    device = next(deep.parameters()).device
    with kept_modes(deep):
        deep.eval()
        for norm in _in_running_order(deep, list(norms.values()), data, device):
            momentum, norm.momentum = norm.momentum, None
            norm.reset_running_stats()
            norm.train()
            for x, _ in _batches(data):
                deep(x.to(device))
            norm.eval()
            norm.momentum = momentum


def _in_running_order(deep: nn.Module, norms: list[nn.Module], data: Batches, device) -> list[nn.Module]:
    order: list[nn.Module] = []
    hooks = [norm.register_forward_pre_hook(lambda module, _: order.append(module)) for norm in norms]
    try:
        x, _ = next(iter(_batches(data)))
        deep(x.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return list({id(m): m for m in order}.values())


def _states(modules: list[nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [{name: value.detach().clone() for name, value in module.state_dict().items()} for module in modules]


def _batches(data: Batches):
    return data() if callable(data) else data


def _accuracy(model: nn.Module, data: Batches) -> float:
    """Top-1 accuracy in percent, in eval mode (the model's modes are restored)."""
    device = next(model.parameters()).device
    correct = total = 0
    with evaluating(model):
        for x, y in _batches(data):
            correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
            total += len(y)
    if total == 0:
        raise RewriteError("init='adam' got no training batches from data")
    return 100.0 * correct / total

