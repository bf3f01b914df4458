"""``PrefixCache``: the frozen-prefix cache (docs/CACHE.md).

Inside ``batch(indices)`` every frozen layer's modules get a stand-in ``forward`` and the model (learnt from the
first forward: the outermost module called) an entry ``forward``, both removed at the block's end. The entry
fingerprints each example's input and picks the forward's kind (``passes``): the first at each depth and input
structure is a ``Recording`` (proven by ``recorder.Recorder``, its rows then shown to be each example's alone by
``confirm.rows_independent``); the next ones are ``Serving``, spot-checked at the rate ``verify`` by
``confirm.spot_check``. Before each batch, the tensors the proofs saw read before the frontier are compared with
their stamps (``proof.Proofs.refresh``): rows past a changed one are dropped. What a proof cannot show means the plain
path at that depth, said once in the log; a forward that turns out other than proven means a ``CacheWarning``
and the plain path from then on, the forward itself run again without the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..checks import Once, check_int
from ..compat import is_tracing, outermost_module
from ..controller import FreezeOut
from ..freezing import OwnedHook
from ..freezing.forwards import OwnedForward, pop_forward, push_forward
from ..tensors import tensors
from .confirm import check_runner, rows_independent, spot_check
from .fingerprint import fingerprints
from .passes import Checking, Diverged, Recording, Serving, rng_state, set_rng_state
from .proof import Proof, Proofs, hooked_by_others
from .recorder import Recorder
from .rows import StoredRows
from .state import held_tensors

__all__ = ["CacheWarning", "PrefixCache"]

log = logging.getLogger("freezeout.cache")

_MIN_LOOKUPS = 32  # rows seen again before the share of changed inputs means anything
_RERUN = (Diverged, Exception)  # what a forward under the cache may raise that the same forward without it may not


class CacheWarning(UserWarning):
    """The cache stops storing (most inputs change between epochs) or turns off (a forward differed from what it
    proved, a spot check failed): training goes on exactly as without it."""


class _StandIn(OwnedForward):
    """A frozen module's ``forward`` inside ``batch()``: the forward under way decides what the call returns."""

    def __init__(self, cache: PrefixCache, module: nn.Module, layer: int) -> None:
        super().__init__(module)
        self.cache, self.layer = cache, layer

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.cache._frozen_call(self, args, kwargs)


class _ModelEntry(OwnedForward):
    """The model's ``forward`` inside ``batch()``: each forward of the model goes through the cache."""

    def __init__(self, cache: PrefixCache, model: nn.Module) -> None:
        super().__init__(model)
        self.cache = cache

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.cache._forward(self, args, kwargs)


