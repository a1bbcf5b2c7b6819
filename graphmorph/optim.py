"""Training state across rewrites: rebuild an optimizer for a new graph, carrying state by name.

The official AutoGrow code remaps optimizer state by `id(param)`, which breaks once a rewrite
copies the model; here every surviving parameter keeps its state (momentum buffers, Adam moments)
under its qualified name, and new parameters start fresh.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["rebuild_optimizer"]


def rebuild_optimizer(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module) -> torch.optim.Optimizer:
    """An optimizer of the same class and hyper-parameters over `new`'s parameters.

    Each parameter group keeps its hyper-parameters and the parameters of `new` that share a
    qualified name with the group's parameters in `old`; parameters only `new` has join the first
    group with fresh state. State of surviving parameters is copied (same shapes required), so the
    old optimizer stays usable. Parameters `new` no longer has are dropped.
    """
    old_names = {id(p): name for name, p in old.named_parameters()}
    new_params = dict(new.named_parameters())
    groups, placed = [], set()
    for group in optimizer.param_groups:
        names = [old_names[id(p)] for p in group["params"] if id(p) in old_names]
        kept = [n for n in names if n in new_params]
        placed.update(kept)
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": [new_params[n] for n in kept]})
    groups[0]["params"] += [p for n, p in new_params.items() if n not in placed]
    rebuilt = type(optimizer)(groups, **optimizer.defaults)
    for old_param, state in optimizer.state.items():
        name = old_names.get(id(old_param))
        if name in new_params and state:
            rebuilt.state[new_params[name]] = {
                k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state.items()
            }
    return rebuilt
