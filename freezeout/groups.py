"""Optimizer parameter groups laid out the way FreezeOut drives them: one per layer, then the rest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

__all__ = ["check_layers", "check_optimizer_layout", "param_groups", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``DistributedDataParallel``/``DataParallel`` (or the model itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def check_layers(layers: Sequence[nn.Module]) -> list[nn.Module]:
    """Validate a list of freezable layers: non-empty, modules, no layer or parameter twice."""
    if isinstance(layers, nn.Module) or not isinstance(layers, Sequence):
        raise ValueError("layers must be a non-empty list of nn.Module in forward order (input side first)")
    layers = list(layers)
    if not layers:
        raise ValueError("layers must be a non-empty list of nn.Module in forward order, got an empty list")
    owner: dict[int, int] = {}
    seen_modules: dict[int, int] = {}
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Module):
            raise ValueError(f"layers[{i}] must be an nn.Module, got {type(layer).__name__}")
        if id(layer) in seen_modules:
            raise ValueError(
                f"layers[{i}] is the same module as layers[{seen_modules[id(layer)]}]: list each layer once"
            )
        seen_modules[id(layer)] = i
        for p in layer.parameters():
            if id(p) in owner:
                raise ValueError(
                    f"layers[{i}] shares a parameter with layers[{owner[id(p)]}] (nested or tied layers): "
                    "each parameter may belong to one layer only"
                )
            owner[id(p)] = i
    return layers


def param_groups(model: nn.Module, layers: Sequence[nn.Module], **group_options: Any) -> list[dict[str, Any]]:
    """One optimizer group per layer, in order, then one group for every other parameter of ``model``.

    ``model`` may be wrapped in ``DistributedDataParallel``. ``group_options`` (say ``weight_decay``) are
    copied into every group.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = check_layers(layers)
    inner = unwrap(model)
    members = {id(m) for m in inner.modules()}
    for i, layer in enumerate(layers):
        if id(layer) not in members:
            raise ValueError(f"layers[{i}] ({type(layer).__name__}) is not a submodule of the model")
    groups = [{"params": list(layer.parameters()), **group_options} for layer in layers]
    in_layers = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in inner.parameters() if id(p) not in in_layers]
    groups.append({"params": rest, **group_options})
    return groups


def check_optimizer_layout(optimizer: Any, layers: Sequence[nn.Module]) -> None:
    """Raise ``ValueError`` unless ``optimizer``'s groups are ``param_groups(model, layers)``'s layout."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if len(groups) != len(layers) + 1:
        raise ValueError(
            f"optimizer has {len(groups)} param groups but FreezeOut needs {len(layers) + 1} "
            f"(one per layer for {len(layers)} layers, then the rest): "
            "build it from freezeout.param_groups(model, layers)"
        )
    layer_params = set()
    for i, (group, layer) in enumerate(zip(groups, layers)):
        want = {id(p) for p in layer.parameters()}
        have = {id(p) for p in group["params"]}
        if want != have:
            raise ValueError(
                f"optimizer group {i} does not hold exactly the parameters of layers[{i}] "
                f"({len(have)} vs {len(want)}): build the optimizer from freezeout.param_groups(model, layers)"
            )
        layer_params |= want
    if any(id(p) in layer_params for p in groups[-1]["params"]):
        raise ValueError("optimizer's last group (the rest) holds parameters of a freezable layer")