class PrefixCache:
    """The frozen prefix of ``sched``'s layers, cached per example (see the module doc and docs/CACHE.md).

    ``num_examples``: the size of the data set, whose positions ``batch(indices)`` takes. ``max_bytes``: a cap on
    what it holds (``nbytes``); past it nothing more is stored and training stays exact. ``path``: an existing
    folder to memory-map the rows from (files unlinked at once) instead of holding them in memory. ``verify``: the
    share of served rows recomputed and compared (0 to 1), in whole forwards."""

    def __init__(self, sched: FreezeOut, num_examples: int, *, max_bytes: int | None = None,
                 path: str | os.PathLike | None = None, verify: float = 0.02) -> None:  # fmt: skip
        if not isinstance(sched, FreezeOut):
            raise ValueError(f"sched must be a freezeout.FreezeOut, got {type(sched).__name__}")
        self.sched = sched
        self.num_examples = check_int("num_examples", num_examples, 1)
        self.max_bytes = None if max_bytes is None else check_int("max_bytes", max_bytes, 0)
        if path is not None and not os.path.isdir(path):
            raise ValueError(f"path must be an existing folder to memory-map the cache in, got {str(path)!r}")
        self.path = None if path is None else os.fspath(path)
        if isinstance(verify, bool) or not isinstance(verify, (int, float)) or not 0 <= verify <= 1:
            raise ValueError(f"verify must be a number in [0, 1] (the share of served rows checked), got {verify!r}")
        self.verify = float(verify)
        self._stored = StoredRows(self.num_examples, self.max_bytes, self.path)
        self._proofs = Proofs()
        self._model: nn.Module | None = None
        self._indices: torch.Tensor | None = None  # the examples of the batch() under way
        self._pass: Recording | Serving | Checking | None = None  # the forward under way
        self._forwards: list[OwnedForward] = []
        self._logged = Once()
        self._off: str | None = None  # why the cache turned itself off
        self._credit = 0.0  # served rows owed a spot check
        self.storing = True
        self.stats = {"hits": 0, "misses": 0, "changed": 0, "stored": 0, "looked_up": 0, "served": 0, "verified": 0}

    @property
    def nbytes(self) -> int:
        """Bytes of activations held."""
        return self._stored.nbytes

    @property
    def hit_rate(self) -> float:
        seen = self.stats["hits"] + self.stats["misses"]
        return self.stats["hits"] / seen if seen else 0.0

    def clear(self) -> None:
        """Forget every stored row (the proofs of the model's structure stay)."""
        self._stored.clear()

    def _say(self, key: str, message: str) -> None:
        if self._logged.first(key):
            log.warning("PrefixCache: %s", message)

    def _turn_off(self, why: str) -> None:
        if self._off is None:
            self._off = why
            warnings.warn(f"PrefixCache: {why}; the cache is off from here on (training goes on exactly as without "
                          "it)", CacheWarning, stacklevel=3)  # fmt: skip
        self._stored.clear()
        self._proofs.clear()

    # -- the block -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self, indices: Sequence[int] | torch.Tensor) -> Iterator[PrefixCache]:
        """Forwards inside the block take their examples to be ``indices`` (positions in the data set), in order."""
        rows = torch.as_tensor(indices).reshape(-1).cpu()
        if rows.is_floating_point() or rows.dtype == torch.bool or rows.numel() == 0:
            raise ValueError(f"indices must be a non-empty list of integers in [0, {self.num_examples})")
        rows = rows.to(torch.int64)
        if rows.min() < 0 or rows.max() >= self.num_examples:
            raise ValueError(f"indices must be in [0, {self.num_examples}), got {int(rows.min())}..{int(rows.max())}")
        if rows.unique().numel() != rows.numel():
            raise ValueError("indices must not repeat within one batch")
        if self._indices is not None:
            raise RuntimeError("PrefixCache.batch() inside another batch() of the same cache")
        self._indices = rows
        try:
            self._install()
            yield self
        finally:
            for forward in reversed(self._forwards):
                pop_forward(forward)
            self._forwards, self._indices, self._pass = [], None, None

    def _install(self) -> None:
        k = 0 if self.sched.closed else self.sched.num_frozen
        self._proofs.refresh(self._stored)
        self._stored.drop(lambda d, key: d > k)  # past the frozen layers (a FreezeOut closed)
        if k == 0 or self._off is not None:
            return
        modules = [(m, layer.index) for layer in self.sched._layers[:k] for m in layer.modules]
        patched = [m for m, _ in modules if not isinstance(m.__dict__.get("forward"), (OwnedHook, type(None)))]
        if patched:
            return self._say("patched", f"{type(patched[0]).__name__} has its own forward (compiled?): plain path")
        self._forwards = [push_forward(_StandIn(self, m, i)) for m, i in modules]
        if self._model is not None:
            self._forwards.append(push_forward(_ModelEntry(self, self._model)))

    # -- a forward of the model --------------------------------------------------------------------------------
    def _forward(self, entry: _ModelEntry, args: Any, kwargs: Any) -> Any:
        plan = self._plan(args, kwargs) if self._pass is None else None
        if plan is None:
            return entry.below(*args, **kwargs)
        rng = rng_state()
        self._pass = plan
        try:
            if isinstance(plan, Recording):
                return self._record(entry, plan, args, kwargs)
            return self._serve(entry, plan, args, kwargs)
        except (torch.OutOfMemoryError, Warning):  # a retry loop's to handle; a warning the user made an error
            raise
        except _RERUN as e:  # placeholders may have been read: run it again, as without the cache
            self._pass = None
            set_rng_state(rng)
            what = str(e) if isinstance(e, Diverged) else f"the model raised {type(e).__name__} ({e})"
            self._turn_off(f"a forward differed from the one the cache proved: {what}")
            return entry.below(*args, **kwargs)
        finally:
            self._pass = None

    def _plan(self, args: Any, kwargs: Any) -> Recording | Serving | None:
        model, indices = self._model, self._indices
        if self._off is not None or not model.training or not torch.is_grad_enabled():
            return None
        if torch.compiler.is_compiling() or is_tracing():
            return None
        b, first = indices.shape[0], next(tensors((args, kwargs)), None)
        if first is None or first.dim() == 0 or first.shape[0] != b:
            return self._say("size", f"the model's input is not a batch of len(indices) = {b} examples")
        fp, key = fingerprints((args, kwargs), b)
        k = self.sched.num_frozen
        proof = self._proofs.get(k, key)
        if isinstance(proof, str):
            return None
        if proof is None and b < 2:
            return self._say("one", "a batch of one cannot show that rows are each example's own: plain path")
        depths, seen, changed = self._stored.lookup(indices, fp)
        self._count(seen, changed)
        self.stats["hits"] += int((depths == k).sum())
        self.stats["misses"] += int((depths < k).sum())
        if proof is None:
            return self._recording(args, kwargs, indices, fp, key, depths)
        serving = Serving(proof, self._stored, indices, fp, key, depths)
        if self.storing:
            serving.table = self._stored.table(k, key, proof.frontier)
            serving.store = self._stored.choose(indices, depths, serving.table)
        return serving

    def _recording(self, args: Any, kwargs: Any, indices: torch.Tensor, fp: torch.Tensor, key: int,
                   depths: torch.Tensor) -> Recording:  # fmt: skip
        k, model = self.sched.num_frozen, self._model
        frozen = [m for layer in self.sched._layers[:k] for m in layer.all_modules()]
        device = next(tensors((args, kwargs))).device
        recorder = Recorder(k, model, frozen, held_tensors(model), (args, kwargs), indices.shape[0], device)
        shallower, base = self._proofs.get(k - 1, key), None
        if isinstance(shallower, Proof):  # serve what it covers: rows stored at most one layer shallower
            served = torch.where(depths < k, depths, torch.zeros_like(depths))
            base = Serving(shallower, self._stored, indices, fp, key, served, fresh_placeholders=True)
        return Recording(k, key, indices, fp, recorder, base)

    def _count(self, seen: int, changed: int) -> None:
        s = self.stats
        s["looked_up"] += seen
        s["changed"] += changed
        if self.storing and s["looked_up"] >= _MIN_LOOKUPS and 2 * s["changed"] > s["looked_up"]:
            self.storing = False
            rate = 1 - s["changed"] / s["looked_up"]
            warnings.warn(
                f"PrefixCache: {100 * (1 - rate):.0f}% of the inputs seen again had changed since they were stored "
                f"(hit rate {100 * rate:.0f}%: augmentation, random masking, dynamic padding?): it stores nothing "
                "more (changed inputs are always recomputed)",
                CacheWarning,
                stacklevel=2,
            )

    def _record(self, entry: _ModelEntry, rec: Recording, args: Any, kwargs: Any) -> Any:
        with rec.recorder:
            out = entry.below(*args, **kwargs)
        if rec.base is not None:
            rec.base.finish()
        k, key = rec.proof.depth, rec.key
        layers = self.sched._layers[:k]
        why = rec.recorder.finish(out, [m for layer in layers for m in layer.modules]) or hooked_by_others(
            m for layer in layers for m in layer.all_modules()
        )
        if why is None:
            why = rows_independent(rec, check_runner(self._switch, entry, args, kwargs))
        if why is not None:
            self._proofs.refuse(k, key, why)
            self._say(why, f"plain path with {k} layers frozen: {why}")
            return out
        rec.proof.reads = [*(rec.base.proof.reads if rec.base else ()), *rec.recorder.read_list()]
        self._proofs.add(rec.proof, key)
        if self.storing:
            table = self._stored.table(k, key, rec.proof.frontier)
            pos = self._stored.choose(rec.indices, torch.zeros_like(rec.indices), table)
            leaves = [leaf.index_select(0, pos.to(leaf.device)) for leaves in rec.frontier for leaf in leaves]
            self._keep(rec.indices[pos], table, key, rec.fp[pos], leaves)
        return out

    def _keep(self, examples: torch.Tensor, table: Any, key: int, fp: torch.Tensor, leaves: list | None) -> None:
        """``examples``' rows of ``table`` hold their frontier (written now from ``leaves``, or already)."""
        if not examples.numel():
            return
        if leaves is not None:
            self._stored.release(examples, table, key)
            table.write(examples, leaves)
        self._stored.commit(examples, table, key, fp)
        self.stats["stored"] += examples.numel()

    def _serve(self, entry: _ModelEntry, srv: Serving, args: Any, kwargs: Any) -> Any:
        served = int(srv.served.numel())
        self.stats["served"] += served
        self._credit += self.verify * served
        if served and self._credit >= served:
            self._credit -= served
            self.stats["verified"] += served
            why = spot_check(srv, check_runner(self._switch, entry, args, kwargs))
            if why is not None:
                self._pass = None
                self._turn_off(f"a spot check failed: {why}")
                return entry.below(*args, **kwargs)
        out = entry.below(*args, **kwargs)
        srv.finish()
        self._keep(srv.indices[srv.store], srv.table, srv.key, srv.fp[srv.store], None)
        return out

    def _switch(self, forward: Checking | None) -> Recording | Serving | Checking | None:
        """Make ``forward`` the forward under way; returns the one it replaces."""
        previous, self._pass = self._pass, forward
        return previous

    # -- a frozen module's call --------------------------------------------------------------------------------
    def _frozen_call(self, standin: _StandIn, args: Any, kwargs: Any) -> Any:
        forward = self._pass
        if forward is None:
            if self._model is None and self._indices is not None:
                self._model = outermost_module()  # the model: its entry is installed from the next batch() on
            return standin.below(*args, **kwargs)
        return forward.call(standin, args, kwargs)
