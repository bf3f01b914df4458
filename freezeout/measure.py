"""Measuring a model without changing it: bytes autograd keeps for backward, a synced clock, a probe in eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .freezing.mode import requested_training

__all__ = ["SavedStorages", "eval_mode", "saved_tensor_bytes", "sync"]


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


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` in eval mode inside the block, each one's own mode restored after.

    A probe (a traced pass, a FLOP count) must leave BatchNorm statistics and modes as found: each module gets back
    the mode it was asked for, a frozen one too (which reads ``False`` while frozen, ``freezing.mode``).
    """
    modes = [(m, requested_training(m)) for m in model.modules()]
    try:
        for m, _ in modes:
            m.training = False
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
