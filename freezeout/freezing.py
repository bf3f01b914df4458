"""What "frozen" means for one layer (docs/METHOD.md, "What frozen means"), as a single operation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .layers import Layer, LayerLike, as_layers

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


def freeze_layer(layer: LayerLike | Layer, groups: dict[str, Any] | Sequence[dict[str, Any]], optimizer: Any) -> None:
    """Freeze ``layer`` (a module, or a group of modules and parameters) for the rest of training; ``groups``
    are its optimizer groups (one dict, or a list).

    - ``requires_grad=False``: autograd neither computes its gradient nor, since frozen layers are a
      prefix of the network, records its ops and keeps their activations.
    - ``grad = None``: optimizers skip a parameter without a grad but move one whose grad is a zero
      tensor (weight decay, momentum); ``zero_grad(set_to_none=False)`` leaves a None grad None.
    - LR 0 and the optimizer state dropped: nothing can move it, and momentum/Adam moments free memory.
    - eval mode, locked: BatchNorm uses and keeps its running statistics, dropout is off.
    """
    item = layer if isinstance(layer, Layer) else as_layers([layer])[0]
    groups = [groups] if isinstance(groups, dict) else list(groups)
    # The groups' parameters too: under FSDP2 the module may hold gathered copies of them at this moment.
    for p in (*item.parameters(), *(p for group in groups for p in group["params"])):
        p.requires_grad_(False)
        p.grad = None
        optimizer.state.pop(p, None)
    for group in groups:
        group["lr"] = 0.0
    for m in item.modules:
        m.train(False)
        m.train = _EvalLock(m)
