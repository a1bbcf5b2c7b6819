"""Training state across rewrites: rebuild an optimizer for a new graph, carrying state by name.

The official AutoGrow code remaps optimizer state by `id(param)`, which breaks once a rewrite
copies the model; here every surviving parameter keeps its state (momentum buffers, Adam moments)
under its qualified name, and new parameters start fresh.
"""
from __future__ import annotations

import torch
from torch import nn

from graphmorph.graph.channel_surgery import KEPT_KEY, apply_kept

__all__ = ["rebuild_optimizer", "optimizer_state", "restore_optimizer"]


def rebuild_optimizer(optimizer: torch.optim.Optimizer, old: nn.Module, new: nn.Module) -> torch.optim.Optimizer:
    """An optimizer of the same class and hyper-parameters over `new`'s parameters.

    Each parameter group keeps its hyper-parameters and the parameters of `new` that share a
    qualified name with the group's parameters in `old`; parameters only `new` has join the first
    group with fresh state; each group lists its parameters in `new`'s order, so an optimizer saved
    after the rebuild loads into one built on `new` afresh. State of surviving parameters is copied, so the old optimizer stays
    usable; a parameter a pruning rewrite sliced gets its state sliced by the same indices (the
    momentum of surviving channels is kept); a widening's new channels start with zero state. Parameters `new` no longer has are dropped.
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
    position = {id(p): index for index, p in enumerate(new_params.values())}
    for group in groups:   # in `new`'s order, as an optimizer built on `new` has them (index-keyed state loads)
        group["params"].sort(key=lambda p: position[id(p)])
    rebuilt = type(optimizer)(groups, **optimizer.defaults)
    kept = getattr(new, "meta", {}).get(KEPT_KEY, {})
    for old_param, state in optimizer.state.items():
        name = old_names.get(id(old_param))
        if name in new_params and state:
            rebuilt.state[new_params[name]] = {
                k: _carried(v, old_param, new_params[name], kept.get(name), name) for k, v in state.items()
            }
    return rebuilt


def _carried(value, old_param: torch.Tensor, new_param: torch.Tensor, kept: dict | None, name: str):
    """A state entry for the new parameter: copied, or sliced like the parameter was."""
    if not torch.is_tensor(value):
        return value
    value = value.detach()
    if value.shape == old_param.shape and old_param.shape != new_param.shape:
        if kept is None or list(kept["old_shape"]) != list(old_param.shape):
            raise ValueError(f"parameter {name} changed shape from {tuple(old_param.shape)} to "
                             f"{tuple(new_param.shape)} and the new model does not say how; rebuild the "
                             f"optimizer after each pruning rewrite")
        return apply_kept(value, kept["steps"], fresh=0.0).clone()   # channels a widening added start afresh
    return value.clone()


def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """The optimizer's groups and state keyed by parameter name, for checkpoints that outlive the
    model object (a resumed run rebuilds the graph, so parameter order and identity change)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        "groups": [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
                   for g in optimizer.param_groups],
        "state": {names[id(p)]: dict(s) for p, s in optimizer.state.items() if id(p) in names},
    }


def restore_optimizer(optimizer_class: type[torch.optim.Optimizer], model: nn.Module, saved: dict) -> torch.optim.Optimizer:
    """Rebuild an optimizer saved with `optimizer_state` over `model`'s parameters of the same names."""
    params = dict(model.named_parameters())
    missing = [n for g in saved["groups"] for n in g["params"] if n not in params]
    if missing:
        raise ValueError(f"the model lacks parameters the optimizer state names: {', '.join(missing[:5])}")
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[n] for n in g["params"]]}
              for g in saved["groups"]]
    optimizer = optimizer_class(groups)
    for name, state in saved["state"].items():
        optimizer.state[params[name]] = {k: v.to(params[name].device) if torch.is_tensor(v) and v.dim() else v
                                         for k, v in state.items()}
    return optimizer
