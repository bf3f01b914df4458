"""Measured training-step time with the first ``k`` layers frozen, the curve ``T(k)`` the estimates use.

A frozen prefix is set up exactly as ``FreezeOut`` leaves it (the effects of ``freezeout.freezing``: no gradient,
inference mode, the graph cut, folds), installed and removed as ``k`` changes, so one model copy and one optimizer
serve every ``k``; k's alternate
round robin after a warm-up round and each ``T(k)`` is a median, which keeps slow drift on a shared
machine from biasing one end of the curve.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checks import check_int
from ..freezing import FrozenPrefix
from ..freezing.saved import saved_tensor_bytes
from ..layers import LayerLike, as_layers, check_layers
from ..options import FreezeOutOptions
from ..tensors import first_tensor, map_tensors, run_model
from .cost import interpolate_step_times
from .flops import batch_size_of
from .workload import LossFn, copy_model, make_optimizer, model_loss, random_targets, train_step

__all__ = ["Rounds", "curve_from_samples", "default_ks", "merge_curves", "set_frozen_prefix", "step_time_curve", "sync"]


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


_prefixes: weakref.WeakKeyDictionary[nn.Module, FrozenPrefix] = weakref.WeakKeyDictionary()


def set_frozen_prefix(
    model: nn.Module, layers: Sequence[LayerLike], k: int, fuse: bool = FreezeOutOptions().fuse
) -> None:
    """Make the first ``k`` of ``model``'s ``layers`` frozen as ``FreezeOut(fuse=...)`` leaves them, and the others
    trainable again; ``model`` in training mode. The same ``model`` again moves its frozen prefix (``k = 0``: no
    trace of FreezeOut left)."""
    model.train()
    items = as_layers(layers)
    prefix = _prefixes.get(model)
    same = prefix is not None and prefix.fuse == fuse and len(prefix.layers) == len(items)
    if not same or any(a.modules != b.modules for a, b in zip(prefix.layers, items)):
        if prefix is not None:
            prefix.close()
        prefix = _prefixes[model] = FrozenPrefix(items, fuse=fuse)
    prefix.freeze_to(k)


def default_ks(n: int, max_points: int = 41) -> list[int]:
    """Every ``k = 0 .. n`` up to ``max_points`` values; beyond that, evenly spaced ones (0 and n kept)."""
    if n + 1 <= max_points:
        return list(range(n + 1))
    return sorted({round(j * n / (max_points - 1)) for j in range(max_points)})


@dataclass(frozen=True)
class Rounds:
    """How ``step_time_curve`` keeps a shared machine's noise out of ``T(k)``; what a timed step is, is ``_Rig``'s.

    ``warmup`` untimed steps at ``k = n`` and ``k = 0`` first (eval- and train-mode kernels, allocator, caches),
    then ``warm_rounds`` untimed rounds over every k (a fresh process's first steps run slow: docs/BENCHMARKS.md,
    "Notes behind the defaults") and ``repeats`` timed ones, alternating direction so that a drift hits every k
    alike; ``settle`` untimed steps after every change of ``k`` (a run changes ``k`` a few dozen times in
    thousands of steps: what it pays per step is the steady cost). ``paired``: each timed step beside one of a
    copy with nothing frozen, which of the two goes first alternating: a drift within a round then moves both
    steps of a pair alike and leaves the curve's shape, what every saving is.
    """

    repeats: int = 3
    warmup: int = 2
    warm_rounds: int = 1
    settle: int = 1
    paired: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "repeats", check_int("repeats", self.repeats, 1))
        for name in ("warmup", "warm_rounds", "settle"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 0))

    def visits(self, ks: Sequence[int]) -> Iterator[tuple[int, bool, bool]]:
        """``(k, neighbour_first, kept)`` for every step of the rounds, in order (``kept``: a timed round's)."""
        for r in range(-self.warm_rounds, self.repeats):
            for i, k in enumerate(ks if r % 2 == 0 else reversed(ks)):
                yield k, (r + i) % 2 == 1, r >= 0


class _Rig:
    """The measurement: a copy of the model with its optimizer and one batch, its first ``k`` layers frozen as
    ``FreezeOut`` leaves them; ``paired``: a second copy beside it, never frozen (a run's baseline)."""

    def __init__(
        self, model: nn.Module, layers: Sequence[LayerLike], example_input: Any, *, device: torch.device, lr: float,
        target: torch.Tensor | None, loss_fn: LossFn | None, fuse: bool, paired: bool,
    ) -> None:  # fmt: skip
        self.device, self.fuse, self.loss_fn = device, fuse, loss_fn or model_loss
        self.model, self.layers = copy_model(model, layers, device)
        self.x = map_tensors(example_input, lambda t: t.to(device))
        self.y = random_targets(self.model, self.x) if target is None else target.to(device)
        self.steppers = [(self.model, make_optimizer(self.model, self.layers, lr))]
        if paired:
            base, base_layers = copy_model(model, layers, device)
            self.steppers.append((base, make_optimizer(base, base_layers, lr)))

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        train_step(model, optimizer, self.x, self.y, self.loss_fn)

    def set_k(self, k: int, steps: int = 0) -> None:
        """The first ``k`` layers frozen, then ``steps`` untimed steps."""
        set_frozen_prefix(self.model, self.layers, k, self.fuse)
        for _ in range(steps):
            self.step(*self.steppers[0])

    def warm(self, steps: int) -> None:
        for k in (len(self.layers), 0):
            self.set_k(k, steps)
        for stepper in self.steppers[1:]:
            for _ in range(steps):
                self.step(*stepper)

    def timed(self, neighbour_first: bool) -> tuple[float, float | None]:
        """Seconds of one step of the model as it is, and of one of the neighbour beside it (if paired)."""
        times = {}
        for model, optimizer in self.steppers[::-1] if neighbour_first else self.steppers:
            sync(self.device)
            start = time.perf_counter()
            self.step(model, optimizer)
            sync(self.device)
            times[model is self.model] = time.perf_counter() - start
        return times[True], times.get(False)

    def saved_bytes(self, k: int) -> int:
        self.set_k(k)
        return saved_tensor_bytes(lambda: run_model(self.model, self.x))[1]


def _sample(
    rig: _Rig, rounds: Rounds, ks: Sequence[int], progress: Callable[[int], None] | None
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """The timed steps of every k, and of the neighbour beside each (empty unless paired), as ``rounds`` orders."""
    rig.warm(rounds.warmup)
    samples: dict[int, list[float]] = {k: [] for k in ks}
    neighbours: dict[int, list[float]] = {k: [] for k in ks}
    for k, neighbour_first, kept in rounds.visits(ks):
        rig.set_k(k, rounds.settle)
        own, beside = rig.timed(neighbour_first)
        if kept:
            samples[k].append(own)
            if beside is not None:
                neighbours[k].append(beside)
        if progress:
            progress(1)
    return samples, neighbours


def step_time_curve(
    model: nn.Module,
    layers: Sequence[LayerLike],
    example_input: Any,
    *,
    target: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    ks: Sequence[int] | None = None,
    repeats: int = 3,
    warmup: int = 2,
    warm_rounds: int = 1,
    settle: int = 1,
    device: str | torch.device | None = None,
    lr: float = 0.1,
    progress: Callable[[int], None] | None = None,
    fuse: bool = FreezeOutOptions().fuse,
    paired: bool = False,
) -> dict[str, Any]:
    """Median training-step time ``T(k)`` with the first ``k`` layers frozen, on a copy of ``model``.

    ``ks`` picks the k's to measure (default ``default_ks``: all of them up to 40 layers); the rest are
    interpolated linearly. One step is zero_grad, forward, loss, backward and ``optimizer.step()`` of
    the paper's SGD. ``example_input`` is a tensor, tuple or mapping (``run_model``); ``loss_fn(output, target)``
    defaults to ``model_loss`` (the model's own loss if it computes one, else cross-entropy on random labels).
    Each ``k`` is set up as ``FreezeOut`` leaves it (a tied embedding's flow into frozen layers cut).
    ``repeats``, ``warmup``, ``warm_rounds``, ``settle`` and ``paired``: the rounds that keep noise out
    (``Rounds``). ``progress(1)`` is called after every step of a round.
    ``fuse``: frozen layers fused as ``FreezeOut``'s default does (``effects.folding``), or plain. ``paired``:
    ``T(k)`` from the ratios to the unfrozen neighbour (``curve_from_samples``), which a machine's drift moves
    alike; the result adds the neighbours' times as ``neighbour_samples``.
    Returns ``step_times`` (k = 0 .. n), the measured ``ks``, raw samples and saved-for-backward bytes of the
    forward pass (``saved_bytes``: none and all frozen; ``saved_bytes_by_k``: also half, ``n // 2``, if measured).
    """
    layers = check_layers(layers)
    n = len(layers)
    rounds = Rounds(repeats, warmup, warm_rounds, settle, paired)
    ks = default_ks(n) if ks is None else sorted(set(ks) | {0, n})
    if any(not 0 <= k <= n for k in ks):
        raise ValueError(f"ks must lie in 0 .. {n} (number of layers), got {ks}")
    batch_size_of(example_input)
    device = torch.device(device) if device is not None else first_tensor(example_input).device
    rig = _Rig(model, layers, example_input, device=device, lr=lr, target=target, loss_fn=loss_fn, fuse=fuse,
               paired=paired)  # fmt: skip
    samples, neighbours = _sample(rig, rounds, ks, progress)
    measured = curve_from_samples(samples, neighbours if paired else None)
    saved = {k: rig.saved_bytes(k) for k in sorted({0, n // 2, n} & set(ks))}
    rig.set_k(0)
    return {
        "ks": list(ks),
        "step_times": interpolate_step_times(measured, n),
        "samples": {str(k): v for k, v in samples.items()},
        "saved_bytes": {"none_frozen": saved[0], "all_frozen": saved[n]},
        "saved_bytes_by_k": {str(k): v for k, v in saved.items()},
        "device": str(device),
        **({"neighbour_samples": {str(k): v for k, v in neighbours.items()}} if paired else {}),
    }


def curve_from_samples(
    samples: Mapping[Any, Sequence[float]], neighbours: Mapping[Any, Sequence[float]] | None = None
) -> dict[int, float]:
    """``T(k)`` from timed steps per ``k``: their median, or with ``neighbours`` (a paired curve: the time of the
    unfrozen step beside each) the median ratio to the neighbour times the neighbours' median step, and ``T(0)``
    that median itself: the neighbour *is* a step with nothing frozen, timed beside every k (a run's baseline too),
    where k = 0's own few pairs would scale every saving by their noise (docs/BENCHMARKS.md, "Notes behind the
    defaults")."""
    if neighbours is None:
        return {int(k): statistics.median(v) for k, v in samples.items()}
    base_step = statistics.median(b for v in neighbours.values() for b in v)
    ratios = {
        int(k): statistics.median(t / b for t, b in zip(v, neighbours[k], strict=True)) for k, v in samples.items()
    }
    return {k: base_step * (1.0 if k == 0 else ratio) for k, ratio in ratios.items()}


def merge_curves(slices: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """One curve from ``step_time_curve``'s results taken in slices, every sample of each k pooled
    (``curve_from_samples``), the rest as the first slice has it."""
    samples = {k: [t for c in slices for t in c["samples"][k]] for k in slices[0]["samples"]}
    out = {**slices[0], "samples": samples}
    neighbours = None
    if "neighbour_samples" in slices[0]:
        neighbours = {k: [t for c in slices for t in c["neighbour_samples"][k]] for k in samples}
        out["neighbour_samples"] = neighbours
    return {**out, "step_times": interpolate_step_times(curve_from_samples(samples, neighbours), n)}
