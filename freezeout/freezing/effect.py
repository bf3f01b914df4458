"""The shape of everything freezing does to a user's modules: a named ``Effect`` that installs itself and removes
itself without a trace, the record of one frozen layer's effects, and ``OwnedHook``, the mark on every hook and
``forward`` FreezeOut puts on a module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["Effect", "FrozenLayer", "OwnedHook"]


class OwnedHook:
    """Base of every hook and instance ``forward`` FreezeOut puts on a module: what ``remove_effects`` looks for.

    Hooks hold only the modules they act on and state of their own (never a controller or an optimizer), so a
    ``copy.deepcopy`` of a frozen model gets hooks bound to the copy: the copy runs frozen like the original.
    """


class Effect:
    """One thing freezing does to a layer. ``install()`` once; ``remove()`` undoes it (idempotent)."""

    name = "effect"

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []

    def install(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def hook(self, module: nn.Module, pre: Any = None, post: Any = None, *, kwargs: bool = False) -> None:
        """Register ``pre`` last among ``module``'s pre-hooks (it sees the inputs as the module gets them) and
        ``post`` to run even when the forward raises; ``remove()`` takes both off."""
        if pre is not None:
            self.handles.append(module.register_forward_pre_hook(pre, with_kwargs=kwargs))
        if post is not None:
            self.handles.append(module.register_forward_hook(post, always_call=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


@dataclass(eq=False)
class FrozenLayer:
    """The effects installed when ``layers[index]`` froze, in install order."""

    index: int
    effects: list[Effect] = field(default_factory=list)

    def remove(self) -> None:
        for effect in reversed(self.effects):
            effect.remove()
        self.effects.clear()

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.effects]
