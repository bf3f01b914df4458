"""Optimizer parameter groups as FreezeOut drives them: each group holds parameters of one layer, or of the rest.

``param_groups`` builds the usual layouts (one group per layer then one for the rest, or each of those split
into weight decay / no weight decay); ``group_owners`` reads any layout a user built, in any number and order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch import nn

from .layers import Layer, LayerLike, as_layers, is_norm, param_owners

__all__ = [
    "ParameterNames",
    "check_optimizer",
    "check_ties",
    "default_no_decay",
    "group_owners",
    "param_groups",
    "split_groups",
    "unwrap",
]

NoDecay = Callable[[str, nn.Parameter, nn.Module], bool]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``DistributedDataParallel``/``DataParallel`` (or the model itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def default_no_decay(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """timm's and Hugging Face's rule: no weight decay for biases and other 1-d parameters, normalisation layers
    and embeddings (``nn.Embedding``, and position embeddings or class tokens held by a module of their own class,
    which timm lists in ``no_weight_decay()``). nanoGPT's rule differs: it decays every parameter of 2 or more
    dimensions, embeddings included; pass ``no_decay=lambda name, p, module: p.dim() < 2`` for it, or give
    FreezeOut the optimizer nanoGPT's ``configure_optimizers`` builds, which it takes as it is."""
    if param.dim() <= 1 or is_norm(module) or isinstance(module, nn.Embedding):
        return True
    leaf = name.rsplit(".", 1)[-1]
    return any(word in leaf for word in ("embed", "token", "pos_"))


def _no_decay_rule(no_decay: NoDecay | Collection[str] | None, model: nn.Module) -> NoDecay:
    if no_decay is None:
        listed = getattr(model, "no_weight_decay", None)  # timm's convention: names the model wants undecayed
        names = set(listed()) if callable(listed) else set()
        return lambda name, p, m: name in names or default_no_decay(name, p, m)
    if callable(no_decay):
        return no_decay
    if isinstance(no_decay, str) or not all(isinstance(x, str) for x in no_decay):
        raise ValueError(f"no_decay must be a callable (name, param, module) -> bool or a list of name patterns, got "
                         f"{no_decay!r}")  # fmt: skip
    patterns = list(no_decay)
    return lambda name, p, m: any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def check_ties(model: nn.Module, layers: Sequence[Layer]) -> None:
    """``ValueError`` if a layer shares a parameter or a module with ``model`` outside it (tied weights, as a
    language model's head and its token embedding): freezing the layer would freeze that part too, silently."""
    inside = {id(m): layer.index for layer in layers for m in layer.all_modules()}
    loose = {id(p) for layer in layers for p in layer.loose}
    owner = param_owners(layers)
    paths: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    mine: dict[int, str] = {}
    outside: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for name, p in module.named_parameters(prefix=path, recurse=False):
            if id(p) not in owner:
                continue
            if inside.get(id(module)) == owner[id(p)] and id(p) not in mine:
                mine[id(p)] = name
            else:
                outside.setdefault(id(p), []).append(name)
    for layer in layers:
        for m in layer.modules:
            if len(paths.get(id(m), [])) > 1:
                first, other = paths[id(m)][:2]
                raise ValueError(_tie_message(layer.index, f"module {first!r}", other))
        for p in layer.parameters():
            held = outside.get(id(p), [])
            extra = held[1:] if id(p) in loose else held  # a parameter listed on its own has its one holder outside
            if extra:
                name = mine.get(id(p)) or held[0]
                raise ValueError(_tie_message(layer.index, f"parameter {name!r}", extra[0]))


def _tie_message(index: int, what: str, other: str) -> str:
    return (
        f"layers[{index}] shares its {what} with {other!r} outside the layer (tied weights): freezing the layer "
        f"would freeze {other!r} too. Leave the shared module out of the layers (find_layers does): the shared "
        "weight then trains to the end with the head"
    )


