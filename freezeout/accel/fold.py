"""Fold the BatchNorms of a layer frozen by hand (``freezeout.freeze_layer``) into its convolutions.

``FreezeOut(..., fuse=True)`` folds each layer as it freezes (``freezeout.freezing.folding`` says when a fold runs
and why it is exact); these functions do the same for a layer frozen outside a ``FreezeOut``.
"""

from __future__ import annotations

from torch import nn

from ..freezing import in_inference_mode
from ..freezing.folding import BatchNormFold, find_fold
from ..layers import as_layers

__all__ = ["fold_layer", "is_folded", "unfold_layer"]


def fold_layer(layer: nn.Module) -> int:
    """Fold the BatchNorms of the frozen ``layer`` into its convolutions for its training forwards, where each call's
    dataflow proves it and its first call of each kind confirms it; returns how many of its modules prove their calls
    (0: nothing in it could fold, and nothing is installed). A no-op on a layer folded already.

    ``layer`` must be frozen (``freeze_layer``: inference mode, no parameter requiring grad), else ``ValueError``:
    a fold is exact only while the weights and statistics it copies stay fixed.
    """
    if not isinstance(layer, nn.Module):
        raise ValueError(f"layer must be an nn.Module, got {type(layer).__name__}")
    effect = find_fold(layer)
    if effect is not None:
        return len(effect.scopes)
    if not in_inference_mode(layer) or any(p.requires_grad for p in layer.parameters()):
        raise ValueError(
            f"layer ({type(layer).__name__}) must be frozen before folding (freezeout.freeze_layer): folded "
            "weights are exact only while the weights and BatchNorm statistics they copy stay fixed"
        )
    effect = BatchNormFold(as_layers([layer])[0])
    effect.install()
    return len(effect.scopes)


def unfold_layer(layer: nn.Module) -> None:
    """Undo ``fold_layer``: the layer runs its real modules in every forward again (a no-op if not folded)."""
    effect = find_fold(layer)
    if effect is not None:
        effect.remove()


def is_folded(layer: nn.Module) -> bool:
    """Whether BatchNorms of ``layer`` may fold (by ``FreezeOut`` or ``fold_layer``)."""
    return find_fold(layer) is not None
