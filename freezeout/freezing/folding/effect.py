"""A frozen layer's BatchNorms folded into the adjacent convolutions (``fuse=True``): each kind of call proven on
its own arguments and confirmed on its real tensors before it runs folded, checked again at every call, the folded
weights rebuilt whenever a source tensor changed (docs/METHOD.md, "What frozen means", Folding). A fold that does
not agree with the real modules is one ``FoldWarning`` and the real modules from then on. An edit through ``.data``
bypasses the version counter and is not seen: edit frozen weights under ``torch.no_grad()``, or load them."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from ...compat import global_hooks, is_tracing
from ...layers import Layer
from ...tensors import tensors
from ..cut import CutState
from ..effect import Effect
from ..forwards import OwnedForward, pop_forward, push_forward
from ..mode import requested_training
from .fold import Fold, FoldedForward
from .pairs import FoldPair, call_pairs, foldable

__all__ = ["BatchNormFold", "FoldWarning", "active_fold", "find_fold", "fold_effects", "folds_running"]

log = logging.getLogger(__name__)

# how far a folded output may be from the real one: a few hundred roundings of the dtype, relative to its scale
_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


class FoldWarning(UserWarning):
    """Folding a frozen layer's BatchNorms changed what the layer returns: it runs unfolded."""


def _key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.dtype, value.dim()
    if value is None or isinstance(value, (bool, int, float, str)):
        return type(value), value
    raise TypeError  # an object: its kind of call cannot be told apart, so it is not provable


def _kind(args: tuple, kwargs: dict) -> tuple | None:
    """What tells one kind of call from another for a proof: plain values as they are, tensors by dtype and rank;
    None for an argument that is neither."""
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):  # the common call, kept cheap
        return args[0].dtype, args[0].dim()
    try:
        return tuple(_key(v) for v in args), tuple((k, _key(v)) for k, v in sorted(kwargs.items()))
    except TypeError:
        return None


def _close(got: Any, want: Any) -> float | None:
    """The largest difference between the folded and the real output relative to the real one's scale, if it is
    beyond the dtype's rounding (or the two differ in structure); None if they agree."""
    a, b = list(tensors(got)), list(tensors(want))
    if len(a) != len(b) or any(x.shape != y.shape or x.dtype != y.dtype for x, y in zip(a, b)):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if not (x.is_floating_point() or x.is_complex()):
            if not torch.equal(x, y):
                return float("inf")
            continue
        scale = float(y.detach().abs().max()) if y.numel() else 0.0
        diff = float((x.detach() - y.detach()).abs().max()) if y.numel() else 0.0
        if diff > _TOLERANCE.get(y.dtype, 1e-4) * scale or diff != diff:
            worst = max(worst, diff / max(scale, 1e-30))
    return worst or None


class _Scope(OwnedForward):
    """A module of a frozen layer whose calls are proven, kind by kind, and run folded once confirmed."""

    def __init__(self, module: nn.Module, effect: BatchNormFold) -> None:
        super().__init__(module)
        self.effect = effect
        self.kinds: dict[tuple, list[Fold]] = {}
        self.on = False  # this call runs folded (for a model's own frozen fast path: ``folds_running``)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # every call of the module: no extra dispatch
        effect = self.effect
        if self.inert or effect.running or not effect.folding_call(self.module):
            return self.below(*args, **kwargs)
        kind = _kind(args, kwargs)
        folds = self.kinds.get(kind) if kind is not None else []
        if folds is None:
            if torch.compiler.is_compiling():  # no proof inside a compiled graph: the real modules
                return self.below(*args, **kwargs)
            return self._first(kind, args, kwargs)
        live = [f for f in folds if f.valid()]
        if not live:
            return self.below(*args, **kwargs)
        return self._folded(live, args, kwargs)

    def _folded(self, folds: list[Fold], args: tuple, kwargs: dict, announce: bool = True) -> Any:
        """The call with ``folds`` active; ``announce``: a model's own fast path may see it (``folds_running``)."""
        forwards = self.effect.forwards
        for fold in folds:
            fold.refresh()
            fold.active = True
            forwards[fold.pair.first].fold = forwards[fold.pair.second].fold = fold
        self.on, self.effect.running = announce, True
        try:
            return self.below(*args, **kwargs)
        finally:
            self.on = self.effect.running = False
            for fold in folds:
                fold.active = False
                forwards[fold.pair.first].fold = forwards[fold.pair.second].fold = None

    def _first(self, kind: tuple, args: tuple, kwargs: dict) -> Any:
        """Prove this kind of call, run it unfolded (its result) and folded, and keep the folds if both agree."""
        pairs = call_pairs(self.module, args, kwargs)
        if pairs is None:  # fx cannot follow this forward: its children prove their own calls
            self.kinds[kind] = []
            self.effect.descend(self.module)
            return self.below(*args, **kwargs)
        folds = [self.effect.fold_for(pair, self.module) for pair in pairs]
        folds = [f for f in folds if f.valid()]
        if not folds:
            self.kinds[kind] = []
            return self.below(*args, **kwargs)
        devices = [t.device for t in tensors((args, kwargs)) if t.device.type != "cpu"][:1]
        with torch.random.fork_rng(devices=devices):  # the folds alone, against the same modules unfolded
            folded = self._folded(folds, args, kwargs, announce=False)
        with torch.random.fork_rng(devices=devices):
            real = self.below(*args, **kwargs)
        differ = _close(folded, real)
        if differ is not None:
            warnings.warn(
                f"folding the BatchNorms of frozen {self.effect.layer_name} ({type(self.module).__name__}) changed "
                f"its output by up to {differ:.3g} of its scale on its first call of this kind: it runs unfolded "
                "(nothing else changes; fuse=False turns folding off)",
                FoldWarning,
                stacklevel=2,
            )
            folds = []
        self.kinds[kind] = folds
        return self._folded(folds, args, kwargs) if folds else self.below(*args, **kwargs)  # as every later call


