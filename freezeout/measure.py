"""Measurements that show freezing is real: bytes autograd keeps for backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["saved_tensor_bytes"]


def saved_tensor_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` (a forward pass) and return ``(its result, bytes autograd saved for backward)``.

    Storages saved by several ops (a ReLU output that is also a conv input) are counted once, so the
    number is the memory the graph really pins, parameters included.
    """
    storages: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[(s.data_ptr(), s.nbytes())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())
