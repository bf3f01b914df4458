"""The three kinds of forward inside ``PrefixCache.batch()`` and what a frozen module's call returns in each.

- ``Serving`` follows a proof: per example and its stored depth ``d`` (0: none), frozen ``layers[j]`` is computed
  for the examples with ``d <= j`` (on their rows alone, when not all), served from the row table for
  ``d == j + 1``, and a NaN placeholder for ``d > j + 1`` (the proof shows nobody reads it). The frontier's
  computed rows are stored as they come (copies).
- ``Recording`` makes a proof: every call runs under ``proof.Recorder``; with a proof one layer shallower the
  layers it covers are served as it allows, so the deepening costs no prefix.
- ``Checking`` runs part of a forward again only to compare (``confirm``): on some rows of the batch, stopping
  after the frontier.

A call that differs from the proof raises ``Diverged``: the cache runs the forward again without itself.
"""

from __future__ import annotations

from typing import Any

import torch

from ..tensors import map_tensors, tensors
from .proof import CallRecord, Proof, call_signature
from .recorder import Recorder
from .rows import StoredRows
from .store import RowTable, fill, leaf_specs, skeleton

__all__ = [
    "Checking",
    "Diverged",
    "Recording",
    "Serving",
    "Stop",
    "copy_leaves",
    "rng_state",
    "set_rng_state",
    "take_rows",
]


class Diverged(BaseException):
    """A forward's frozen calls differ from the proof it follows (a ``BaseException``: the model's own ``except
    Exception`` must not swallow it)."""


class Stop(BaseException):
    """A checking forward reached its last call (``why`` None) or found the calls differ (``why``)."""

    def __init__(self, why: str | None = None) -> None:
        super().__init__(why)
        self.why = why


def rng_state() -> list[torch.Tensor]:
    """The random state a forward may draw from (CPU, and each CUDA device once CUDA is in use)."""
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])]


def set_rng_state(states: list[torch.Tensor]) -> None:
    torch.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state_all(states[1:])


def take_rows(value: Any, positions: torch.Tensor, batch: int) -> Any:
    """``value`` with the rows ``positions`` of every per-example tensor (first dimension ``batch``)."""
    return map_tensors(
        value, lambda t: t.index_select(0, positions.to(t.device)) if t.dim() and t.shape[0] == batch else t
    )


def copy_leaves(value: Any) -> list[torch.Tensor]:
    """Copies of ``value``'s tensors, taken now: the model may write into them afterwards (an in-place ReLU)."""
    return [t.detach().clone() for t in tensors(value)]


def _run(forward: Any, standin: Any, args: Any, kwargs: Any) -> Any:
    forward.inside += 1
    try:
        return standin.below(*args, **kwargs)
    finally:
        forward.inside -= 1


def _expect(proof: Proof, index: int, standin: Any, what: str) -> CallRecord:
    rec = proof.calls[index] if index < len(proof.calls) else None
    if rec is None or rec.module is not standin.module:
        name = type(standin.module).__name__
        raise Diverged(f"frozen call {index} {what} is {name}, not the one the proof at this depth recorded")
    return rec


class Serving:
    """One forward served under ``proof``: ``depths`` per example, rows at ``store`` (positions in the batch) kept
    in ``table``. ``fresh_placeholders``: a placeholder per call (a recording tags outputs by identity)."""

    def __init__(self, proof: Proof, stored: StoredRows, indices: torch.Tensor, fp: torch.Tensor, key: int,
                 depths: torch.Tensor, fresh_placeholders: bool = False) -> None:  # fmt: skip
        self.proof, self.stored, self.indices, self.fp, self.key = proof, stored, indices, fp, key
        self.depths, self.fresh_placeholders = depths, fresh_placeholders
        self.store: torch.Tensor = depths.new_zeros(0)
        self.table: RowTable | None = None
        self.calls = 0
        self.inside = 0

    @property
    def batch(self) -> int:
        return self.indices.shape[0]

    def finish(self) -> None:
        """After the forward (or the calls it covers): every call the proof recorded was made."""
        if self.calls != len(self.proof.calls):
            raise Diverged(f"{self.calls} frozen calls where the proof at this depth recorded {len(self.proof.calls)}")

    @property
    def served(self) -> torch.Tensor:
        """Positions of the examples served from some depth."""
        return (self.depths > 0).nonzero().reshape(-1)

    def call(self, standin: Any, args: Any, kwargs: Any) -> Any:
        if self.inside:
            return standin.below(*args, **kwargs)
        rec = _expect(self.proof, self.calls, standin, "of this forward")
        self.calls += 1
        if rec.batch_free:
            return _run(self, standin, args, kwargs)
        return self._serve(rec, standin, args, kwargs)

    def _computed(self, rec: CallRecord, out: Any, rows: int) -> list[torch.Tensor]:
        leaves = list(tensors(out))
        if len(leaves) != len(rec.specs) or any(
            t.shape[0] != rows or t.shape[1:] != s.row or t.dtype != s.dtype for t, s in zip(leaves, rec.specs)
        ):
            raise Diverged(f"frozen {type(rec.module).__name__} returns other shapes or dtypes than when proven")
        return leaves

    def _serve(self, rec: CallRecord, standin: Any, args: Any, kwargs: Any) -> Any:
        # The call may take another form than when proven (a mask left out when a batch has no padding): each
        # served row is still its example's own output, and the placeholders would show any read of them as NaN
        j, d, b = rec.layer, self.depths, self.batch
        compute, here, later = d <= j, d == j + 1, d > j + 1
        if bool(compute.all()):
            out = _run(self, standin, args, kwargs)
            self._keep(rec, self._computed(rec, out, b), None)
            return out
        table = self.stored.tables.get((j + 1, self.key))
        if bool(here.all()):
            return fill(rec.template, [table.read(rec.offset + i, self.indices) for i in range(len(rec.specs))])
        if bool(later.all()):
            if self.fresh_placeholders:
                return fill(rec.template, [s.placeholder(b) for s in rec.specs])
            return fill(rec.template, [self.stored.placeholder(s, b) for s in rec.specs])
        leaves = [s.empty(b) for s in rec.specs]
        deeper = later.nonzero().reshape(-1)
        for leaf in leaves if deeper.numel() else ():
            leaf.index_fill_(0, deeper.to(leaf.device), float("nan") if leaf.is_floating_point() else 0)
        sub = compute.nonzero().reshape(-1)
        if sub.numel():
            out = _run(self, standin, take_rows(args, sub, b), take_rows(kwargs, sub, b))
            part = self._computed(rec, out, sub.numel())
            for leaf, t in zip(leaves, part, strict=True):
                leaf.index_copy_(0, sub.to(leaf.device), t)
            self._keep(rec, part, sub)
        pos = here.nonzero().reshape(-1)
        if pos.numel():
            for i, leaf in enumerate(leaves):
                leaf.index_copy_(0, pos.to(leaf.device), table.read(rec.offset + i, self.indices[pos]))
        return fill(rec.template, leaves)

    def _keep(self, rec: CallRecord, part: list[torch.Tensor], sub: torch.Tensor | None) -> None:
        """Write the frontier's rows among ``part`` (the rows ``sub`` of the batch; None: all) that are stored."""
        pos = self.store
        if rec.layer != self.proof.depth - 1 or not pos.numel():
            return
        if sub is None:
            where = pos
        else:  # positions of the stored rows within the computed ones (every stored row was computed)
            lookup = torch.full((self.batch,), -1, dtype=torch.int64)
            lookup[sub] = torch.arange(sub.numel())
            where = lookup[pos]
        examples = self.indices[pos]
        self.stored.release(examples, self.table, self.key)
        self.table.write(examples, [t.index_select(0, where.to(t.device)) for t in part], first=rec.offset)


