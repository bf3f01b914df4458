"""What "frozen" means for one layer (docs/METHOD.md, "What frozen means"): the effects installed at its freeze.

``FrozenPrefix`` keeps a model's frozen layers, always a prefix of its layers: it freezes the next one (installing
the effects in a fixed order) and removes them again, newest first. ``FreezeOut`` drives one; so does the
step-time measurement, which freezes any ``k`` layers as FreezeOut would leave them. A layer frozen by one prefix
is owned by it until unfrozen: a second prefix over it is refused while the first is alive, and takes over (undoing
what is left of the first's effects) once the first is gone without being closed.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..layers import Layer, LayerLike, as_layers
from .cut import CutState, GraphCut
from .effect import Effect, FrozenLayer
from .folding import fold_effects
from .grads import StopGradients
from .mode import InferenceMode, in_inference_mode
from .strip import has_effects, remove_effects

__all__ = ["FrozenPrefix", "freeze_layer", "is_frozen"]

log = logging.getLogger(__name__)

# module -> (the prefix that froze it, the effect that took its gradients): while the layer is frozen
_OWNERS: weakref.WeakKeyDictionary[nn.Module, tuple[weakref.ref, StopGradients]] = weakref.WeakKeyDictionary()


def _effects(layer: Layer, groups: Sequence[dict[str, Any]], optimizer: Any, cut: CutState | None, fuse: bool):
    effects: list[Effect] = [StopGradients(list(layer.parameters()), groups, optimizer), InferenceMode(layer)]
    if cut is not None:
        effects.append(GraphCut(cut, layer))
    if fuse:
        effects.extend(fold_effects(layer, cut))
    return effects


def _install(index: int, effects: list[Effect]) -> FrozenLayer:
    record = FrozenLayer(index)
    for effect in effects:
        effect.install()
        record.effects.append(effect)
    return record


def is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` is frozen by FreezeOut (it runs every call in inference mode)."""
    return in_inference_mode(module)


def freeze_layer(
    layer: LayerLike | Layer,
    groups: dict[str, Any] | Sequence[dict[str, Any]],
    optimizer: Any,
    *,
    fuse: bool = False,
) -> FrozenLayer:
    """Freeze ``layer`` (a module, or a group of modules and parameters) on its own; ``groups`` are its optimizer
    groups (one dict, or a list). Returns the record of what it installed; its ``remove()`` undoes it.

    The effects: no gradient, optimizer state dropped and LR 0, inference mode in every call, and with ``fuse``
    its BatchNorms folded. What flows into it is not cut: that needs the whole frozen prefix, as ``FreezeOut``
    keeps it.
    """
    item = layer if isinstance(layer, Layer) else as_layers([layer])[0]
    groups = [groups] if isinstance(groups, dict) else list(groups)
    return _install(item.index, _effects(item, groups, optimizer, None, fuse))


class FrozenPrefix:
    """The first ``num_frozen`` of ``layers`` frozen, each with its effects (``fuse``: BatchNorms folded too)."""

    def __init__(self, layers: Sequence[Layer], *, fuse: bool = False) -> None:
        self.layers, self.fuse = list(layers), fuse
        self.cut = CutState(self.layers)  # what the frozen layers' graph cut shares
        self.records: list[FrozenLayer] = []
        self._take_over()

    def _take_over(self) -> None:
        for layer in self.layers:
            for m in layer.modules:
                owner, grads = _OWNERS.get(m, (None, None))
                if owner is not None and owner() is not None and owner() is not self:
                    raise ValueError(
                        f"layers[{layer.index}] ({type(m).__name__}) is frozen by another FreezeOut that is still "
                        "open: close() that one first (or continue it: load its state_dict into a FreezeOut built "
                        "over a fresh optimizer)"
                    )
                if grads is not None:  # its owner is gone without close(): give the gradients back first
                    grads.remove()
                    del _OWNERS[m]
        stale = [m for layer in self.layers for m in layer.all_modules() if has_effects(m)]
        if stale:  # a deep copy of a frozen model, or a FreezeOut dropped unclosed: this one owns the layers now
            found = remove_effects(stale)
            log.info("removed %d FreezeOut effects already on the layers (a copy of a frozen model?)", found)

    def take_reports(self) -> list:
        """What the graph cut found since the last call (``Leak``s), handed over once."""
        reports, self.cut.reports = self.cut.reports, []
        return reports

    def learn_model(self, root: nn.Module | None) -> None:
        """The model the training loop calls, once known (the first training pass): its mode says when folds run."""
        if self.cut.root is None:
            self.cut.root = root

    @property
    def num_frozen(self) -> int:
        return len(self.records)

    def freeze_next(self, groups: Sequence[dict[str, Any]] = (), optimizer: Any = None) -> FrozenLayer:
        layer = self.layers[self.num_frozen]
        self.cut.frozen = self.num_frozen + 1
        record = _install(layer.index, _effects(layer, groups, optimizer, self.cut, self.fuse))
        self.records.append(record)
        grads = record.effects[0]
        for m in layer.modules:
            _OWNERS[m] = (weakref.ref(self), grads)
        return record

    def freeze_to(self, k: int) -> None:
        """Exactly the first ``k`` layers frozen: freezes the next ones, or unfreezes the last ones."""
        while self.num_frozen < k:
            self.freeze_next()
        while self.num_frozen > k:
            record = self.records.pop()
            record.remove()
            for m in self.layers[record.index].modules:
                _OWNERS.pop(m, None)
            self.cut.frozen = self.num_frozen

    def close(self) -> None:
        """Remove every effect, newest first: the layers train as before they froze."""
        self.freeze_to(0)
        self.cut.decision.clear()
