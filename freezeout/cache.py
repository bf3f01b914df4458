"""Frozen layers at zero cost where inputs repeat: ``PrefixCache``, the frozen-prefix cache (docs/CACHE.md).

A frozen layer runs in inference mode with fixed weights: a fixed function of its input. When the same examples
come back (fine-tuning without augmentation), the cache serves the frontier, the output of the last frozen layer,
instead of running the frozen layers again::

    cache = PrefixCache(sched, len(dataset))
    for indices, x, y in loader:
        with cache.batch(indices):
            loss = loss_fn(model(x), y)

How. Inside ``batch()`` every frozen layer's modules get an instance ``forward`` (removed at the block's end), and
the model (the outermost module called, learnt from the first forward) a hook that fingerprints each example's
input (``cache_store.fingerprints``). The first forward at each depth is watched end to end
(``cache_proof``: the frontier is the only frozen output the rest reads, nothing random or trainable flows into the
frozen layers); anything it cannot prove means the plain path at that depth, said once. Once proven, per example:
its frontier served if its fingerprint matches what was stored (never stale), else its frozen layers computed
from the deepest frontier it has, on its rows alone, and stored. So when the frontier moves on, the stored
output feeds the newly frozen layer and the cache deepens without running the prefix again. Outside ``batch()``,
in eval mode or without grad, nothing changes.
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

from .cache_calls import Forward, record, serve
from .cache_proof import Proof, Recorder, hooked_by_others
from .cache_rows import Rows
from .cache_store import Slab, fingerprints
from .checks import check_int
from .compat import is_tracing, outermost_module, tensor_version
from .controller import FreezeOut
from .freezing import OwnedHook
from .freezing.forwards import OwnedForward, pop_forward, push_forward
from .hooks import tensors

__all__ = ["CacheWarning", "PrefixCache"]

log = logging.getLogger(__name__)

_MIN_LOOKUPS = 32  # rows seen again before the share of changed inputs means anything


class CacheWarning(UserWarning):
    """Most inputs change between epochs (augmentation, random masking): the cache stops storing."""


class _Stub(OwnedForward):
    """A frozen module's ``forward`` inside ``batch()``: the cache decides what the call returns."""

    def __init__(self, cache: PrefixCache, module: nn.Module, layer: int) -> None:
        super().__init__(module)
        self.cache, self.layer = cache, layer

    def real(self, *args: Any, **kwargs: Any) -> Any:
        return self.below(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.cache._call(self, args, kwargs)


class PrefixCache:
    """The frozen prefix of ``sched``'s layers, cached per example (see the module doc and docs/CACHE.md).

    ``num_examples``: the size of the data set, whose positions ``batch(indices)`` takes. ``max_bytes``: a cap on
    what it holds (``nbytes``); past it nothing more is stored and training stays exact. ``path``: an existing
    folder to memory-map the rows from (files unlinked at once) instead of holding them in memory."""

    def __init__(
        self,
        sched: FreezeOut,
        num_examples: int,
        *,
        max_bytes: int | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(sched, FreezeOut):
            raise ValueError(f"sched must be a freezeout.FreezeOut, got {type(sched).__name__}")
        self.sched = sched
        self.num_examples = check_int("num_examples", num_examples, 1)
        self.max_bytes = None if max_bytes is None else check_int("max_bytes", max_bytes, 0)
        if path is not None and not os.path.isdir(path):
            raise ValueError(f"path must be an existing folder to memory-map the cache in, got {str(path)!r}")
        self.path = None if path is None else os.fspath(path)
        self._book = Rows(self.num_examples, self.max_bytes, self.path)
        self._proofs: dict[tuple[int, int], Proof | str] = {}
        self._stamps: dict[int, tuple] = {}
        self._root: nn.Module | None = None
        self._fwd: Forward | None = None
        self._rows: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._stubs: list[_Stub] = []
        self._said: set[str] = set()
        self.storing = True
        self.stats = {"hits": 0, "misses": 0, "changed": 0, "stored": 0, "looked_up": 0}

    @property
    def nbytes(self) -> int:
        """Bytes of activations held."""
        return self._book.nbytes

    @property
    def hit_rate(self) -> float:
        seen = self.stats["hits"] + self.stats["misses"]
        return self.stats["hits"] / seen if seen else 0.0

    def clear(self) -> None:
        """Forget every stored row (the proofs of the model's structure stay)."""
        self._book.clear()

    def _say(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("PrefixCache: %s", message)

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
        if self._rows is not None:
            raise RuntimeError("PrefixCache.batch() inside another batch() of the same cache")
        self._rows = rows
        try:
            self._install()
            yield self
        finally:
            self._uninstall()
            self._rows, self._fwd = None, None

    def _install(self) -> None:
        sched = self.sched
        k = 0 if sched.closed else sched.num_frozen
        self._invalidate(k)
        if k == 0:
            return
        modules = [(m, layer.index) for layer in sched._layers[:k] for m in layer.modules]
        patched = [m for m, _ in modules if not isinstance(m.__dict__.get("forward"), (OwnedHook, type(None)))]
        if patched:
            return self._say("patched", f"{type(patched[0]).__name__} has its own forward (compiled?): plain path")
        for m, i in modules:
            self._stubs.append(push_forward(_Stub(self, m, i)))
        if self._root is not None:
            self._handles.append(self._root.register_forward_pre_hook(self._enter, with_kwargs=True))
            self._handles.append(self._root.register_forward_hook(self._leave, always_call=True))

    def _uninstall(self) -> None:
        for stub in self._stubs:
            pop_forward(stub)
        for h in self._handles:
            h.remove()
        self._stubs, self._handles = [], []

    def _invalidate(self, k: int) -> None:
        """Rows stored past a layer whose weights changed (or that is no longer frozen) are forgotten."""
        for i, layer in enumerate(self.sched._layers[:k]):
            ts = [*layer.parameters(), *(b for m in layer.modules for b in m.buffers())]
            stamp = tuple((id(t), t.data_ptr(), tensor_version(t)) for t in ts)
            if self._stamps.setdefault(i, stamp) != stamp:
                self._stamps[i] = stamp
                self._book.drop(lambda d, key, i=i: d > i)
        self._book.drop(lambda d, key: d > k)

    # -- the model's entry and exit ----------------------------------------------------------------------------
    def _enter(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self._fwd is not None or self._rows is None or not self._stubs:
            return
        if not module.training or not torch.is_grad_enabled() or torch.compiler.is_compiling() or is_tracing():
            return
        rows, value = self._rows, (args, kwargs)
        first = next(tensors(value), None)
        if first is None or first.dim() == 0 or first.shape[0] != rows.shape[0]:
            return self._say("size", f"the model's input is not a batch of len(indices) = {rows.shape[0]} examples")
        fp, key = fingerprints(value, rows.shape[0])
        k = self.sched.num_frozen
        proof = self._proofs.get((k, key))
        fwd = Forward(module, rows, fp, key, k)
        if isinstance(proof, str):
            return
        depths, seen, changed = self._book.lookup(rows, fp)
        self._count(seen, changed)
        if proof is None:
            frozen = [m for layer in self.sched._layers[:k] for m in layer.all_modules()]
            fwd.recorder, fwd.recording = Recorder(k, module, frozen, first.device), Proof(k)
            shallower = self._proofs.get((k - 1, key))
            if isinstance(shallower, Proof):  # serve what it covers: rows stored at most one layer shallower
                fwd.proof, fwd.book = shallower, self._book
                fwd.depths = torch.where(depths < k, depths, torch.zeros_like(depths))
            fwd.recorder.__enter__()
        else:
            fwd.proof, fwd.depths, fwd.book = proof, depths, self._book
            fwd.store = self._to_store(depths, fwd)
            fwd.slab = self._slab(fwd) if fwd.store.numel() else None
        self.stats["hits"] += int((depths == k).sum())
        self.stats["misses"] += int((depths < k).sum())
        self._fwd = fwd

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

    def _to_store(self, depths: torch.Tensor, fwd: Forward) -> torch.Tensor:
        if not self.storing:
            return depths.new_zeros(0)
        return self._book.choose(fwd.rows, depths, self._slab(fwd))

    def _slab(self, fwd: Forward) -> Slab:
        return self._book.slab(fwd.depth, fwd.key, self._proofs[(fwd.depth, fwd.key)].frontier)

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        fwd = self._fwd
        if fwd is None or fwd.root is not module:
            return
        self._fwd = None
        if fwd.recorder is not None:
            fwd.recorder.__exit__(None, None, None)
        if fwd.broken is not None:
            self._proofs.pop((fwd.depth, fwd.key), None)
            if fwd.placeholders:  # their outputs were never computed: this forward's result cannot be trusted
                raise RuntimeError(
                    f"PrefixCache: the model's frozen calls changed from one forward to the next ({fwd.broken}), "
                    "so this forward's result cannot be trusted: run the step again (the cache checks the model "
                    "again first), or train without the cache"
                )
            return self._say("broken", f"the frozen calls changed between forwards ({fwd.broken}): checking again")
        if fwd.recorder is not None:
            frozen = [m for layer in self.sched._layers[: fwd.depth] for m in layer.modules]
            why = fwd.recorder.finish(output, frozen) or hooked_by_others(
                m for layer in self.sched._layers[: fwd.depth] for m in layer.all_modules()
            )
            if why is not None:
                self._proofs[(fwd.depth, fwd.key)] = why
                return self._say(why, f"plain path with {fwd.depth} layers frozen: {why}")
            self._proofs[(fwd.depth, fwd.key)] = fwd.recording
            fwd.store = self._to_store(torch.zeros(fwd.batch, dtype=torch.int64), fwd)
            self._commit(fwd, [leaf for leaves in fwd.staged for leaf in leaves])
        else:
            self._commit(fwd, None)

    def _commit(self, fwd: Forward, leaves: list[torch.Tensor] | None) -> None:
        pos = fwd.store
        if pos is None or not pos.numel():
            return
        slab, rows = self._slab(fwd), fwd.rows[pos]
        if leaves is not None:
            self._book.release(rows, slab, fwd.key)
            with torch.no_grad():
                slab.write(rows, [leaf.index_select(0, pos.to(leaf.device)) for leaf in leaves])
        self._book.commit(rows, slab, fwd.key, fwd.fp[pos])
        self.stats["stored"] += rows.numel()

    # -- a frozen module's call --------------------------------------------------------------------------------
    def _call(self, stub: _Stub, args: Any, kwargs: Any) -> Any:
        fwd = self._fwd
        if fwd is None and self._root is None and self._rows is not None:
            self._root = outermost_module()  # the model: hooked from the next batch() on
        if fwd is None or fwd.inside:
            return stub.real(*args, **kwargs)
        if fwd.recorder is not None:
            return record(fwd, stub, args, kwargs)
        return serve(fwd, stub, args, kwargs)
