"""``add_freezeout(trainer, cache=True)``: the frozen-prefix cache (``freezeout.PrefixCache``) inside a Hugging Face
``Trainer``, with the user's dataset and collator untouched.

The cache needs each batch's example indices. Trainer's training dataloader draws them from its sampler (a
``RandomSampler``, ``LengthGroupedSampler``, accelerate's seedable one) through a ``BatchSampler``; ``get_train_
dataloader`` (documented for overriding) is wrapped on the instance to put a tap on that sampler: every index it
yields also goes into a queue, emptied when a new pass (epoch) starts. ``training_step`` (also documented) takes
the batch's indices from the front of the queue (the dataloader's batches come in the order their indices were
drawn, prefetching or not) and runs the step inside ``cache.batch(indices)``. Where the tap cannot be put (an
iterable dataset, a batch sampler of the user's) or the queue does not hold the batch, the step runs as it would
without the cache. Indices that never reach a step (batches skipped on a resume) only make the fingerprints
disagree: those examples are recomputed, never served stale.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

from ..cache import PrefixCache
from ..controller import FreezeOut
from ..tensors import tensors

__all__ = ["CacheOptions", "TrainerCache", "check_cache"]

log = logging.getLogger(__name__)

CacheOptions = dict[str, Any]


def check_cache(cache: Any) -> CacheOptions | None:
    """``cache`` as ``add_freezeout`` takes it: False/None (off), True (defaults) or a dict of ``PrefixCache``'s
    keyword arguments (``max_bytes``, ``path``, ``verify``)."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return {}
    if isinstance(cache, dict) and set(cache) <= {"max_bytes", "path", "verify"}:
        return dict(cache)
    raise ValueError(f"cache must be True, False or a dict of max_bytes, path and/or verify, got {cache!r}")


class _Tap:
    """A sampler that is the trainer's own, except that every index it yields also goes into ``queue``."""

    def __init__(self, sampler: Any, queue: deque) -> None:
        self.sampler, self.queue = sampler, queue

    def __iter__(self) -> Iterator[Any]:
        self.queue.clear()  # a new pass: what the last one left (a dropped last batch) belongs to no step
        for i in self.sampler:
            self.queue.append(int(i))
            yield i

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:  # set_epoch, generator, ...: the sampler's own
        return getattr(self.sampler, name)


def _batch_sampler(loader: Any) -> Any:
    bs = getattr(loader, "batch_sampler", None)
    while bs is not None and not hasattr(bs, "sampler") and hasattr(bs, "batch_sampler"):
        bs = bs.batch_sampler  # accelerate's BatchSamplerShard around the BatchSampler
    return bs if bs is not None and hasattr(bs, "sampler") else None


class TrainerCache:
    """What ``cache=True`` installs on a trainer; ``cache`` is the ``PrefixCache`` of the current ``train()``."""

    def __init__(self, trainer: Any, options: CacheOptions) -> None:
        self.trainer, self.options = trainer, options
        self.cache: PrefixCache | None = None
        self.last_stats: dict[str, int] = {}  # the last train()'s cache statistics, after it ended
        self.queue: deque[int] = deque()
        self._dataloader, self._step = trainer.get_train_dataloader, trainer.training_step
        trainer.get_train_dataloader = self.get_train_dataloader
        trainer.training_step = self.training_step

    def start(self, controller: FreezeOut) -> None:
        """A new ``train()``: a fresh, empty cache on its FreezeOut."""
        dataset = self.trainer.train_dataset
        try:
            n = len(dataset)
        except TypeError:
            self.cache = None
            log.warning("FreezeOut cache: the training dataset has no length (iterable): trained without the cache")
            return
        self.cache = PrefixCache(controller, n, **self.options)

    def get_train_dataloader(self) -> Any:
        loader = self._dataloader()
        bs = _batch_sampler(loader)
        if bs is None:
            log.warning("FreezeOut cache: no sampler to read example indices from: trained without the cache")
        elif not isinstance(bs.sampler, _Tap):
            bs.sampler = _Tap(bs.sampler, self.queue)
        return loader

    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        first = next(tensors(inputs), None)
        b = first.shape[0] if first is not None and first.dim() else 0
        if self.cache is None or b == 0 or len(self.queue) < b:
            return self._step(model, inputs, *args, **kwargs)
        indices = [self.queue.popleft() for _ in range(b)]
        if max(indices) >= self.cache.num_examples or len(set(indices)) != b:
            return self._step(model, inputs, *args, **kwargs)
        with self.cache.batch(indices):
            return self._step(model, inputs, *args, **kwargs)

    def close(self) -> None:
        if self.cache is not None:
            self.last_stats = dict(self.cache.stats)
        self.cache = None
        self.queue.clear()
