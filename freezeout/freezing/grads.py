"""A frozen layer's parameters stop training: no gradient, no optimizer state, LR 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .effect import Effect

__all__ = ["StopGradients"]


class StopGradients(Effect):
    """``requires_grad=False`` on the layer's parameters (and on its optimizer groups' ones: under FSDP2 the module
    may hold gathered copies at the freeze), ``grad = None`` (optimizers skip a parameter without a grad but move one
    whose grad is a zero tensor: weight decay, momentum), its optimizer state dropped (momentum and Adam moments
    free their memory) and its groups' LR 0. ``remove()`` gives back each ``requires_grad`` as it was; gradients and
    optimizer state start afresh."""

    name = "no gradient"

    def __init__(self, params: Sequence[nn.Parameter], groups: Sequence[dict[str, Any]] = (), optimizer: Any = None):
        super().__init__()
        seen: dict[int, nn.Parameter] = {}
        for p in (*params, *(p for g in groups for p in g["params"])):
            seen.setdefault(id(p), p)
        self.params, self.groups, self.optimizer = list(seen.values()), list(groups), optimizer
        self.before: list[bool] | None = None

    def install(self) -> None:
        self.before = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)
            p.grad = None
            if self.optimizer is not None:
                self.optimizer.state.pop(p, None)
        for group in self.groups:
            group["lr"] = 0.0
        self.optimizer = None  # nothing more to do with it: a removed effect must not keep it alive

    def remove(self) -> None:
        if self.before is not None:
            for p, flag in zip(self.params, self.before):
                p.requires_grad_(flag)
            self.before = None
        self.groups = []
