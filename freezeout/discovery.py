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
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from .checks import check_int
from .groups import unwrap
from .layers import LayerLike, check_layers
from .tracing import Call, Trace, trace

__all__ = ["find_layers"]

log = logging.getLogger(__name__)

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORM_NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "RMSNorm")
_NORMS = (*(getattr(nn, n) for n in _NORM_NAMES if hasattr(nn, n)), nn.modules.instancenorm._InstanceNorm)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _composite(module: nn.Module) -> bool:
    return any(_has_params(c) for c in module.children())


def _chains(call: Call) -> bool:
    link = call.first_in
    for child in call.children:
        if link is None or child.first_in is not link:
            return False
        link = child.first_out
    return link is not None and link is call.first_out


def _auto_expand(call: Call) -> bool:
    container = isinstance(call.module, _CONTAINERS) or (
        next(call.module.parameters(recurse=False), None) is None and _chains(call)
    )
    return container and any(_composite(c.module) for c in call.children)


def _flatten(call: Call, expand) -> list[Call]:
    out: list[Call] = []
    for child in call.children:
        if child.children and expand(child):
            out.extend(_flatten(child, expand))
        else:
            out.append(child)
    return out


def _norm_only(module: nn.Module) -> bool:
    owners = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
    return bool(owners) and all(isinstance(m, _NORMS) or type(m).__name__.endswith("Norm") for m in owners)


def _candidates(root: Call, granularity: str | int) -> list[Call]:
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


def _by_patterns(root: Call, patterns: Sequence[str]) -> list[Call]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"patterns must be a non-empty list of module-name patterns, got {patterns!r}")
    first: dict[int, Call] = {}
    for c in root.descendants():
        first.setdefault(id(c.module), c)
    examples = ", ".join(repr(c.name) for c in first.values() if _has_params(c.module))[:200]
    chosen: dict[int, Call] = {}
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


def _holders(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> every name it is registered under (two or more: tied weights, or a shared module)."""
    out: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), []).append(name)
    return out


def _tied_outside(call: Call, holders: dict[int, list[str]]) -> bool:
    prefix = f"{call.name}."
    return any(not n.startswith(prefix) for p in call.module.parameters() for n in holders[id(p)])


def _attach_loose(model: nn.Module, calls: list[Call], tr: Trace, holders: dict[int, list[str]]) -> list:
    """The layers, each a module or ``[module, *parameters]``: parameters held by a module that contains
    layers (the root's ``cls_token``) join the layer whose call they are used in, or the one before the gap
    they are used in (or the first), so that nothing trainable flows into a frozen prefix; tied ones, and
    those first used after the last layer, stay with the rest."""
    inside = {id(m) for c in calls for m in c.module.modules()}
    attached: list[list[nn.Parameter]] = [[] for _ in calls]
    for m in model.modules():
        if id(m) in inside or not any(id(c) in inside for c in m.modules()):
            continue  # inside a layer, or a module that holds no layer (the head)
        for p in m.parameters(recurse=False):
            use = tr.first_use.get(id(p))
            if use is None or len(holders[id(p)]) > 1 or use > calls[-1].end:
                continue
            j = max([0, *(i for i, c in enumerate(calls) if c.start <= use)])
            attached[j].append(p)
    return [c.module if not extra else [c.module, *extra] for c, extra in zip(calls, attached)]


def find_layers(
    model: nn.Module,
    example_input: Any,
    granularity: str | int = "auto",
    patterns: Sequence[str] | None = None,
) -> list[LayerLike]:
    """Freezable layers of ``model`` in forward order (input side first), head excluded; see the module doc.

    ``example_input`` is passed as ``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a mapping (a
    dict, a tokenizer's ``BatchEncoding``); a batch of one is enough. Each layer is a module, or a list
    ``[module, *parameters]`` with the parameters it must freeze with. The result is ready for
    ``param_groups(model, layers)`` and ``FreezeOut``.
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
    tr = trace(model, example_input)
    calls = _by_patterns(tr.root, patterns) if patterns is not None else _candidates(tr.root, granularity)
    holders = _holders(model)
    kept = []
    for c in calls:
        if tr.counts[id(c.module)] > 1:
            warnings.warn(
                f"module '{c.name}' runs {tr.counts[id(c.module)]} times in one forward pass (weight sharing): "
                "left out of the freezable layers, it trains with the rest",
                UserWarning,
                stacklevel=2,
            )
        elif _tied_outside(c, holders):
            # Tied to a module outside it (a language model's token embedding and its head): freezing it would
            # freeze the head. It trains to the end with the head; FreezeOut cuts its flow into frozen layers.
            log.info("module '%s' shares a weight with a module outside it (tied): left to the rest", c.name)
        else:
            kept.append(c)
    if not kept:
        raise ValueError(
            f"found no freezable layers before the head (granularity={granularity!r}): "
            "try granularity=2, 3, ... or name them with patterns=[...]"
        )
    return check_layers(_attach_loose(model, kept, tr, holders))
