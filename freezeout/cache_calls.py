"""A frozen module's call inside ``PrefixCache.batch()``: recorded (the first forward at a depth, run in full
under ``cache_proof.Recorder``) or served.

Serving, per example of the batch and its stored depth ``d`` (0: none): frozen ``layers[j]`` is computed for the
examples with ``d <= j`` (on their rows alone, when not all), served from the slab for ``d == j + 1``, and a
poisoned placeholder for ``d > j + 1`` (proven never read). The frontier's computed rows are stored as they come.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .cache_proof import CallRecord, Proof, Recorder, call_signature
from .cache_rows import Rows
from .cache_store import Slab, fill, leaf_specs, skeleton
from .hooks import map_tensors, tensors

__all__ = ["Forward", "record", "run", "serve"]


@dataclass(eq=False)
class Forward:
    """One forward of the model inside ``batch()``."""

    root: nn.Module
    rows: torch.Tensor  # the examples' indices
    fp: torch.Tensor
    key: int
    depth: int
    depths: torch.Tensor | None = None  # serving: each row's stored depth (0: none); None: recording
    proof: Proof | None = None  # what serving follows
    recorder: Recorder | None = None
    recording: Proof | None = None  # the proof this forward is making
    calls: int = 0
    inside: int = 0
    broken: str | None = None
    placeholders: bool = False  # some call returned a placeholder for some row
    store: torch.Tensor | None = None  # positions of the rows stored at ``depth`` once the forward ends
    slab: Slab | None = None  # where they go
    book: Rows | None = None
    staged: list[list[torch.Tensor]] = field(default_factory=list)

    @property
    def batch(self) -> int:
        return self.rows.shape[0]


def _take(value: Any, rows: torch.Tensor, batch: int) -> Any:
    return map_tensors(value, lambda t: t.index_select(0, rows.to(t.device)) if t.dim() and t.shape[0] == batch else t)


def run(fwd: Forward, stub: Any, args: Any, kwargs: Any) -> Any:
    fwd.inside += 1
    try:
        return stub.real(*args, **kwargs)
    finally:
        fwd.inside -= 1


def record(fwd: Forward, stub: Any, args: Any, kwargs: Any) -> Any:
    """A frozen call of the forward that makes the proof at its depth. With a proof one layer shallower
    (``fwd.proof``, the frontier just moved on) the layers it covers are served as it allows, so the deepening
    costs no prefix; the newly frozen layer runs in full. The tags do not depend on the values."""
    rec, b = fwd.recorder, fwd.batch
    rec.enter(stub.layer, stub.module, (args, kwargs))
    rec.inside += 1
    try:
        if fwd.proof is not None and stub.layer < fwd.proof.depth:
            out = serve(fwd, stub, args, kwargs)
        else:
            out = run(fwd, stub, args, kwargs)
    finally:
        rec.inside -= 1
    always = rec.leave(stub.layer, (args, kwargs), out, b)
    new = fwd.recording
    call = CallRecord(stub.module, stub.layer, call_signature((args, kwargs), b), leaf_specs(out), skeleton(out))
    call.always = always
    # where its leaves sit in its layer's slab, whichever depth that slab is (the layer is the frontier at one)
    call.offset = sum(len(c.specs) for c in new.calls if c.layer == stub.layer and not c.always)
    if stub.layer == fwd.depth - 1 and not always:
        fwd.staged.append([t.detach() for t in tensors(out)])
    new.calls.append(call)
    return out


def serve(fwd: Forward, stub: Any, args: Any, kwargs: Any) -> Any:
    c, b = fwd.calls, fwd.batch
    fwd.calls += 1
    calls = fwd.proof.calls
    rec = calls[c] if c < len(calls) else None
    if fwd.broken is None and (rec is None or rec.module is not stub.module):
        fwd.broken = f"call {c} is {type(stub.module).__name__}, not the one recorded"
    if fwd.broken is not None or rec.always:
        return run(fwd, stub, args, kwargs)
    # Another form of the same call (a mask left out when a batch has no padding): each served row is still its
    # example's own output, and the poisoned placeholders would show any read of them as NaN
    j, d = rec.layer, fwd.depths
    comp, serve = d <= j, d == j + 1
    fwd.placeholders |= bool((d > j + 1).any())
    if bool(comp.all()):
        out = run(fwd, stub, args, kwargs)
        _store(fwd, rec, list(tensors(out)), None)
        return out
    slab = fwd.book.slabs.get((j + 1, fwd.key))
    if bool(serve.all()):
        return fill(rec.template, [slab.read(rec.offset + i, fwd.rows) for i in range(len(rec.specs))])
    later = (d > j + 1).nonzero().reshape(-1)
    if later.numel() == b:  # every row has a deeper frontier: one poisoned batch, kept for every such call
        if fwd.recorder is not None:  # one object for two layers' outputs would carry both layers' tags
            return fill(rec.template, [s.poisoned(b) for s in rec.specs])
        return fill(rec.template, [fwd.book.poisoned(s, b) for s in rec.specs])
    leaves = [s.empty(b) for s in rec.specs]
    for leaf in leaves if later.numel() else ():
        leaf.index_fill_(0, later.to(leaf.device), float("nan") if leaf.is_floating_point() else 0)
    sub = comp.nonzero().reshape(-1)
    if sub.numel():
        part = list(tensors(run(fwd, stub, _take(args, sub, b), _take(kwargs, sub, b))))
        for leaf, t in zip(leaves, part, strict=True):
            leaf.index_copy_(0, sub.to(leaf.device), t)
        _store(fwd, rec, part, sub)
    here = serve.nonzero().reshape(-1)
    if here.numel():
        for i, leaf in enumerate(leaves):
            leaf.index_copy_(0, here.to(leaf.device), slab.read(rec.offset + i, fwd.rows[here]))
    return fill(rec.template, leaves)


def _store(fwd: Forward, rec: CallRecord, part: list[torch.Tensor], sub: torch.Tensor | None) -> None:
    """Write the frontier's rows among ``part`` (the rows ``sub`` of the batch; None: all) that are to be kept."""
    pos = fwd.store
    if rec.layer != fwd.depth - 1 or pos is None or not pos.numel():
        return
    if sub is None:
        where = pos
    else:  # positions of the stored rows within the computed ones (every stored row was computed)
        lookup = torch.full((fwd.batch,), -1, dtype=torch.int64)
        lookup[sub] = torch.arange(sub.numel())
        where = lookup[pos]
    slab, rows = fwd.slab, fwd.rows[pos]
    fwd.book.release(rows, slab, fwd.key)
    slab.write(rows, [t.index_select(0, where.to(t.device)) for t in part], first=rec.offset)
