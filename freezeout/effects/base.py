"""The shape every effect of freezing has: a named object that installs itself on a user's modules and removes
itself without a trace, and the record of one frozen layer's effects."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..compat import forward_hooks

__all__ = ["Effect", "FrozenLayer", "OwnedHook", "has_effects", "remove_effects"]


class OwnedHook:
    """Base of every hook and patched ``forward`` FreezeOut puts on a module: what ``remove_effects`` looks for.

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

    def hook(self, module: nn.Module, pre: Any = None, post: Any = None, *, kwargs: bool = False, first: bool = True):
        """Register ``pre`` among ``module``'s pre-hooks (``first``: before any other, so it sees the call first;
        else last, so it sees the inputs as the module gets them) and ``post`` to run even when the forward raises;
        both are removed by ``remove()``."""
        if pre is not None:
            self.handles.append(module.register_forward_pre_hook(pre, prepend=first, with_kwargs=kwargs))
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


def _owned(module: nn.Module) -> Iterable[tuple[dict[int, Any], int]]:
    for hooks in forward_hooks(module):
        for key, h in list(hooks.items()):
            if isinstance(h, OwnedHook):
                yield hooks, key


def has_effects(module: nn.Module) -> bool:
    """Whether FreezeOut left anything on ``module`` itself (a hook or a patched ``forward``)."""
    return isinstance(module.__dict__.get("forward"), OwnedHook) or any(True for _ in _owned(module))


def remove_effects(modules: nn.Module | Sequence[nn.Module]) -> int:
    """Strip every FreezeOut hook and patched ``forward`` from ``modules`` and everything inside them; returns how
    many it found. For a copy of a frozen model (``copy.deepcopy`` carries the frozen state along, live) that should
    train again: ``FreezeOut.close()`` is the way for the model FreezeOut itself drives. ``requires_grad`` is left
    as it is."""
    roots = [modules] if isinstance(modules, nn.Module) else list(modules)
    found = 0
    for root in roots:
        for m in root.modules():
            for hooks, key in list(_owned(m)):
                del hooks[key]
                found += 1
            patched = m.__dict__.get("forward")
            while isinstance(patched, OwnedHook):
                del m.__dict__["forward"]
                previous = getattr(patched, "previous", None)
                if previous is not None:
                    m.__dict__["forward"] = previous
                patched, found = previous, found + 1
    return found
