"""BatchNorm folds across the modules of one layer that is a list: a stem held by the model (``conv1``, ``bn1``).

A layer that is one module folds what its own forward proves (``effects.folding``). A layer of several modules
(torchvision's and timm's ResNet, EfficientNet and MobileNetV3 hold their stem's conv and BatchNorm on the root)
has no forward of its own: the forward that calls its modules is the model's. So each candidate pair (a conv and
the BatchNorm of its width, ``fold.candidate_pairs``) is proven at each call of its first module, from the module
whose forward made that call (``compat.calling_module``): an fx trace of that forward in the modes its modules have
then (``fold.caller_pairs``, once per caller and mode, its hooks not run) must show the conv's output feeding the
BatchNorm alone, each called once. Then the conv runs folded, and the BatchNorm passes through (or runs its tail)
only the very tensor the conv returned; anything else runs the real modules. Not while the caller trains with
autograd off, under a trace or ``torch.compile``, nor with a global module hook: the real modules run.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..compat import calling_module, global_hooks, is_tracing
from .base import Effect
from .fold import FoldPair, caller_pairs, candidate_pairs
from .folding import _Fold, patch_forwards, unpatch_forwards
from .mode import requested_training

__all__ = ["StemFold"]


class _Proof:
    """The callers seen so far, with the pairs their forwards prove, per training mode."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, bool], tuple[weakref.ref, dict[tuple[int, int], FoldPair]]] = {}

    def pair(self, caller: nn.Module, fold: _Fold) -> FoldPair | None:
        key = (id(caller), requested_training(caller))
        known = self.seen.get(key)
        if known is None or known[0]() is not caller:
            pairs = {(id(p.first), id(p.second)): p for p in caller_pairs(caller)}
            known = self.seen[key] = (weakref.ref(caller), pairs)
        return known[1].get((id(fold.pair.first), id(fold.pair.second)))

    def enter(self, fold: _Fold) -> None:
        """Whether ``fold`` runs in this call of its first module: its caller's forward proves it, and it trains."""
        fold.active = False
        if not torch.is_grad_enabled() or is_tracing() or torch.compiler.is_compiling() or global_hooks():
            return
        caller = calling_module(fold.pair.first)
        if caller is None or not requested_training(caller):
            return
        pair = self.pair(caller, fold)
        if pair is None:
            return
        fold.pair, fold.layer = pair, caller  # the paths the caller holds them at, checked by ``valid``
        fold.active = fold.valid()
        if fold.active:
            fold.refresh()

    def __getstate__(self) -> dict:
        return {"seen": {}}  # weak references do not copy; a copy proves its pairs again


class StemFold(Effect):
    """The frozen layer of several ``modules``: its BatchNorms folded where the forward calling them proves it."""

    name = "BatchNorm folding"

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.modules = list(modules)
        self.folds: list[_Fold] = []

    def install(self) -> None:
        proof, used = _Proof(), set()
        for pair in candidate_pairs(self.modules):
            if used.isdisjoint((id(pair.first), id(pair.second))):  # a module in one pair only
                used |= {id(pair.first), id(pair.second)}
                fold = _Fold(pair, None)
                fold.proof = proof
                patch_forwards(fold)
                self.folds.append(fold)

    def remove(self) -> None:
        super().remove()
        unpatch_forwards(self.folds)
        self.folds = []
