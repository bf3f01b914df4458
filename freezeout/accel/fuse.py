"""Frozen layers at inference speed: their BatchNorms folded into the adjacent convolutions (on by default).

A frozen layer is an inference function: its BatchNorm uses fixed statistics, an affine map that merges into the
neighbouring conv or linear weights (``accel.fold``). ``FreezeOut(..., fuse=True)``, the default, calls
``fuse_layer`` on each layer as it freezes. What the user sees does not change:

- The model's parameters, buffers, ``state_dict()``, ``parameters()`` and checkpoints are untouched: the folded
  weights live in a shadow beside the modules (a plain attribute), never registered with the model.
- **When the shadow runs**: only inside the layer's own forward, and only in a *training* forward: the model in
  training mode (as ``model.train()`` last asked, which the frozen layer's eval lock records) and autograd on.
  ``model.eval()``, ``torch.no_grad()`` and ``torch.inference_mode()`` each give the real modules back, so
  evaluation and export (``torch.export``, ONNX, after ``model.eval()``) see the model as it is, BatchNorms
  included. A frozen layer computes the same function either way, up to float rounding (max relative
  difference ~2e-6 measured on DenseNet-BC-76 and ResNet-20, float32; see docs/BENCHMARKS.md).
- **Never stale**: the folded weights are rebuilt from the live tensors whenever a source tensor changed (another
  object, storage or ``_version``: ``load_state_dict``, ``.to()``, an in-place edit), checked at the start of
  each training forward of the layer. That is also where a sharded layer (FSDP) has its weights gathered: its
  hooks registered earlier run first. After ``FreezeOut.load_state_dict`` the re-frozen layers fuse again.
- Folded weights carry no autograd history, never require grad, and follow the source weight's device, dtype
  and memory format (channels_last included).

Mechanics: each folded conv/linear gets an instance-level ``forward`` that runs the folded weights while the
shadow is on, and the BatchNorm one that passes its input through; both call the module's own forward
otherwise. The layer's own ``forward`` (and ``compile_blocks``' compiled one, which traces through these)
stays in place, so whatever glue the layer has (concatenation, residual sums) runs as written.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..freezing import is_frozen, training_requested
from .compile import _EAGER
from .fold import FoldPair, border_map, fold_pairs, folded_weights

__all__ = ["active_fold", "fuse_layer", "is_fused", "shadow_active", "unfuse_layer"]

_SHADOW = "_freezeout_shadow"


class _Fold:
    """One pair's folded weight and bias, rebuilt when any source tensor changed."""

    def __init__(self, pair: FoldPair) -> None:
        self.pair = pair
        self.border = pair.border  # a plain bool: read in every folded forward, compiled ones included
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._sources: list[torch.Tensor] = []
        self._stamp: tuple = ()
        self._maps: dict[tuple[int, ...], torch.Tensor] = {}  # a border fold's bias map per input size

    def sources(self) -> list[torch.Tensor]:
        bn, target = self.pair.bn, self.pair.target
        tensors = (target.weight, target.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        return [t for t in tensors if t is not None]

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
        self._sources, self._stamp, self._maps = sources, stamp, {}

    def map_for(self, spatial: tuple[int, ...]) -> torch.Tensor:
        """The bias map of a zero-padding BN -> Conv fold for inputs of this spatial size (``fold.border_map``)."""
        out = self._maps.get(spatial)
        if out is None:
            w = self.weight
            out = self._maps[spatial] = border_map(self.pair, spatial).to(dtype=w.dtype, device=w.device)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # a pickled or copied model rebuilds its folds from its own tensors on its first training forward
        return {**self.__dict__, "weight": None, "bias": None, "_sources": [], "_stamp": (), "_maps": {}}


def _layout(t: torch.Tensor) -> tuple:
    return t.shape, t.dtype, t.device, t.stride()


def _store(old: torch.Tensor | None, value: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    # ``fresh`` comes from empty_like(source weight): its dtype, device and memory format (channels_last)
    out = old if old is not None and _layout(old) == _layout(fresh) else fresh
    return out.copy_(value)


class _Shadow:
    """The folds of one frozen layer and the switch that says whether they run now (see the module doc)."""

    def __init__(self, layer: nn.Module, folds: list[_Fold]) -> None:
        self.layer, self.folds, self.on = layer, folds, False
        self.handles = [
            layer.register_forward_pre_hook(self.enter),
            layer.register_forward_hook(self.leave, always_call=True),
        ]

    def enter(self, module: nn.Module, args: Any) -> None:
        self.on = torch.is_grad_enabled() and training_requested(self.layer)
        if self.on:
            for fold in self.folds:
                fold.refresh()

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self.on = False


class _FoldedForward:
    """A folded module's ``forward``: the fold while its layer's shadow is on, the module's own otherwise.

    The BatchNorm of a pair passes its input through; the conv/linear runs with the folded weights. Both test the
    same switch and the input rank (a batched call), so the two halves of a pair always agree.
    """

    def __init__(self, shadow: _Shadow, fold: _Fold, module: nn.Module) -> None:
        self.shadow, self.fold, self.module = shadow, fold, module
        self.previous = module.__dict__.get("forward")  # an instance forward to restore and call, or None

    def __call__(self, input: torch.Tensor) -> torch.Tensor:  # torch's name: module(input=x) works too
        x, fold = input, self.fold
        # a border fold's per-size map cache is Python state a compiled graph would not keep: eager only
        if self.shadow.on and x.dim() == fold.pair.rank and not (fold.border and torch.compiler.is_compiling()):
            if self.module is fold.pair.bn:
                return x
            if fold.pair.kind == "linear-bn":
                return nn.functional.linear(x, fold.weight, fold.bias)
            if fold.border:
                out = self.module._conv_forward(x, fold.weight, None)
                return out.add_(fold.map_for(tuple(x.shape[2:])))
            return self.module._conv_forward(x, fold.weight, fold.bias)
        if self.previous is not None:
            return self.previous(x)
        return type(self.module).forward(self.module, x)


def _traceable(layer: nn.Module) -> bool:
    """fx traces the class ``forward``: trust it unless an instance ``forward`` other than compile_blocks' runs."""
    return "forward" not in layer.__dict__ or layer.__dict__.get(_EAGER, False) is None


def fuse_layer(layer: nn.Module) -> int:
    """Fold the BatchNorms of the frozen ``layer`` into its convolutions for its training forwards; returns the
    number of folds (0: nothing to fold, and nothing is installed). A no-op on a layer fused already.

    ``layer`` must be frozen (``freeze_layer``: eval mode locked, no parameter requiring grad), else
    ``ValueError``: a fold is exact only while the weights and statistics it copies stay fixed.
    """
    if not isinstance(layer, nn.Module):
        raise ValueError(f"layer must be an nn.Module, got {type(layer).__name__}")
    if _SHADOW in layer.__dict__:
        return len(layer.__dict__[_SHADOW].folds)
    if not is_frozen(layer) or any(p.requires_grad for p in layer.parameters()):
        raise ValueError(
            f"layer ({type(layer).__name__}) must be frozen before fusing (freezeout.freeze_layer): folded "
            "weights are exact only while the weights and BatchNorm statistics they copy stay fixed"
        )
    folds = [_Fold(pair) for pair in fold_pairs(layer, _traceable(layer))]
    if not folds:
        return 0
    shadow = _Shadow(layer, folds)
    layer.__dict__[_SHADOW] = shadow
    for fold in folds:
        for module in (fold.pair.first, fold.pair.second):
            module.forward = _FoldedForward(shadow, fold, module)
    return len(folds)


def unfuse_layer(layer: nn.Module) -> None:
    """Undo ``fuse_layer``: the layer runs its real modules in every forward again (a no-op if not fused)."""
    shadow = layer.__dict__.pop(_SHADOW, None)
    if shadow is None:
        return
    for handle in shadow.handles:
        handle.remove()
    for fold in shadow.folds:
        for module in (fold.pair.first, fold.pair.second):
            patched = module.__dict__.pop("forward", None)
            if isinstance(patched, _FoldedForward) and patched.previous is not None:
                module.forward = patched.previous


def is_fused(layer: nn.Module) -> bool:
    """Whether ``fuse_layer`` folded something in ``layer``."""
    return _SHADOW in layer.__dict__


def active_fold(module: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None] | None:
    """For a model's own frozen fast path that runs a folded conv its own way: ``(bn, weight, bias)`` of the
    BatchNorm folded into ``module`` (a conv or linear) and the folded weights, while its layer's shadow is on and
    the fold is a plain one (no border map); else ``None``, and the module's own call is the way to run it."""
    forward = module.__dict__.get("forward")
    if not isinstance(forward, _FoldedForward) or not forward.shadow.on:
        return None
    fold = forward.fold
    if module is not fold.pair.target or fold.border:
        return None
    return fold.pair.bn, fold.weight, fold.bias


def shadow_active(layer: nn.Module) -> bool:
    """True while a fused ``layer`` runs a training forward with its folds (for a model's own frozen fast path)."""
    shadow = layer.__dict__.get(_SHADOW)
    return shadow is not None and shadow.on