class BatchNormFold(Effect):
    """The frozen ``layer``'s BatchNorms folded into its convolutions for its training forwards (module doc)."""

    name = "BatchNorm folding"

    def __init__(self, layer: Layer, cut: CutState | None = None) -> None:
        super().__init__()
        self.layer, self.cut = layer, cut
        self.layer_name = f"layers[{layer.index}]"
        # keyed by the modules themselves, so that a deep copy's effect is keyed by the copy's modules
        self.scopes: dict[nn.Module, _Scope] = {}
        self.forwards: dict[nn.Module, FoldedForward] = {}
        self.folds: dict[tuple[nn.Module, nn.Module], Fold] = {}
        self.running = False  # inside a folded call: the scopes within it pass through

    def install(self) -> None:
        for m in self.layer.modules:
            self._scope(m)

    def folding_call(self, module: nn.Module) -> bool:
        """A training forward (autograd on; the model, or the layer frozen by hand, in the mode the user set:
        training), outside a program trace, with no global module hook to see the real modules."""
        root = self.cut.root if self.cut is not None else None
        training = root.training if root is not None else requested_training(module)
        return training and torch.is_grad_enabled() and not is_tracing() and not global_hooks()

    def _scope(self, module: nn.Module) -> None:
        if module not in self.scopes and foldable(module):
            self.scopes[module] = push_forward(_Scope(module, self))

    def descend(self, module: nn.Module) -> None:
        """``module``'s forward proves nothing: each child that holds a foldable pair proves its own calls."""
        for child in module.children():
            self._scope(child)

    def fold_for(self, pair: FoldPair, scope: nn.Module) -> Fold:
        key = (pair.first, pair.second)
        fold = self.folds.get(key)
        if fold is None or fold.scope is not scope or fold.pair.paths != pair.paths:
            fold = self.folds[key] = Fold(pair, scope)
        for m in key:
            if m not in self.forwards:
                self.forwards[m] = push_forward(FoldedForward(m))
        return fold

    def remove(self) -> None:
        super().remove()
        for forward in (*self.forwards.values(), *self.scopes.values()):
            pop_forward(forward)
        self.forwards, self.scopes, self.folds = {}, {}, {}


def fold_effects(layer: Layer, cut: CutState | None = None) -> list[Effect]:
    """What ``fuse=True`` installs on a frozen layer (``cut``: the frozen layers' shared state, which knows the model
    whose mode says when it trains)."""
    return [BatchNormFold(layer, cut)]


def find_fold(layer: nn.Module) -> BatchNormFold | None:
    """The folding effect installed for ``layer`` (a module of a frozen layer), if any."""
    for m in layer.modules():
        forward = m.__dict__.get("forward")
        while isinstance(forward, OwnedForward):
            if isinstance(forward, _Scope) and layer in forward.effect.layer.modules:
                return forward.effect
            forward = forward.previous
    return None


def folds_running(module: nn.Module) -> bool:
    """True while ``module``'s forward runs with the folds proven in it (for a model's own frozen fast path)."""
    forward = module.__dict__.get("forward")
    while isinstance(forward, OwnedForward):
        if isinstance(forward, _Scope):
            return forward.on
        forward = forward.previous
    return False


def active_fold(module: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None] | None:
    """For a model's own frozen fast path that runs a folded conv its own way: ``(bn, weight, bias)`` of the
    BatchNorm folded into ``module`` (a conv or linear) and the folded weights, while that fold is active and a plain
    one (no border map); else ``None``, and the module's own call is the way to run it."""
    forward = module.__dict__.get("forward")
    while isinstance(forward, OwnedForward) and not isinstance(forward, FoldedForward):
        forward = forward.previous
    if not isinstance(forward, FoldedForward) or forward.fold is None or not forward.fold.active:
        return None
    fold = forward.fold
    if module is not fold.pair.target or fold.border:
        return None
    return fold.pair.bn, fold.weight, fold.bias
