"""Find a model's freezable layers in the order data meets them, from one traced forward pass.

The rule (``granularity="auto"``):

1. Run ``model(example_input)`` once in eval mode under ``torch.no_grad`` (BatchNorm statistics do not
   move; each module's train/eval mode is restored afterwards) with hooks on every module, recording the
   *call tree*: which module ran inside which, in execution order. Modules that never run are ignored;
   an ``nn.ModuleList`` never runs itself, so its members show up as children of the module looping
   over it.
2. Starting at the root, a call is *expanded* into its child calls when it is a container of blocks:
   - it is a ``Sequential``/``ModuleList``/``ModuleDict`` (or a subclass), or it has no parameters of
     its own and only chains its children (each child's input is the previous child's output, the
     first takes the module's input, the last gives its output: ``nn.TransformerEncoder``, a
     ``Backbone`` looping over blocks), and
   - at least one child is itself composite (holds a submodule with parameters). So a ``Sequential``
     of residual blocks is expanded, a ``Sequential(BN, ReLU, Conv, Pool)`` transition is a block.
   A residual, dense or attention block fails the chain test (its output is a sum or a concatenation),
   so it stays whole. If the root expands to a single parametrised call (a wrapper), that one is
   expanded too.
3. Calls without parameters (ReLU, pooling, dropout) are dropped; the rest, in the order they first
   ran, are the candidates.
4. The *head* is removed: the last candidate (the classifier) and the normalisation-only candidates
   right before it (a final ``LayerNorm``/``BatchNorm``). It trains to the end with the rest.

``granularity=g`` (an int >= 1) replaces step 2: every call whose qualified name has fewer than ``g``
dot-separated parts is expanded (1: the root's children, 2: ``layer1.0``, ...). ``patterns`` replaces
steps 2-4: the modules whose qualified names match any of the ``fnmatch`` patterns (``*`` also
matches dots), outermost match only, in forward order; the head is not removed.

Parameters owned directly by an expanded module (a ViT's ``cls_token``/``pos_embed`` on the root)
belong to no layer: ``param_groups`` puts them in the rest. A layer that runs more than once in the
pass (weight sharing) is left out with a warning: it cannot freeze as part of an input-side prefix.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .checks import check_int
from .groups import check_layers, unwrap
from .measure import eval_mode

__all__ = ["find_layers"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORM_NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "RMSNorm")
_NORMS = (*(getattr(nn, n) for n in _NORM_NAMES if hasattr(nn, n)), nn.modules.instancenorm._InstanceNorm)


@dataclass(eq=False)
class _Call:
    module: nn.Module
    name: str
    index: int  # order in which calls started
    children: list[_Call] = field(default_factory=list)
    first_in: Any = None
    first_out: Any = None


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _run(model: nn.Module, example_input: Any) -> None:
    if isinstance(example_input, dict):
        model(**example_input)
    elif isinstance(example_input, tuple):
        model(*example_input)
    else:
        model(example_input)


def _trace(model: nn.Module, example_input: Any) -> tuple[_Call, dict[int, int]]:
    """The call tree of one forward pass, and how many times each module ran."""
    names = {id(m): n for n, m in model.named_modules()}
    root = _Call(model, "", 0)
    stack = [root]
    counts: dict[int, int] = {}
    started = [0]

    def pre(module, args, kwargs):
        started[0] += 1
        call = _Call(module, names[id(module)], started[0], first_in=_first_tensor((args, kwargs)))
        counts[id(module)] = counts.get(id(module), 0) + 1
        stack[-1].children.append(call)
        stack.append(call)

    def post(module, args, output):
        stack.pop().first_out = _first_tensor(output)

    handles = []
    try:
        for m in model.modules():
            if m is model:
                continue
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post))
        with eval_mode(model), torch.no_grad():
            try:
                _run(model, example_input)
            except Exception as exc:
                # A failing module never reaches its post hook: the top of the stack is the innermost one.
                where = stack[-1]
                label = f"module '{where.name}' ({type(where.module).__name__})" if where.name else "the model itself"
                raise ValueError(f"forward pass on example_input failed in {label}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
    return root, counts


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _composite(module: nn.Module) -> bool:
    return any(_has_params(c) for c in module.children())


def _chains(call: _Call) -> bool:
    link = call.first_in
    for child in call.children:
        if link is None or child.first_in is not link:
            return False
        link = child.first_out
    return link is not None and link is call.first_out


def _auto_expand(call: _Call) -> bool:
    container = isinstance(call.module, _CONTAINERS) or (
        next(call.module.parameters(recurse=False), None) is None and _chains(call)
    )
    return container and any(_composite(c.module) for c in call.children)


def _flatten(call: _Call, expand) -> list[_Call]:
    out: list[_Call] = []
    for child in call.children:
        if child.children and expand(child):
            out.extend(_flatten(child, expand))
        else:
            out.append(child)
    return out


def _norm_only(module: nn.Module) -> bool:
    owners = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
    return bool(owners) and all(isinstance(m, _NORMS) or type(m).__name__.endswith("Norm") for m in owners)


def _candidates(root: _Call, granularity: str | int) -> list[_Call]:
    if granularity == "auto":
        calls = _flatten(root, _auto_expand)
        while len(p := [c for c in calls if _has_params(c.module)]) == 1 and p[0].children:
            calls = _flatten(p[0], _auto_expand)  # a wrapper around the real model
    else:
        calls = _flatten(root, lambda c: len(c.name.split(".")) < granularity)
    calls = [c for c in calls if _has_params(c.module)]
    if not calls:
        return []
    end = len(calls) - 1  # the classifier, then any final norms before it
    while end > 0 and _norm_only(calls[end - 1].module):
        end -= 1
    return calls[:end]


def _all_calls(call: _Call) -> list[_Call]:
    out = []
    for child in call.children:
        out.append(child)
        out.extend(_all_calls(child))
    return out


def _by_patterns(root: _Call, patterns: Sequence[str]) -> list[_Call]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"patterns must be a non-empty list of module-name patterns, got {patterns!r}")
    first: dict[int, _Call] = {}
    for c in _all_calls(root):
        first.setdefault(id(c.module), c)
    examples = ", ".join(repr(c.name) for c in first.values() if _has_params(c.module))[:200]
    chosen: dict[int, _Call] = {}
    for pattern in patterns:
        hits = [c for c in first.values() if fnmatch.fnmatchcase(c.name, pattern) and _has_params(c.module)]
        if not hits:
            raise ValueError(
                f"pattern {pattern!r} matches no module with parameters that runs in the forward pass "
                f"(names look like {examples})"
            )
        chosen.update((id(c.module), c) for c in hits)
    names = {c.name for c in chosen.values()}
    outer = [c for c in chosen.values() if not any(c.name.startswith(n + ".") for n in names)]
    return sorted(outer, key=lambda c: c.index)


def find_layers(
    model: nn.Module,
    example_input: Any,
    granularity: str | int = "auto",
    patterns: Sequence[str] | None = None,
) -> list[nn.Module]:
    """Freezable layers of ``model`` in forward order (input side first), head excluded; see the module doc.

    ``example_input`` is passed as ``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a dict; a
    batch of one is enough. The result is ready for ``param_groups(model, layers)``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if granularity != "auto":
        try:
            granularity = check_int("granularity", granularity, 1)
        except ValueError:
            raise ValueError(
                f"granularity must be 'auto' or an integer >= 1 (module-name depth), got {granularity!r}"
            ) from None
    if patterns is not None and granularity != "auto":
        raise ValueError("give granularity or patterns, not both: patterns name the layers exactly")
    model = unwrap(model)
    root, counts = _trace(model, example_input)
    calls = _by_patterns(root, patterns) if patterns is not None else _candidates(root, granularity)
    layers = []
    for c in calls:
        if counts[id(c.module)] > 1:
            warnings.warn(
                f"module '{c.name}' runs {counts[id(c.module)]} times in one forward pass (weight sharing): "
                "left out of the freezable layers, it trains with the rest",
                UserWarning,
                stacklevel=2,
            )
        else:
            layers.append(c.module)
    if not layers:
        raise ValueError(
            f"found no freezable layers before the head (granularity={granularity!r}): "
            "try granularity=2, 3, ... or name them with patterns=[...]"
        )
    return check_layers(layers)