def param_groups(
    model: nn.Module,
    layers: Sequence[LayerLike],
    *,
    weight_decay: float | None = None,
    no_decay: NoDecay | Collection[str] | None = None,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Optimizer groups for FreezeOut: per layer, in order, then the rest of ``model``'s parameters.

    Without ``weight_decay``: one group per layer, then one for the rest. With it: each of those split in two,
    the parameters that take weight decay (``weight_decay``) and those that do not (``weight_decay=0``), empty
    groups left out. ``no_decay`` picks the latter: a callable ``(name, param, module) -> bool``, a list of
    ``fnmatch`` patterns on parameter names, or ``None`` for ``default_no_decay`` (plus the names the model's
    ``no_weight_decay()`` lists, timm's convention). ``group_options`` are copied into every group. ``model``
    may be wrapped in ``DistributedDataParallel``. A layer that shares a parameter with a module outside it
    (tied weights) is a ``ValueError``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    items = as_layers(layers)
    inner = unwrap(model)
    members = {id(m) for m in inner.modules()}
    params = {id(p) for p in inner.parameters()}
    for layer in items:
        for m in layer.modules:
            if id(m) not in members:
                raise ValueError(f"layers[{layer.index}] ({type(m).__name__}) is not a submodule of the model")
        for p in layer.loose:
            if id(p) not in params:
                raise ValueError(f"layers[{layer.index}] holds a parameter that is not the model's")
    check_ties(inner, items)
    owned = {id(p) for layer in items for p in layer.parameters()}
    parts = [list(layer.parameters()) for layer in items]
    parts.append([p for p in inner.parameters() if id(p) not in owned])
    if weight_decay is None:
        if no_decay is not None:
            raise ValueError("no_decay needs weight_decay: give the weight decay of the other parameters")
        return [{"params": part, **group_options} for part in parts]
    rule = _no_decay_rule(no_decay, inner)
    skip = {
        id(p) for path, m in inner.named_modules() for n, p in m.named_parameters(prefix=path, recurse=False)
        if rule(n, p, m)
    }  # fmt: skip
    groups = []
    for part in parts:
        decay = [p for p in part if id(p) not in skip]
        plain = [p for p in part if id(p) in skip]
        for ps, wd in ((decay, weight_decay), (plain, 0.0)):
            if ps:
                groups.append({"params": ps, **group_options, "weight_decay": wd})
    return groups


# Optimizers that keep one parameter group by design: their step reads the group they were built with
_ONE_GROUP = ("LBFGS",)


def check_optimizer(optimizer: Any) -> list[dict[str, Any]]:
    """``optimizer``'s parameter groups, if it can hold one group per layer (each with its own learning rate);
    ``ValueError`` naming it otherwise, before anything is changed."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    name = type(optimizer).__name__
    if any(isinstance(optimizer, getattr(torch.optim, one)) for one in _ONE_GROUP):
        raise ValueError(
            f"optimizer {name} holds one parameter group only (its step reads the group it was built with), and "
            "FreezeOut gives each layer a group of its own, with its own learning rate and freeze time: use an "
            "optimizer that takes parameter groups (SGD, Adam, AdamW, ...), or freeze layers by hand"
        )
    return groups


def split_groups(optimizer: Any, layers: Sequence[Layer]) -> int:
    """Split, in place, each of ``optimizer``'s groups that holds parameters of several layers (or of layers and
    the rest) into one group per layer it touches, in layer order, then one for the rest: each a copy of the group
    with every option it had (``lr``, ``weight_decay``, betas, ``lr_scale``, ...). Optimizer state is kept (it is
    held per parameter). Deterministic: an optimizer built the same way splits the same way, so its state dict
    loads. Returns how many groups were split."""
    groups = check_optimizer(optimizer)
    n = len(layers)
    owner = param_owners(layers)
    out, split = [], 0
    for group in groups:
        parts: dict[int, list[Any]] = {}
        for p in group["params"]:
            parts.setdefault(owner.get(id(p), n), []).append(p)
        if len(parts) <= 1:
            out.append(group)
            continue
        split += 1
        out.extend({**group, "params": parts[i]} for i in sorted(parts))
    groups[:] = out
    return split


def group_owners(optimizer: Any, layers: Sequence[Layer]) -> list[int]:
    """For each of ``optimizer``'s groups, the index of the layer whose parameters it holds, or ``len(layers)``
    for a group of the rest. ``ValueError`` naming a group that mixes layers, or a layer with the rest."""
    groups = check_optimizer(optimizer)
    n = len(layers)
    owner = param_owners(layers)
    owners = []
    for g, group in enumerate(groups):
        found = {owner.get(id(p), n) for p in group["params"]}
        if len(found) > 1:
            names = [f"layers[{i}]" if i < n else "the rest" for i in sorted(found)]
            raise ValueError(
                f"optimizer param group {g} holds parameters of {', '.join(names[:-1])} and {names[-1]}: each group "
                "may hold parameters of one layer, or only of the rest (build the groups with "
                "freezeout.param_groups(model, layers), or split yours)"
            )
        owners.append(found.pop() if found else n)
    return owners


class ParameterNames:
    """Each parameter's name in ``model`` (its first), how many names it has (more than one: tied), and the ids of the
    model's modules."""

    def __init__(self, model: nn.Module) -> None:
        self.params: dict[int, str] = {}
        self.count: dict[int, int] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.params.setdefault(id(p), name)
            self.count[id(p)] = self.count.get(id(p), 0) + 1
        self.modules = {id(m) for m in model.modules()}

    def tied(self, p: torch.Tensor) -> bool:
        return self.count.get(id(p), 0) > 1
