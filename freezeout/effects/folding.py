"""Frozen layers at inference speed: their BatchNorms folded into the adjacent convolutions, exact or not at all.

A frozen layer is an inference function: its BatchNorm uses fixed statistics, an affine map that merges into the
neighbouring conv or linear weights (``effects.fold``, pairs proven by the layer's traced dataflow). What the user
sees does not change: parameters, buffers, ``state_dict()`` and checkpoints are untouched; the folded weights live
beside the modules and carry no autograd history.

**When a fold runs**, decided at each call of the layer: in a training forward only (autograd on and the layer's
mode, as the user set it, training), never while the model is traced as a program (fx, export, jit: they see the
real modules), and per pair only while it is still what was proven: both modules at their places in the layer,
no hook on either but FreezeOut's own (a user's hook sees the real tensors), none of its parameters requiring grad
again (that one trains through the real path) and no global module hook. Otherwise both modules run their own
forward. Either way the layer computes the same function up to float rounding.

**Never stale**: the folded weights are rebuilt from the live tensors whenever a source tensor changed (another
object, storage or ``_version``: ``load_state_dict``, ``.to()``, an in-place edit), checked at the start of each
training forward of the layer. An edit through ``.data`` bypasses the version counter torch keeps and is *not*
seen: edit frozen weights in place under ``torch.no_grad()`` instead, or load them with ``load_state_dict``.

Mechanics: each folded conv/linear gets an instance-level ``forward`` that runs the folded weights while its fold
is active, and the BatchNorm one that passes its input through (or runs its tail: an activation after it, as in
timm's ``BatchNormAct2d``); both call the module's own forward otherwise. The
layer's own ``forward`` stays in place, so its glue (concatenation, residual sums) runs as written.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..compat import child_modules, conv_forward, forward_hooks, global_hooks, is_tracing
from .base import Effect, OwnedHook
from .fold import FoldPair, border_map, fold_pairs, folded_weights
from .mode import requested_training

__all__ = ["EAGER_FORWARD", "BatchNormFold", "active_fold", "find_fold", "folds_running"]

EAGER_FORWARD = "_freezeout_eager_forward"  # where accel.compile keeps a layer's forward from before compiling
_MAPS = 8  # border maps kept per fold: one per input size in use (a multi-scale run keeps the recent sizes)


class _Fold:
    """One pair's folded weight and bias, rebuilt when any source tensor changed, and whether it runs now."""

    def __init__(self, pair: FoldPair, layer: nn.Module) -> None:
        self.pair, self.layer = pair, layer
        self.border = pair.border  # a plain bool: read in every folded forward, compiled ones included
        self.active = False
        self.forwards: list[_FoldedForward] = []  # first's, second's
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._sources: list[torch.Tensor] = []
        self._stamp: tuple = ()
        self._maps: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.proof: Any = None  # a layer of several modules: decides at each call of ``first`` (``effects.stem``)
        self.pending: torch.Tensor | None = None  # there: what ``first`` returned, the only input ``second`` folds

    def sources(self) -> list[torch.Tensor]:
        bn, target = self.pair.bn, self.pair.target
        tensors = (target.weight, target.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        return [t for t in tensors if t is not None]

    def valid(self) -> bool:
        """The pair is still the one proven: in place, unhooked by anyone else, not training, with statistics."""
        for m, path, forward in zip((self.pair.first, self.pair.second), self.pair.paths, self.forwards):
            if _lookup(self.layer, path) is not m or not _runs(m, forward):
                return False
            if any(not isinstance(h, OwnedHook) for hooks in forward_hooks(m) for h in hooks.values()):
                return False
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                return False
        tail = self.pair.tail
        return self.pair.bn.running_var is not None and (tail is None or tail.eps == self.pair.bn.eps)

    def refresh(self) -> None:
        sources = self.sources()
        stamp = (self.pair.bn.eps, *((t._version, t.data_ptr()) for t in sources))
        same = len(sources) == len(self._sources) and all(a is b for a, b in zip(sources, self._sources))
        if same and stamp == self._stamp:
            return
        weight, bias = folded_weights(self.pair)
        source = self.pair.target.weight
        with torch.no_grad():
            # in place where the layout allows: a compiled layer keeps reading the same tensors, no recompile
            self.weight = _store(self.weight, weight, torch.empty_like(source))
            self.bias = _store(self.bias, bias, torch.empty(bias.shape, dtype=source.dtype, device=source.device))
        self._sources, self._stamp = sources, stamp
        self._maps.clear()

    def map_for(self, spatial: tuple[int, ...]) -> torch.Tensor:
        """The bias map of a zero-padding BN -> Conv fold for inputs of this spatial size (``fold.border_map``)."""
        out = self._maps.get(spatial)
        if out is None:
            w = self.weight
            out = self._maps[spatial] = border_map(self.pair, spatial).to(dtype=w.dtype, device=w.device)
            if len(self._maps) > _MAPS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(spatial)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # a pickled or copied model rebuilds its folds from its own tensors on its first training forward
        cleared = {"weight": None, "bias": None, "_sources": [], "_stamp": (), "_maps": OrderedDict(), "pending": None}
        return {**self.__dict__, **cleared}


def _lookup(layer: nn.Module, path: str) -> nn.Module | None:
    m: nn.Module | None = layer
    for part in path.split(".") if path else ():
        m = child_modules(m).get(part) if m is not None else None
    return m


def _layout(t: torch.Tensor) -> tuple:
    return t.shape, t.dtype, t.device, t.stride()


def _store(old: torch.Tensor | None, value: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    # ``fresh`` comes from empty_like(source weight): its dtype, device and memory format (channels_last)
    out = old if old is not None and _layout(old) == _layout(fresh) else fresh
    return out.copy_(value)


class _Scope:
    """A module whose own forward was traced, the folds proven inside it, and whether they run in this call."""

    def __init__(self, module: nn.Module, pairs: list[FoldPair]) -> None:
        self.module, self.on = module, False
        self.folds = [_Fold(pair, module) for pair in pairs]


class _Enter(OwnedHook):
    def __init__(self, effect: BatchNormFold, scope: _Scope) -> None:
        self.effect, self.scope = effect, scope

    def __call__(self, module: nn.Module, args: Any) -> None:
        scope = self.scope
        scope.on = torch.is_grad_enabled() and requested_training(module) and not is_tracing() and not global_hooks()
        for fold in scope.folds:
            fold.active = scope.on and fold.valid()
            if fold.active:
                fold.refresh()


class _Leave(OwnedHook):
    def __init__(self, scope: _Scope) -> None:
        self.scope = scope

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.scope.on = False
        for fold in self.scope.folds:
            fold.active = False


class _FoldedForward(OwnedHook):
    """A folded module's ``forward``: the fold while it is active, the module's own otherwise. The BatchNorm of a
    pair passes its input through; the conv/linear runs with the folded weights. Both test the same switch and the
    input rank (a batched call), so the two halves of a pair always agree."""

    def __init__(self, fold: _Fold, module: nn.Module) -> None:
        self.fold, self.module = fold, module
        self.previous = module.__dict__.get("forward")  # an instance forward to restore and call, or None

    def __call__(self, input: torch.Tensor) -> torch.Tensor:  # torch's name: module(input=x) works too
        fold = self.fold
        if fold.proof is None:
            return self._run(input)
        # a layer of several modules: the pair folds in this call if its caller's forward proves it, and the
        # second half only on what the first returned
        if self.module is fold.pair.first:
            fold.proof.enter(fold)
            fold.active = self._folds(input)
            out = self._run(input)
            fold.pending = out if fold.active else None
            return out
        fold.active = fold.active and input is fold.pending
        out = self._run(input)
        fold.active, fold.pending = False, None
        return out

    def _folds(self, x: torch.Tensor) -> bool:
        fold = self.fold
        # a border fold's per-size map cache is Python state a compiled graph would not keep: eager only
        return fold.active and x.dim() == fold.pair.rank and not (fold.border and torch.compiler.is_compiling())

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        fold = self.fold
        if self._folds(x):
            if self.module is fold.pair.bn:
                return x if fold.pair.tail is None else fold.pair.tail(self.module, x)
            if fold.pair.kind == "linear-bn":
                return nn.functional.linear(x, fold.weight, fold.bias)
            if fold.border:
                return conv_forward(self.module, x, fold.weight, None).add_(fold.map_for(tuple(x.shape[2:])))
            return conv_forward(self.module, x, fold.weight, fold.bias)
        if self.previous is not None:
            return self.previous(x)
        return type(self.module).forward(self.module, x)


def _traceable(layer: nn.Module) -> bool:
    """fx traces the class ``forward``: trust it unless an instance ``forward`` other than compile_blocks' runs."""
    return "forward" not in layer.__dict__ or layer.__dict__.get(EAGER_FORWARD, False) is None


def _scopes(module: nn.Module) -> list[_Scope]:
    """Where folds are proven: ``module`` if fx traces its forward, else (a forward fx cannot follow, or an instance
    forward) each child that it traces, recursively. A fold runs only inside a call of its scope, the forward that
    proved it, however the code around calls the modules."""
    if _traceable(module):
        pairs = fold_pairs(module)
        if pairs is not None:
            return [_Scope(module, pairs)] if pairs else []
    return [scope for child in module.children() for scope in _scopes(child)]


class BatchNormFold(Effect):
    """The frozen ``layer``'s BatchNorms folded into its convolutions for its training forwards (module doc)."""

    name = "BatchNorm folding"

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.scopes: list[_Scope] = []

    @property
    def folds(self) -> list[_Fold]:
        return [fold for scope in self.scopes for fold in scope.folds]

    def install(self) -> None:
        self.scopes = _scopes(self.layer)
        for scope in self.scopes:
            # after the hooks already there: a sharded layer (FSDP2) has its weights gathered by then
            self.hook(scope.module, _Enter(self, scope), _Leave(scope), first=False)
            for fold in scope.folds:
                patch_forwards(fold)

    def remove(self) -> None:
        super().remove()
        unpatch_forwards(self.folds)
        self.scopes = []


def _runs(module: nn.Module, forward: _FoldedForward) -> bool:
    """``forward`` is what a call of ``module`` runs: its instance forward, or under another of FreezeOut's own
    that calls the one before it (PrefixCache's stub)."""
    current = module.__dict__.get("forward")
    while current is not forward and isinstance(current, OwnedHook) and getattr(current, "previous", None) is not None:
        current = current.previous
    return current is forward


def patch_forwards(fold: _Fold) -> None:
    """Give both modules of ``fold``'s pair the folded ``forward``."""
    fold.forwards = [_FoldedForward(fold, m) for m in (fold.pair.first, fold.pair.second)]
    for forward in fold.forwards:
        forward.module.__dict__["forward"] = forward


def unpatch_forwards(folds: list[_Fold]) -> None:
    """Give the modules of ``folds`` their own ``forward`` back (or the instance one they had before)."""
    for fold in folds:
        for forward in fold.forwards:
            module = forward.module
            if module.__dict__.get("forward") is forward:
                del module.__dict__["forward"]
                if forward.previous is not None:
                    module.__dict__["forward"] = forward.previous
        fold.active, fold.pending = False, None


def _enter(module: nn.Module) -> _Enter | None:
    pre, _ = forward_hooks(module)
    return next((h for h in pre.values() if isinstance(h, _Enter)), None)


def find_fold(layer: nn.Module) -> BatchNormFold | None:
    """The folding effect installed for ``layer``, if any."""
    for m in layer.modules():
        enter = _enter(m)
        if enter is not None and enter.effect.layer is layer:
            return enter.effect
    return None


def folds_running(module: nn.Module) -> bool:
    """True while ``module``'s forward runs with the folds proven in it (for a model's own frozen fast path)."""
    enter = _enter(module)
    return enter is not None and enter.scope.on


def active_fold(module: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None] | None:
    """For a model's own frozen fast path that runs a folded conv its own way: ``(bn, weight, bias)`` of the
    BatchNorm folded into ``module`` (a conv or linear) and the folded weights, while that fold is active and a plain
    one (no border map); else ``None``, and the module's own call is the way to run it."""
    forward = module.__dict__.get("forward")
    if not isinstance(forward, _FoldedForward) or not forward.fold.active:
        return None
    fold = forward.fold
    if module is not fold.pair.target or fold.border:
        return None
    return fold.pair.bn, fold.weight, fold.bias