class Recording:
    """The forward that proves ``depth`` under ``recorder``; ``base`` serves the layers a shallower proof covers.
    Keeps copies of the frontier's outputs (``frontier``) and what ``base`` returned (``replay``, by call)."""

    def __init__(self, depth: int, key: int, indices: torch.Tensor, fp: torch.Tensor, recorder: Recorder,
                 base: Serving | None) -> None:  # fmt: skip
        self.proof = Proof(depth)
        self.key, self.indices, self.fp, self.recorder, self.base = key, indices, fp, recorder, base
        self.frontier: list[list[torch.Tensor]] = []
        self.replay: dict[int, Any] = {}
        self.inside = 0

    @property
    def batch(self) -> int:
        return self.indices.shape[0]

    @property
    def start(self) -> int:
        """The first layer this forward ran on every row."""
        return self.base.proof.depth if self.base is not None else 0

    def call(self, standin: Any, args: Any, kwargs: Any) -> Any:
        if self.inside:
            return standin.below(*args, **kwargs)
        rec, layer, c = self.recorder, standin.layer, len(self.proof.calls)
        rec.enter(layer, standin.module, (args, kwargs))
        rec.inside += 1
        try:
            if layer < self.start:  # what these layers read is the base proof's: the ops here are the cache's own
                rec.quiet += 1
                try:
                    out = self.replay[c] = self.base.call(standin, args, kwargs)
                finally:
                    rec.quiet -= 1
            else:
                if self.base is not None:
                    self.base.finish()  # the layers it covered ran as proven: their placeholders went nowhere else
                out = _run(self, standin, args, kwargs)
        finally:
            rec.inside -= 1
        batch_free = rec.leave(layer, (args, kwargs), out)
        signature = call_signature((args, kwargs), self.batch)
        call = CallRecord(standin.module, layer, signature, leaf_specs(out), skeleton(out), batch_free=batch_free)
        # where its leaves sit in its layer's row table, whichever depth that is (the layer is the frontier at one)
        call.offset = sum(len(c.specs) for c in self.proof.calls if c.layer == layer and not c.batch_free)
        if layer == self.proof.depth - 1 and not batch_free:
            self.frontier.append(copy_leaves(out))
        self.proof.calls.append(call)
        return out


class Checking:
    """A forward on the rows ``order`` of a batch of ``batch`` (positions, repeats allowed), under ``proof``: calls
    in ``replay`` return those outputs' rows, the others run; the outputs of the calls in ``capture`` are kept
    (``outputs``); it stops after call ``last``."""

    def __init__(self, proof: Proof, order: torch.Tensor, batch: int, replay: dict[int, Any], capture: set[int],
                 last: int) -> None:  # fmt: skip
        self.proof, self.order, self.batch, self.replay = proof, order, batch, replay
        self.capture, self.last = capture, last
        self.outputs: dict[int, list[torch.Tensor]] = {}
        self.calls = 0
        self.inside = 0

    def call(self, standin: Any, args: Any, kwargs: Any) -> Any:
        if self.inside:
            return standin.below(*args, **kwargs)
        c = self.calls
        rec = self.proof.calls[c] if c < len(self.proof.calls) else None
        if rec is None or rec.module is not standin.module:
            raise Stop(f"its frozen call {c} is {type(standin.module).__name__}, not the one of the batch as it came")
        self.calls += 1
        if c in self.replay:
            out = take_rows(self.replay[c], self.order, self.batch)
        else:
            out = _run(self, standin, args, kwargs)
        if c in self.capture:
            self.outputs[c] = copy_leaves(out)
        if c == self.last:
            raise Stop()
        return out
