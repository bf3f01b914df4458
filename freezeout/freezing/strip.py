"""Finding and removing what FreezeOut left on modules it no longer drives: a deep copy of a frozen model (which
carries the frozen state along, live) or layers whose controller was dropped without ``close()``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ..compat import forward_hooks
from .effect import OwnedHook
from .forwards import forwards_of, strip_forwards
from .mode import in_inference_mode, unlock_eval

__all__ = ["has_effects", "remove_effects"]


def _owned(module: nn.Module) -> Iterable[tuple[dict[int, Any], int]]:
    for hooks in forward_hooks(module):
        for key, h in list(hooks.items()):
            if isinstance(h, OwnedHook):
                yield hooks, key


def has_effects(module: nn.Module) -> bool:
    """Whether FreezeOut left anything on ``module`` itself: a hook, an instance ``forward`` of the freeze, its
    frozen class."""
    return (
        in_inference_mode(module)
        or any(f.part_of_freeze for f in forwards_of(module))
        or any(True for _ in _owned(module))
    )


def remove_effects(modules: nn.Module | Sequence[nn.Module]) -> int:
    """Strip every FreezeOut hook, instance ``forward`` and frozen class from ``modules`` and everything inside
    them; returns how many it found. For a copy of a frozen model (``copy.deepcopy`` carries the frozen state along,
    live) that should train again: ``FreezeOut.close()`` is the way for the model FreezeOut itself drives.
    ``requires_grad`` is left as it is; ``compile_blocks``' forwards stay (``uncompile_blocks`` removes them)."""
    roots = [modules] if isinstance(modules, nn.Module) else list(modules)
    found = 0
    for root in roots:
        for m in root.modules():
            for hooks, key in list(_owned(m)):
                del hooks[key]
                found += 1
            found += strip_forwards(m) + unlock_eval(m)
    return found
