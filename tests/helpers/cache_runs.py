"""Training loops run with and without ``PrefixCache``, for the cache's tests: the same data, order and seeds."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import freezeout


@dataclass
class Run:
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: freezeout.FreezeOut
    cache: freezeout.PrefixCache | None
    losses: list[float] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)


def build(
    make: Callable[[], tuple[nn.Module, list]],
    steps: int,
    n: int,
    cache: dict | None,
    t0: float = 0.5,
    extra: Callable[[nn.Module], list[torch.Tensor]] | None = None,
) -> Run:
    """A model from ``make``, SGD over its layers' groups (and ``extra(model)``'s tensors), FreezeOut, the cache."""
    model, layers = make()
    groups = freezeout.param_groups(model, layers)
    if extra is not None:
        groups.append({"params": extra(model)})
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    sched = freezeout.FreezeOut(opt, layers, steps, t0=t0)
    return Run(model, opt, sched, None if cache is None else freezeout.PrefixCache(sched, n, **cache))


def steps(run: Run, data: Callable[[torch.Tensor], tuple[Any, torch.Tensor]], order: list[torch.Tensor], loss_fn):
    """One training step per batch of indices in ``order``; ``data(indices)`` gives (input, target)."""
    run.model.train()
    for idx in order:
        x, y = data(idx)
        with run.cache.batch(idx) if run.cache is not None else contextlib.nullcontext():
            loss = loss_fn(run.model, x, y)
        run.opt.zero_grad()
        loss.backward()
        run.opt.step()
        run.sched.step()
        run.losses.append(loss.item())
        if run.cache is not None:
            run.nbytes.append(run.cache.nbytes)
    return run


def order(n: int, batch: int, epochs: int, seed: int = 0, shuffle: bool = True) -> list[torch.Tensor]:
    """Batches of indices, ``epochs`` passes over ``n`` examples (reshuffled each pass, or in order)."""
    g = torch.Generator().manual_seed(seed)
    passes = [torch.randperm(n, generator=g) if shuffle else torch.arange(n) for _ in range(epochs)]
    return [p[i : i + batch] for p in passes for i in range(0, n, batch)]


def same_training(a: Run, b: Run, exact: bool = True, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Every loss and every weight the same: bit for bit, or (``exact=False``: some examples' frozen layers ran in a
    smaller batch, as when the cache computes only the rows it lacks) up to float rounding (``rtol``, ``atol``)."""
    same = torch.equal if exact else lambda x, y: torch.allclose(x, y, rtol=rtol, atol=atol)
    assert same(torch.tensor(a.losses, dtype=torch.float64), torch.tensor(b.losses, dtype=torch.float64))
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert same(p, q), name
    for (name, p), q in zip(a.model.named_buffers(), b.model.buffers()):
        assert same(p.double(), q.double()), name


@contextlib.contextmanager
def counting(cls: type, counts: list[int]):
    """Count the examples ``cls.forward`` runs on (its first tensor argument's rows)."""
    real = cls.forward

    def forward(self, *args, **kwargs):
        first = next(freezeout.tensors.tensors((args, kwargs)))
        counts.append(first.shape[0])
        return real(self, *args, **kwargs)

    cls.forward = forward
    try:
        yield counts
    finally:
        cls.forward = real


def twice(
    case: Callable[[], Any],
    epochs: int = 6,
    cache: dict | None = None,
    t0: float = 0.3,
    shuffle: bool = True,
    edit: Callable[[nn.Module], None] | None = None,
    at: int = 9,
) -> tuple[Run, Run]:
    """The training of ``case()`` (a ``tests.helpers.cache_cases.Case``, made afresh for each run) without and
    with the cache (``cache``: its keyword arguments), the same seeds and batches; ``edit(model)`` after step
    ``at`` in both."""
    runs = []
    for options in (None, cache or {}):
        c = case()
        batches = order(len(c.examples), c.batch, epochs, shuffle=shuffle)
        torch.manual_seed(5)
        run = build(c.make, len(batches), len(c.examples), options, t0, c.extra)
        steps(run, c.data, batches[:at], c.loss)
        if edit is not None:
            edit(run.model)
        runs.append(steps(run, c.data, batches[at:], c.loss))
    return runs[0], runs[1]
