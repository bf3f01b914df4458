"""Frozen layers' BatchNorms folded into their convolutions (``fuse=True``): which pairs fold (``pairs``), the
BatchNorm subclasses that do more after normalising (``tail``), and the effect that proves, confirms and runs the
folds (``effect``)."""

from .effect import BatchNormFold, FoldWarning, active_fold, find_fold, fold_effects, folds_running
from .pairs import FoldPair, border_map, call_pairs, folded_weights

__all__ = [
    "BatchNormFold",
    "FoldPair",
    "FoldWarning",
    "active_fold",
    "border_map",
    "call_pairs",
    "find_fold",
    "fold_effects",
    "folded_weights",
    "folds_running",
]
