"""The bytes autograd keeps for backward: what freezing is measured by (docs/METHOD.md, "What frozen means")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["SavedStorages", "saved_tensor_bytes"]


class SavedStorages:
    """The storages autograd saves for backward, each counted once however many saved tensors share it (a ReLU
    output that is also a conv input): the memory the graph really pins. ``add`` is a saved-tensor pack hook's
    bookkeeping; every count of saved bytes in the package goes through it."""

    def __init__(self) -> None:
        self.sizes: dict[tuple[int, int], int] = {}  # (data pointer, bytes) of a storage -> its bytes

    def add(self, t: torch.Tensor) -> torch.Tensor:
        """Count ``t``'s storage (once) and return ``t``."""
        s = t.untyped_storage()
        self.sizes.setdefault((s.data_ptr(), s.nbytes()), s.nbytes())
        return t

    @property
    def nbytes(self) -> int:
        return sum(self.sizes.values())


def saved_tensor_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` (a forward pass) and return ``(its result, bytes autograd saved for backward)``, parameters
    included, each storage counted once (``SavedStorages``)."""
    saved = SavedStorages()
    with torch.autograd.graph.saved_tensors_hooks(saved.add, lambda t: t):
        out = fn()
    return out, saved.nbytes
