"""Which example ``PrefixCache`` holds at which depth, under which fingerprint, and what that takes: the book.

An example's row is valid when its stored fingerprint equals its input's now; it lives in the slab of its depth
and input structure (``cache_store.Slab``). A row about to be overwritten is released first, so a forward that
breaks off half-way leaves no row that claims data it does not have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .cache_store import LeafSpec, Slab

__all__ = ["Rows"]


class Rows:
    """The book of ``num_examples`` rows; ``max_bytes`` caps what the slabs hold, ``path`` memory-maps them."""

    def __init__(self, num_examples: int, max_bytes: int | None, path: str | None) -> None:
        self.n, self.max_bytes, self.path = num_examples, max_bytes, path
        self.depth = torch.zeros(num_examples, dtype=torch.int64)  # 0: nothing stored
        self.fp = torch.zeros(num_examples, 2, dtype=torch.int64)
        self.key = [0] * num_examples  # the input structure each row was stored under
        self.slabs: dict[tuple[int, int], Slab] = {}  # (depth, structure) -> the frontier's rows
        self._poison: dict[tuple[LeafSpec, int], torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return sum(s.rows * s.row_bytes for s in self.slabs.values())

    def clear(self) -> None:
        self.slabs.clear()
        self.depth.zero_()

    def lookup(self, rows: torch.Tensor, fp: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Each row's valid depth (0: none), how many were stored before, how many of those changed."""
        stored = self.depth[rows]
        same = (self.fp[rows] == fp).all(1)
        seen = stored > 0
        return torch.where(same & seen, stored, torch.zeros_like(stored)), int(seen.sum()), int((seen & ~same).sum())

    def poisoned(self, spec: LeafSpec, batch: int) -> torch.Tensor:
        """A NaN batch of ``spec`` for a placeholder, made once: filling a fresh one at every call costs more than
        the frozen layer it stands for (the pages touched)."""
        key = (spec, batch)
        if key not in self._poison:
            self._poison[key] = spec.poisoned(batch)
        return self._poison[key]

    def drop(self, which: Callable[[int, int], bool]) -> None:
        """Forget the slabs (depth, structure) for which ``which`` is true, and their rows."""
        for d, key in [dk for dk in self.slabs if which(*dk)]:
            del self.slabs[(d, key)]
            gone = [i for i in (self.depth == d).nonzero().reshape(-1).tolist() if self.key[i] == key]
            self.depth[gone] = 0

    def slab(self, depth: int, key: int, specs: Callable[[], Sequence[LeafSpec]]) -> Slab:
        if (depth, key) not in self.slabs:
            self.slabs[(depth, key)] = Slab(depth, specs(), self.n, self.path)
        return self.slabs[(depth, key)]

    def choose(self, rows: torch.Tensor, depths: torch.Tensor, slab: Slab) -> torch.Tensor:
        """Positions among ``rows`` to store in ``slab``: those below its depth, while the cap allows (a row held
        elsewhere gives its place back)."""
        below = (depths < slab.depth).nonzero().reshape(-1)
        if self.max_bytes is None or not below.numel():
            return below
        room, keep = self.max_bytes - self.nbytes, []
        for pos in below.tolist():
            row = int(rows[pos])
            d = int(self.depth[row])
            cost = slab.row_bytes - (self.slabs[(d, self.key[row])].row_bytes if d else 0)
            if cost <= room:
                room -= cost
                keep.append(pos)
        return torch.tensor(keep, dtype=torch.int64)

    def release(self, rows: torch.Tensor, slab: Slab, key: int) -> None:
        """``rows`` of ``slab`` are about to be overwritten: not valid until ``commit``."""
        for row, d in zip(rows.tolist(), self.depth[rows].tolist()):
            if d == slab.depth and self.key[row] == key:
                self.depth[row] = 0
                slab.rows -= 1

    def commit(self, rows: torch.Tensor, slab: Slab, key: int, fp: torch.Tensor) -> None:
        """``rows`` now hold their input's (fingerprint ``fp``) frontier in ``slab``."""
        for row, d in zip(rows.tolist(), self.depth[rows].tolist()):
            if d:
                self.slabs[(d, self.key[row])].rows -= 1
            self.key[row] = key
        self.depth[rows], self.fp[rows] = slab.depth, fp
        slab.rows += rows.numel()
        self.drop(lambda d, k: (d, k) != (slab.depth, key) and self.slabs[(d, k)].rows == 0)
