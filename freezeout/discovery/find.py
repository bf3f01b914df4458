"""Find a model's freezable layers in the order data meets them, from one traced forward pass: the input group, then
each repeated block, the head left to train; from execution and structure alone, never class names. The rule,
step by step, is in docs/LAYERS.md ("The rule")."""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..checks import Once, check_int
from ..groups import unwrap
from ..layers import LayerLike, check_layers
from .structure import Units, auto_units, depth_units, has_params
from .trace import Call, Trace, trace

__all__ = ["find_layers"]

log = logging.getLogger(__name__)


def _by_patterns(root: Call, patterns: Sequence[str]) -> list[Call]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"patterns must be a non-empty list of module-name patterns, got {patterns!r}")
    first: dict[int, Call] = {}
    for c in root.descendants():
        first.setdefault(id(c.module), c)
    examples = ", ".join(repr(c.name) for c in first.values() if has_params(c.module))[:200]
    chosen: dict[int, Call] = {}
    for pattern in patterns:
        hits = [c for c in first.values() if fnmatch.fnmatchcase(c.name, pattern) and has_params(c.module)]
        if not hits:
            raise ValueError(
                f"pattern {pattern!r} matches no module with parameters that runs in the forward pass "
                f"(names look like {examples})"
            )
        chosen.update((id(c.module), c) for c in hits)
    names = {c.name for c in chosen.values()}
    outer = [c for c in chosen.values() if not any(c.name.startswith(n + ".") for n in names)]
    return sorted(outer, key=lambda c: c.index)


class _Holders:
    """Who holds each parameter, and when the traced pass used it: what makes a module tied."""

    def __init__(self, model: nn.Module, tr: Trace) -> None:
        self.tr = tr
        self.by: dict[int, list[nn.Module]] = {}  # parameter id -> each module holding it, once per path
        for _, module in model.named_modules(remove_duplicate=False):
            for p in module.parameters(recurse=False):
                self.by.setdefault(id(p), []).append(module)

    def tied(self, call: Call) -> bool:
        """Whether ``call``'s module shares a parameter with something outside it that runs (an op outside the
        module's call uses it, or a module outside holds it and is called, or more than one does)."""
        inside = {id(m) for m in call.module.modules()}
        for p in call.module.parameters():
            if self.tr.first_use.get(id(p), call.start) < call.start or self.tr.last_use.get(id(p), 0) > call.end:
                return True  # used by an op outside the module's call
            held = self.by[id(p)]
            outside = [m for m in held if id(m) not in inside]
            if len(held) - len(outside) > 1 or len(outside) > 1 or any(id(m) in self.tr.counts for m in outside):
                return True
        return False

    def idle_holders(self, call: Call) -> list[nn.Parameter]:
        """Of an untied ``call``'s parameters, those that one module outside it holds too, a module that never
        ran: listed with the layer (``check_ties`` accepts them)."""
        inside = {id(m) for m in call.module.modules()}
        return [p for p in call.module.parameters() if any(id(m) not in inside for m in self.by[id(p)])]


def _keep(calls: list[Call], tr: Trace, holders: _Holders, split: bool, warned: Once) -> list[Call]:
    """``calls`` without those that run more than once or are tied; with ``split``, a tied call's parts."""
    out: list[Call] = []
    for c in calls:
        runs = tr.counts[id(c.module)]
        if runs > 1:
            if warned.first(id(c.module)):
                warnings.warn(
                    f"module '{c.name}' runs {runs} times in one forward pass (weight sharing): left out of the "
                    "freezable layers, it trains with the rest",
                    UserWarning,
                    stacklevel=3,
                )
        elif not holders.tied(c):
            out.append(c)
        elif split:
            out.extend(_keep([x for x in c.children if has_params(x.module)], tr, holders, split, warned))
        else:
            # Freezing it would freeze the head it is tied to: it trains to the end with the head, and
            # FreezeOut cuts its flow into frozen layers.
            log.info("module '%s' shares a weight with a module outside it (tied): left to the rest", c.name)
    return out


def _attach_loose(model: nn.Module, units: Units, tr: Trace, holders: _Holders) -> list[list[nn.Parameter]]:
    """For each unit, the parameters held by a module that holds layers (the root's ``cls_token``) that join it."""
    inside = {id(m) for u in units for c in u for m in c.module.modules()}
    spans = [(u[0].start, u[-1].end) for u in units]
    attached: list[list[nn.Parameter]] = [[] for _ in units]
    for m in model.modules():
        if id(m) in inside or not any(id(c) in inside for c in m.modules()):
            continue  # inside a layer, or a module that holds no layer (the head)
        for p in m.parameters(recurse=False):
            use = tr.first_use.get(id(p))
            if use is None or len(holders.by[id(p)]) > 1 or tr.last_use[id(p)] > spans[-1][1]:
                continue
            attached[max([0, *(i for i, (start, _) in enumerate(spans) if start <= use)])].append(p)
    return attached


def find_layers(
    model: nn.Module,
    example_input: Any,
    granularity: str | int = "auto",
    patterns: Sequence[str] | None = None,
) -> list[LayerLike]:
    """Freezable layers of ``model`` in forward order (input side first), head excluded; see the module doc.

    ``example_input`` is passed as ``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a mapping (a
    dict, a tokenizer's ``BatchEncoding``); a batch of one is enough. Each layer is a module, or a list of
    modules and parameters that freeze together. The result is ready for ``param_groups(model, layers)`` and
    ``FreezeOut``.
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
    grouped = False
    if patterns is not None:
        units = [[c] for c in _by_patterns(tr.root, patterns)]
    elif granularity == "auto":
        units, grouped = auto_units(tr.root)
    else:
        units = depth_units(tr.root, granularity)
    holders = _Holders(model, tr)
    warned = Once()
    units = [_keep(u, tr, holders, grouped and i == 0, warned) for i, u in enumerate(units)]
    units = [u for u in units if u]
    if not units:
        raise ValueError(
            f"found no freezable layers before the head (granularity={granularity!r}): "
            "try granularity=2, 3, ... or name them with patterns=[...]"
        )
    layers: list[LayerLike] = []
    for unit, loose in zip(units, _attach_loose(model, units, tr, holders)):
        members = [c.module for c in unit] + [p for c in unit for p in holders.idle_holders(c)] + loose
        layers.append(members[0] if len(members) == 1 else members)
    return check_layers(layers)
