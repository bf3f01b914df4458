"""What "frozen" means for one layer (docs/METHOD.md, "What frozen means"), as a single operation."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["freeze_layer", "is_frozen"]


class _EvalLock:
    """Replaces a frozen module's ``train`` so ``model.train()`` cannot put it back in training mode.

    A class, not a closure, so a model holding one still pickles (``torch.save(model)``, deepcopy).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def is_frozen(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("train"), _EvalLock)


def freeze_layer(layer: nn.Module, group: dict[str, Any], optimizer: Any) -> None:
    """Freeze ``layer`` for the rest of training; ``group`` is its optimizer group.

    - ``requires_grad=False``: autograd neither computes its gradient nor, since frozen layers are a
      prefix of the network, records its ops and keeps their activations.
    - ``grad = None``: optimizers skip a parameter without a grad but move one whose grad is a zero
      tensor (weight decay, momentum); ``zero_grad(set_to_none=False)`` leaves a None grad None.
    - LR 0 and the optimizer state dropped: nothing can move it, and momentum/Adam moments free memory.
    - eval mode, locked: BatchNorm uses and keeps its running statistics, dropout is off.
    """
    for p in layer.parameters():
        p.requires_grad_(False)
        p.grad = None
        optimizer.state.pop(p, None)
    group["lr"] = 0.0
    layer.train(False)
    layer.train = _EvalLock(layer)
