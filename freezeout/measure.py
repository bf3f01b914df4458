"""Measuring a model without changing it: bytes autograd keeps for backward, a synced clock, a probe in eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["eval_mode", "saved_tensor_bytes", "sync"]


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


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` in eval mode inside the block, each one's own mode restored after.

    The flags are set directly, not through ``train()``: a frozen layer's locked ``train`` must not be
    bypassed, and a probe (a traced pass, a FLOP count) must leave BatchNorm statistics and modes as found.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in modes:
            m.training = False
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
