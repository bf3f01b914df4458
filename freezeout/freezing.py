"""What "frozen" means for one layer (docs/METHOD.md, "What frozen means"), as a single operation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .layers import Layer, LayerLike, as_layers

__all__ = ["freeze_layer", "is_frozen", "lock_eval", "training_requested", "unlock_eval"]


class _EvalLock:
    """Replaces a frozen module's ``train`` so ``model.train()`` cannot put it back in training mode.

    It remembers the mode asked for (``requested``): a frozen layer runs in eval mode either way, but
    ``accel.fuse`` runs its folded forward only while the model around it is training, never after
    ``model.eval()``. A class, not a closure, so a model holding one still pickles (``torch.save``, deepcopy).
    """

    def __init__(self, module: nn.Module, requested: bool = True) -> None:
        self.module = module
        self.requested = requested

    def __call__(self, mode: bool = True) -> nn.Module:
        self.requested = bool(mode)
        return nn.Module.train(self.module, False)


def is_frozen(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("train"), _EvalLock)


def lock_eval(module: nn.Module) -> None:
    """Put ``module`` in eval mode and keep it there through ``model.train()`` (a no-op if locked already)."""
    if not is_frozen(module):
        requested = module.training  # the mode the model is in now, until its next train()/eval()
        module.train(False)
        module.train = _EvalLock(module, requested)


def unlock_eval(module: nn.Module) -> None:
    """Undo ``lock_eval``: ``train()`` works again and the module takes the mode last asked for."""
    if is_frozen(module):
        lock = module.__dict__.pop("train")
        module.train(lock.requested)


def training_requested(module: nn.Module) -> bool:
    """Whether the model asked ``module`` to train: its own mode, or for a locked one the mode its lock refused."""
    lock = module.__dict__.get("train")
    return lock.requested if isinstance(lock, _EvalLock) else module.training


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
        lock_eval(m)
