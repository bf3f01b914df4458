"""One fold of a frozen layer: a pair's folded weight and bias, rebuilt when a source tensor changed, and the
``forward`` each of the pair's two modules runs (folded while the fold is active, its own otherwise)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ...compat import child_modules, conv_forward, has_hooks, own_parameters, tensor_slot
from ..forwards import OwnedForward
from .pairs import FoldPair, border_map, folded_weights

__all__ = ["Fold", "FoldedForward"]

_MAPS = 8  # border maps kept per fold: one per input size in use (a multi-scale run keeps the recent sizes)


class Fold:
    """One pair's folded weight and bias, rebuilt when any source tensor changed, and whether it runs now."""

    def __init__(self, pair: FoldPair, scope: nn.Module) -> None:
        self.pair, self.scope = pair, scope
        self.border = pair.border  # a plain bool: read in every folded forward, compiled ones included
        self.active = False
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._eps: float | None = None
        self._slots: list[tuple[dict, str]] | None = None  # where the sources live (``compat.tensor_slot``)
        self._stamp: list[tuple[Any, int, int]] = []  # each source as folded: the tensor, its version, its storage
        self._maps: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.parts = [path.split(".") if path else [] for path in pair.paths]

    def _sources(self) -> list[torch.Tensor | None]:
        if self._slots is None:
            bn, target = self.pair.bn, self.pair.target
            names = [(target, "weight"), (target, "bias"), (bn, "weight"), (bn, "bias")]
            self._slots = [tensor_slot(m, n) for m, n in (*names, (bn, "running_mean"), (bn, "running_var"))]
        return [holder.get(name) for holder, name in self._slots]

    def _stale(self, sources: list[torch.Tensor | None]) -> bool:
        if len(sources) != len(self._stamp):
            return True
        for t, (old, version, storage) in zip(sources, self._stamp):
            if t is not old or (t is not None and (t._version != version or t.data_ptr() != storage)):
                return True
        return False

    def valid(self) -> bool:
        """The pair is still the one proven: in place, unhooked, not training, with statistics (read at every
        folded call, so kept to attribute reads)."""
        pair = self.pair
        for m, parts in zip((pair.first, pair.second), self.parts):
            found = self.scope
            for part in parts:
                found = child_modules(found).get(part)
            if found is not m or has_hooks(m):
                return False  # replaced, or a hook (a user's, a library's) that must see the real tensors
            for p in own_parameters(m):
                if p is not None and p.requires_grad:
                    return False  # trains again: the real path carries its gradient
        bn = pair.bn
        return bn.running_var is not None and (pair.tail is None or pair.tail.eps == bn.eps)

    def refresh(self) -> None:
        """The folded weights, rebuilt if any source is another tensor, edited in place or moved since."""
        sources = self._sources()
        if not self._stale(sources) and self._eps == self.pair.bn.eps:
            return
        weight, bias = folded_weights(self.pair)
        source = self.pair.target.weight
        with torch.no_grad():
            # in place where the layout allows: a compiled layer keeps reading the same tensors, no recompile
            self.weight = _store(self.weight, weight, torch.empty_like(source))
            self.bias = _store(self.bias, bias, torch.empty(bias.shape, dtype=source.dtype, device=source.device))
        self._stamp = [(t, 0, 0) if t is None else (t, t._version, t.data_ptr()) for t in sources]
        self._eps = self.pair.bn.eps
        self._maps.clear()

    def map_for(self, spatial: tuple[int, ...]) -> torch.Tensor:
        """The bias map of a zero-padding BN -> Conv fold for inputs of this spatial size (``pairs.border_map``)."""
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
        # a pickled or copied model rebuilds its folds from its own tensors on its first folded call
        cleared = {"weight": None, "bias": None, "_slots": None, "_stamp": [], "_eps": None, "_maps": OrderedDict()}
        return {**self.__dict__, **cleared}


def _layout(t: torch.Tensor) -> tuple:
    return t.shape, t.dtype, t.device, t.stride()


def _store(old: torch.Tensor | None, value: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    # ``fresh`` comes from empty_like(source weight): its dtype, device and memory format (channels_last)
    out = old if old is not None and _layout(old) == _layout(fresh) else fresh
    return out.copy_(value)


class FoldedForward(OwnedForward):
    """A folded module's ``forward``: its pair's fold while the fold is active, the module's own otherwise. The
    BatchNorm passes its input through (or runs its tail); the conv/linear runs with the folded weights. Both test
    the same switch and the input rank (a batched call), so the two halves of a pair always agree."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.fold: Fold | None = None  # the pair this module is folded in for the running call

    def __call__(self, input: torch.Tensor) -> torch.Tensor:  # torch's name: module(input=x) works too
        fold = self.fold
        # a border fold's per-size map cache is Python state a compiled graph would not keep: eager only
        if (
            fold is None
            or self.inert
            or not fold.active
            or input.dim() != fold.pair.rank
            or (fold.border and torch.compiler.is_compiling())
        ):
            return self.below(input)
        if self.module is fold.pair.bn:
            return input if fold.pair.tail is None else fold.pair.tail(self.module, input)
        if fold.pair.kind == "linear-bn":
            return nn.functional.linear(input, fold.weight, fold.bias)
        if fold.border:
            return conv_forward(self.module, input, fold.weight, None).add_(fold.map_for(tuple(input.shape[2:])))
        return conv_forward(self.module, input, fold.weight, fold.bias)
