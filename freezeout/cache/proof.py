"""What the cache knows about the model: per depth and input structure, a ``Proof`` (the frozen calls one forward
made, and the tensors it read before the frontier) or why there is none; ``Proofs`` keeps them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..compat import forward_hooks, global_hooks
from ..freezing import OwnedHook
from ..tensors import items, tensors
from .rows import StoredRows
from .state import Read, StateWatch
from .store import LeafSpec

__all__ = ["PLAIN", "CallRecord", "Proof", "Proofs", "call_signature", "hooked_by_others", "others"]

log = logging.getLogger("freezeout.cache")

PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)  # values a call may take besides tensors
_MAX_CHANGES = 3  # a tensor read before the frontier that changes this often changes at every step


def others(value: Any) -> Iterator[Any]:
    """The non-tensor leaves of a nested structure."""
    return (v for v in items(value) if not isinstance(v, torch.Tensor))


def call_signature(value: Any, batch: int) -> int:
    """The structure of a frozen call's inputs: types, plain values, tensor dtypes and shapes (batch left out)."""
    parts: list[Any] = []
    for t in tensors(value):
        per_row = t.dim() > 0 and t.shape[0] == batch
        parts.append((t.dtype, tuple(t.shape[1:]) if per_row else ("shared", *t.shape)))
    parts.extend((type(v).__name__, v if isinstance(v, PLAIN) else id(type(v))) for v in others(value))
    return hash(tuple(parts))


def hooked_by_others(modules: Iterable[nn.Module]) -> str | None:
    """The first module with a hook that is not FreezeOut's own (it would not run for a served example)."""
    if global_hooks():
        return "a global module hook is registered"
    for m in modules:
        for hooks in forward_hooks(m):
            if any(not isinstance(h, OwnedHook) for h in hooks.values()):
                return f"{type(m).__name__} carries a forward hook of another library or the user"
    return None


@dataclass(eq=False, repr=False)
class CallRecord:
    """One frozen module's call in the proving forward: what it returns, per example."""

    module: nn.Module
    layer: int
    signature: int
    specs: list[LeafSpec]
    template: Any
    offset: int = 0  # its first leaf among the leaves of its layer's row table
    batch_free: bool = False  # no tensor in or out is per example (a position embedding): runs in every forward

    def __repr__(self) -> str:
        return f"CallRecord({type(self.module).__name__}, layers[{self.layer}])"


@dataclass(eq=False, repr=False)
class Proof:
    """A forward at ``depth`` frozen layers passed every check: the frozen calls in order, the state they read."""

    depth: int
    calls: list[CallRecord] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Proof(depth={self.depth}, {len(self.calls)} calls, {len(self.reads)} tensors read)"

    def frontier(self) -> list[LeafSpec]:
        return [s for c in self.calls if c.layer == self.depth - 1 and not c.batch_free for s in c.specs]

    @property
    def last_frontier_call(self) -> int:
        return max(i for i, c in enumerate(self.calls) if c.layer == self.depth - 1)


class Proofs:
    """The proof (or why none) for each (depth, input structure), and the tensors the proofs read, stamped."""

    def __init__(self) -> None:
        self.known: dict[tuple[int, int], Proof | str] = {}
        self.watch = StateWatch()
        self.changes: dict[str, int] = {}  # how often each read tensor changed, by name (a replaced one too)

    def get(self, depth: int, key: int) -> Proof | str | None:
        return self.known.get((depth, key))

    def add(self, proof: Proof, key: int) -> None:
        self.known[(proof.depth, key)] = proof
        self.watch.add(proof.reads)

    def refuse(self, depth: int, key: int, why: str) -> None:
        self.known[(depth, key)] = why

    def clear(self) -> None:
        self.known.clear()
        self.watch.clear()

    def refresh(self, stored: StoredRows) -> None:
        """Rows past a layer that reads a tensor that changed are dropped; so are the proofs past it when the
        tensor was replaced or moved (their shapes and dtypes may be stale), or when it changes at every step."""
        for read, how in self.watch.changed():
            i = read.layer
            stored.drop(lambda d, key, i=i: d > i)
            count = self.changes[read.name] = self.changes.get(read.name, 0) + 1
            if count >= _MAX_CHANGES:
                why = f"{read.name}, read by frozen layers[{i}], changes between steps"
                self.known.update({dk: why for dk in self.known if dk[0] > i})
            elif how != "modified in place":
                self.known = {dk: p for dk, p in self.known.items() if dk[0] <= i}
            log.info("PrefixCache: %s was %s: rows past frozen layers[%d] dropped", read.name, how, i)
