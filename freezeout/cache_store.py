"""Where ``PrefixCache`` keeps its rows, and the per-example fingerprint that keeps them from going stale.

A ``Slab`` holds one depth's frontier: for each tensor that the frontier layer's calls return, a
``[num_examples, *row]`` tensor in the activations' own dtype, an example's row at its index in the data set
(in memory on the activations' device, or memory-mapped from a file under ``path``, created under a fresh name
and unlinked at once, so no file is left behind whatever happens to the process). Untouched rows cost no memory:
the pages are the operating system's until a row is written.

``fingerprints`` hashes each example's input (every tensor whose first dimension is the batch, row by row; the
others and every non-tensor value as part of the structure) into two 64-bit words: an input that changed in any
element, shape or dtype gets another fingerprint.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .hooks import map_tensors, tensors

__all__ = ["LeafSpec", "Slab", "fingerprints", "leaf_specs", "skeleton", "structure_key"]

_INT_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class LeafSpec:
    """One tensor of a layer's output, per example: its shape without the batch, dtype, device and layout
    (the order of its dimensions in memory, so a served tensor has the strides the computed one had)."""

    row: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    order: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        n = 1
        for s in self.row:
            n *= s
        return n * self.dtype.itemsize

    def empty(self, batch: int) -> torch.Tensor:
        """An uninitialised batch of this leaf in its layout."""
        shape = (batch, *self.row)
        t = torch.empty([shape[i] for i in self.order], dtype=self.dtype, device=self.device)
        return t.permute([self.order.index(i) for i in range(len(shape))])

    def poisoned(self, batch: int) -> torch.Tensor:
        """A batch that must never be read: NaN where the dtype has one, so a value that leaked shows."""
        t = self.empty(batch)
        return t.fill_(float("nan") if t.is_floating_point() or t.is_complex() else 0)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (a dense batch of this leaf) in this leaf's layout."""
        if self.order == tuple(range(t.dim())):
            return t
        out = self.empty(t.shape[0])
        return out.copy_(t)


def _order(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(sorted(range(t.dim()), key=lambda i: (-t.stride(i), i)))


def leaf_specs(value: Any) -> list[LeafSpec]:
    return [LeafSpec(tuple(t.shape[1:]), t.dtype, t.device, _order(t)) for t in tensors(value)]


_META = torch.empty(0, device="meta")


def skeleton(value: Any) -> Any:
    """``value`` with every tensor replaced by one empty meta tensor: its structure, holding no memory."""
    return map_tensors(value, lambda t: _META)


def fill(template: Any, leaves: Sequence[torch.Tensor]) -> Any:
    """The structure of ``skeleton`` with its tensors, in order, from ``leaves``."""
    it = iter(leaves)
    return map_tensors(template, lambda t: next(it))


class Slab:
    """The frontier after ``depth`` frozen layers: a row per example for each of ``specs``."""

    def __init__(self, depth: int, specs: Sequence[LeafSpec], num_examples: int, path: str | None) -> None:
        self.depth, self.specs, self.path = depth, list(specs), path
        self.row_bytes = sum(s.row_bytes for s in self.specs)
        self.rows = 0  # examples held
        self.data = [self._alloc(s, num_examples) for s in self.specs]

    def _alloc(self, spec: LeafSpec, n: int) -> torch.Tensor:
        shape = (n, *spec.row)
        if self.path is None:
            return torch.empty(shape, dtype=spec.dtype, device=spec.device)
        numel = n * (spec.row_bytes // spec.dtype.itemsize)
        fd, name = tempfile.mkstemp(prefix=".freezeout-cache-", suffix=".bin", dir=self.path)
        try:
            os.ftruncate(fd, max(numel * spec.dtype.itemsize, 1))
            mapped = torch.from_file(name, shared=True, size=numel, dtype=spec.dtype)
        finally:
            os.close(fd)
            os.unlink(name)  # the mapping stays valid; nothing is left on disk after the process
        return mapped.view(shape)

    def write(self, rows: torch.Tensor, leaves: Sequence[torch.Tensor], first: int = 0) -> None:
        """``leaves`` (a batch of each, ``rows`` long) into ``rows``, from leaf ``first`` on."""
        with torch.no_grad():
            for store, leaf in zip(self.data[first : first + len(leaves)], leaves, strict=True):
                store.index_copy_(0, rows.to(store.device), leaf.detach().to(store.device))

    def read(self, leaf: int, rows: torch.Tensor) -> torch.Tensor:
        spec = self.specs[leaf]
        out = self.data[leaf].index_select(0, rows.to(self.data[leaf].device)).to(spec.device, non_blocking=True)
        return spec.layout(out)


def _words(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype == torch.bool:
        x = t.to(torch.int64)
    elif t.is_floating_point():
        x = t.contiguous().view(_INT_OF[t.element_size()]).to(torch.int64)
    else:
        x = t.to(torch.int64)
    return x.reshape(batch, -1)


_WEIGHTS: dict[tuple[int, str], torch.Tensor] = {}


def _weights(n: int, device: torch.device) -> torch.Tensor:
    key = (n, str(device))
    w = _WEIGHTS.get(key)
    if w is None:
        g = torch.Generator().manual_seed(0x5EED + n)
        w = (torch.randint(-(2**62), 2**62, (2, n), generator=g, dtype=torch.int64) | 1).to(device)
        if len(_WEIGHTS) > 64:
            _WEIGHTS.clear()
        _WEIGHTS[key] = w
    return w


def structure_key(value: Any, batch: int) -> int:
    """A hash of ``value``'s structure: keys, types, non-tensor leaves, each tensor's dtype and shape (the batch
    dimension left out), and the content of the tensors that are not per example."""
    parts: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            per_row = v.dim() > 0 and v.shape[0] == batch
            parts.append((str(v.dtype), tuple(v.shape[1:]) if per_row else ("shared", *v.shape), per_row))
            if not per_row:
                parts.append(tuple(_words(v.reshape(1, -1), 1).mul(_weights(v.numel(), v.device)).sum(1).tolist()))
        elif isinstance(v, (list, tuple)):
            parts.append((type(v).__name__, len(v)))
            for x in v:
                walk(x)
        elif isinstance(v, dict) or hasattr(v, "items"):
            for k, x in v.items():
                parts.append(("key", str(k)))
                walk(x)
        else:
            parts.append((type(v).__name__, repr(v)))

    walk(value)
    return hash(tuple(parts))


def fingerprints(value: Any, batch: int) -> tuple[torch.Tensor, int]:
    """``[batch, 2]`` int64 words per example: a linear hash with odd random weights of every per-example
    tensor's row (its bits, for floats), mixed with ``structure_key``; and that key."""
    key = structure_key(value, batch)
    out = torch.full((batch, 2), key & 0x3FFFFFFFFFFFFFFF, dtype=torch.int64)
    for t in tensors(value):
        if t.dim() > 0 and t.shape[0] == batch:
            x = _words(t, batch)
            h = (x.unsqueeze(1) * _weights(x.shape[1], x.device)).sum(2).cpu()
            out = out * 1000003 + h
    return out, key
