"""Timed training runs for ``bench``: one run on its own, or several in lockstep, step by step.

A run is the loop a user writes (``param_groups`` + SGD + ``FreezeOut``, ``sched.step()`` after each batch) on
a fresh copy of the template model. Its seconds are the wall-clock of its own steps, ``sched.step()`` included.

Lockstep: step ``s`` of every run, then step ``s + 1`` of every run, in an order that rotates each step. Each run
still does exactly its own loop on its own model; only the time between its steps belongs to the others. On a
machine whose speed drifts (a shared CPU, over periods several runs long: docs/BENCHMARKS.md, "Notes behind the
defaults"), runs that alternate as wholes see different phases of the drift, while in lockstep every run's step ``s``
is measured within a few seconds of every other's, so the drift cancels out of their ratio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..analysis.timing import sync
from ..controller import FreezeOut
from .workload import copy_model, make_optimizer, train_step

__all__ = ["BenchRun", "lockstep", "lockstep_runs", "sched_step_seconds", "timed_run"]

Template = tuple[nn.Module, list[nn.Module]]
Data = Sequence[tuple[Any, Any]]
# one row of the bench: name, t0, schedule, scale_lr, fuse
BenchRun = tuple[str, float, str, bool, bool]


def _start(template: Template, steps: int, lr: float, spec: BenchRun) -> tuple[nn.Module, Any, FreezeOut]:
    _, t0, schedule, scale_lr, fuse = spec
    model, layers = copy_model(*template)
    optimizer = make_optimizer(model, layers, lr)
    sched = FreezeOut(optimizer, layers, steps, t0=t0, schedule=schedule, scale_lr=scale_lr, fuse=fuse)
    model.train()
    return model, optimizer, sched


def timed_run(
    template: Template, data: Data, loss_fn: Callable, steps: int, lr: float, spec: BenchRun, device: Any = "cpu"
) -> dict[str, float]:
    """One run of ``steps`` steps on its own; its seconds, the part spent in ``sched.step()``, layers frozen."""
    model, optimizer, sched = _start(template, steps, lr, spec)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sched_seconds = 0.0
    sync(device)
    start = time.perf_counter()
    for s in range(steps):
        x, y = data[s % len(data)]
        train_step(model, optimizer, x, y, loss_fn)
        mark = time.perf_counter()
        sched.step()
        sched_seconds += time.perf_counter() - mark
    sync(device)
    out = {"seconds": time.perf_counter() - start, "sched_seconds": sched_seconds, "num_frozen": sched.num_frozen}
    if cuda:
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def lockstep(
    steppers: Sequence[Callable[[], Any]],
    steps: int,
    device: Any = "cpu",
    *,
    before: Callable[[int], None] | None = None,
    after: Callable[[int, float], None] | None = None,
) -> list[list[float]]:
    """Step ``s`` of every stepper, then step ``s + 1`` of every one, in an order that rotates by one each step
    (see the module doc); each call ``steppers[i]()`` timed between device syncs, so that on a GPU the queue
    holds one run's work at a time. Returns each stepper's seconds, step by step.

    ``before(i)`` runs before stepper ``i``'s step and ``after(i, seconds)`` after it, both outside the timing.
    """
    seconds: list[list[float]] = [[] for _ in steppers]
    order = list(range(len(steppers)))
    for s in range(steps):
        shift = s % len(order) if order else 0
        for i in order[shift:] + order[:shift]:
            if before is not None:
                before(i)
            sync(device)
            start = time.perf_counter()
            steppers[i]()
            sync(device)
            took = time.perf_counter() - start
            seconds[i].append(took)
            if after is not None:
                after(i, took)
    return seconds


def lockstep_runs(
    template: Template,
    data: Data,
    loss_fn: Callable,
    steps: int,
    lr: float,
    specs: Sequence[BenchRun],
    device: Any = "cpu",
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every run of ``specs`` in lockstep (``lockstep``): ``timed_run``'s result per run name, plus
    ``step_seconds`` (each step's seconds, ``sched.step()`` included) and ``step_frozen`` (layers frozen during
    each step), so that a run's own step at ``k`` can be set beside the baseline's step of the same seconds.
    ``progress(1)`` after each step of each run.
    """
    runs = [(spec[0], *_start(template, steps, lr, spec)) for spec in specs]
    totals: dict[str, dict[str, Any]] = {
        name: {"seconds": 0.0, "sched_seconds": 0.0, "step_seconds": [], "step_frozen": []} for name, *_ in runs
    }
    cuda = torch.device(device).type == "cuda"
    done = [0] * len(runs)  # steps each run has taken: which batch is next

    def stepper(i: int) -> Callable[[], None]:
        name, model, optimizer, sched = runs[i]

        def step() -> None:
            x, y = data[done[i] % len(data)]
            train_step(model, optimizer, x, y, loss_fn)
            sync(device)
            mark = time.perf_counter()
            sched.step()
            sync(device)
            totals[name]["sched_seconds"] += time.perf_counter() - mark

        return step

    def before(i: int) -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        totals[runs[i][0]]["step_frozen"].append(runs[i][3].num_frozen)  # what this step runs with

    def after(i: int, seconds: float) -> None:
        total = totals[runs[i][0]]
        done[i] += 1
        total["step_seconds"].append(seconds)
        total["seconds"] += seconds
        if cuda:  # this run's peak, with every run's model resident: an upper bound on running it alone
            total["peak_memory_bytes"] = max(total.get("peak_memory_bytes", 0), torch.cuda.max_memory_allocated(device))
        if progress:
            progress(1)

    lockstep([stepper(i) for i in range(len(runs))], steps, device, before=before, after=after)
    for name, _, _, sched in runs:
        totals[name]["num_frozen"] = sched.num_frozen
    return totals


def sched_step_seconds(template: Template, lr: float, calls: int) -> float:
    """Seconds per ``sched.step()`` that freezes nothing (the per-step cost; freezing is once per layer)."""
    model, layers = copy_model(*template)
    optimizer = make_optimizer(model, layers, lr)
    sched = FreezeOut(optimizer, layers, 100 * calls)  # t stays < 0.01: nothing freezes
    start = time.perf_counter()
    for _ in range(calls):
        sched.step()
    return (time.perf_counter() - start) / calls
