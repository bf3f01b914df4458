"""The tensors the frozen prefix reads besides its input, and whether they changed since a row was stored.

The forward that proves a depth (``proof.Recorder``) notes every tensor that an op reads before the frontier and
that this forward did not make: the frozen layers' weights and buffers, a tensor the glue reads (a scale, a
position table), a weight of another module (GPT-2's token embedding, tied to the head). Each is a ``Read`` with
the frozen layer it flows into and a stamp of its storage (version counter, data pointer); one the
model holds (a parameter, a buffer, a tensor attribute) also with where it is held, so that replacing it counts
too. ``StateWatch.changed`` compares them before each batch: a changed one makes the rows stored past its layer
stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..compat import tensor_slot, tensor_version

__all__ = ["Holder", "Read", "StateWatch", "held_tensors", "stamp"]


@dataclass(frozen=True)
class Holder:
    """Where the model holds a tensor: ``table[key]`` (a module's ``_parameters``, ``_buffers`` or ``__dict__``)."""

    name: str
    table: dict[str, Any]
    key: str


def held_tensors(model: nn.Module) -> dict[int, Holder]:
    """Every tensor ``model`` holds (parameters, buffers, tensor attributes), by id, with where it is held."""
    out: dict[int, Holder] = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        names = [n for n, _ in m.named_parameters(recurse=False)] + [n for n, _ in m.named_buffers(recurse=False)]
        slots = [tensor_slot(m, n) for n in names]
        slots += [(vars(m), k) for k, v in vars(m).items() if isinstance(v, torch.Tensor)]
        for table, key in slots:
            t = table.get(key)
            if isinstance(t, torch.Tensor):
                out.setdefault(id(t), Holder(f"{prefix}.{key}" if prefix else key, table, key))
    return out


def stamp(t: torch.Tensor) -> tuple[int, int]:
    """What changes when a tensor's values may have: an in-place write bumps the version, ``.data =`` (another
    dtype, device or shape included) gives it other storage. Read for every tensor before every batch: kept lean."""
    return tensor_version(t), t.data_ptr()


@dataclass(eq=False, repr=False)
class Read:
    """A tensor read before the frontier, flowing into frozen ``layers[layer]`` and the ones after it."""

    tensor: torch.Tensor  # held here too: its stamp must stay comparable (the model's own are replaced, not freed)
    layer: int
    stamp: tuple[int, int]
    holder: Holder | None
    trains: bool  # it requires grad: it changes at every optimizer step

    def __repr__(self) -> str:
        return f"Read({self.name}, layers[{self.layer}])"

    @property
    def name(self) -> str:
        if self.holder is not None:
            return self.holder.name
        return f"a tensor of shape {tuple(self.tensor.shape)} the model does not hold"

    def changed(self) -> str | None:
        """How it changed since it was stamped, or None."""
        t = self.tensor
        if self.holder is not None and self.holder.table.get(self.holder.key) is not t:
            return "replaced"
        now = stamp(t)
        if now == self.stamp:
            return None
        return "modified in place" if now[1] == self.stamp[1] else "given other storage (.data =, .to())"


class StateWatch:
    """The reads of every depth proven so far."""

    def __init__(self) -> None:
        self.reads: dict[int, Read] = {}  # by the id of the tensor as read

    def add(self, reads: list[Read]) -> None:
        for read in reads:
            old = self.reads.get(id(read.tensor))
            if old is None or read.layer < old.layer:
                self.reads[id(read.tensor)] = read

    def changed(self) -> Iterator[tuple[Read, str]]:
        """The reads that changed, each once: restamped (or forgotten, when replaced) as they are reported."""
        suspects = [  # one pass over every read tensor before every batch: kept to attribute reads
            r
            for r in self.reads.values()
            if tensor_version(r.tensor) != r.stamp[0]
            or r.tensor.data_ptr() != r.stamp[1]
            or (r.holder is not None and r.holder.table.get(r.holder.key) is not r.tensor)
        ]
        for read in suspects:
            how = read.changed()
            if how == "replaced":
                del self.reads[id(read.tensor)]
            else:
                read.stamp = stamp(read.tensor)
            yield read, how

    def clear(self) -> None:
        self.reads.clear()
