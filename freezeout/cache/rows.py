"""Which example ``PrefixCache`` holds at which depth, under which fingerprint: ``StoredRows``.

An example's row is valid when its stored fingerprint equals its input's now; it lives in the ``RowTable`` of its
depth and input structure. A row about to be overwritten is released first, so a forward that breaks off half-way
leaves no row that claims data it does not have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .store import LeafSpec, RowTable

__all__ = ["StoredRows"]


class StoredRows:
    """The rows of ``num_examples`` examples; ``max_bytes`` caps what the tables hold, ``path`` memory-maps them."""

    def __init__(self, num_examples: int, max_bytes: int | None, path: str | None) -> None:
        self.n, self.max_bytes, self.path = num_examples, max_bytes, path
        self.depth = torch.zeros(num_examples, dtype=torch.int64)  # 0: nothing stored
        self.fp = torch.zeros(num_examples, 2, dtype=torch.int64)
        self.key = [0] * num_examples  # the input structure each row was stored under
        self.tables: dict[tuple[int, int], RowTable] = {}  # (depth, structure) -> the frontier's rows
        self._placeholders: dict[tuple[LeafSpec, int], torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return sum(t.rows * t.row_bytes for t in self.tables.values())

    def clear(self) -> None:
        self.tables.clear()
        self.depth.zero_()

    def lookup(self, indices: torch.Tensor, fp: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Each example's valid depth (0: none), how many were stored before, how many of those changed."""
        stored = self.depth[indices]
        same = (self.fp[indices] == fp).all(1)
        seen = stored > 0
        return torch.where(same & seen, stored, torch.zeros_like(stored)), int(seen.sum()), int((seen & ~same).sum())

    def placeholder(self, spec: LeafSpec, batch: int) -> torch.Tensor:
        """A NaN batch of ``spec`` standing for an output nobody reads, made once: filling a fresh one at every
        call costs more than the frozen layer it stands for (the pages touched)."""
        key = (spec, batch)
        if key not in self._placeholders:
            self._placeholders[key] = spec.placeholder(batch)
        return self._placeholders[key]

    def drop(self, which: Callable[[int, int], bool]) -> None:
        """Forget the tables (depth, structure) for which ``which`` is true, and their rows."""
        for d, key in [dk for dk in self.tables if which(*dk)]:
            del self.tables[(d, key)]
            gone = [i for i in (self.depth == d).nonzero().reshape(-1).tolist() if self.key[i] == key]
            self.depth[gone] = 0

    def table(self, depth: int, key: int, specs: Callable[[], Sequence[LeafSpec]]) -> RowTable:
        if (depth, key) not in self.tables:
            self.tables[(depth, key)] = RowTable(depth, specs(), self.n, self.path)
        return self.tables[(depth, key)]

    def choose(self, indices: torch.Tensor, depths: torch.Tensor, table: RowTable) -> torch.Tensor:
        """Positions among ``indices`` to store in ``table``: those below its depth, while the cap allows (a row
        held elsewhere gives its place back)."""
        below = (depths < table.depth).nonzero().reshape(-1)
        if self.max_bytes is None or not below.numel():
            return below
        room, keep = self.max_bytes - self.nbytes, []
        for pos in below.tolist():
            example = int(indices[pos])
            d = int(self.depth[example])
            cost = table.row_bytes - (self.tables[(d, self.key[example])].row_bytes if d else 0)
            if cost <= room:
                room -= cost
                keep.append(pos)
        return torch.tensor(keep, dtype=torch.int64)

    def release(self, indices: torch.Tensor, table: RowTable, key: int) -> None:
        """The rows of ``indices`` in ``table`` are about to be overwritten: not valid until ``commit``."""
        for example, d in zip(indices.tolist(), self.depth[indices].tolist()):
            if d == table.depth and self.key[example] == key:
                self.depth[example] = 0
                table.rows -= 1

    def commit(self, indices: torch.Tensor, table: RowTable, key: int, fp: torch.Tensor) -> None:
        """The examples ``indices`` now hold their input's (fingerprint ``fp``) frontier in ``table``."""
        for example, d in zip(indices.tolist(), self.depth[indices].tolist()):
            if d:
                self.tables[(d, self.key[example])].rows -= 1
            self.key[example] = key
        self.depth[indices], self.fp[indices] = table.depth, fp
        table.rows += indices.numel()
        self.drop(lambda d, k: (d, k) != (table.depth, key) and self.tables[(d, k)].rows == 0)
