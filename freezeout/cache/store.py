"""Where ``PrefixCache`` keeps its rows: one ``RowTable`` per depth.

A ``RowTable`` holds one depth's frontier: for each tensor that the frontier layer's calls return, a
``[num_examples, *row]`` tensor in the activations' own dtype, an example's row at its index in the data set
(in memory on the activations' device, or memory-mapped from a file under ``path``, created under a fresh name
and unlinked at once, so no file is left behind whatever happens to the process). Untouched rows cost no memory:
the pages are the operating system's until a row is written. Rows are written with copies of the tensors, taken
at the frozen call: what the model does to its activations afterwards (an in-place activation) does not reach them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..tensors import map_tensors, tensors

__all__ = ["LeafSpec", "RowTable", "fill", "leaf_specs", "skeleton"]


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

    def placeholder(self, batch: int) -> torch.Tensor:
        """A batch that is never read (the proof shows it): NaN where the dtype has one, so a value that leaked
        shows."""
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


class RowTable:
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
