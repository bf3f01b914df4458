"""Measured training-step time with the first ``k`` layers frozen, the curve ``T(k)`` the estimates use.

A frozen prefix is set up exactly as ``FreezeOut`` leaves it (the effects of ``freezeout.effects``: no gradient,
inference mode, the graph cut, folds), installed and removed as ``k`` changes, so one model copy and one optimizer
serve every ``k``; k's alternate
round robin after a warm-up round and each ``T(k)`` is a median, which keeps slow drift on a shared
machine from biasing one end of the curve.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..checks import check_int
from ..freezing import FrozenPrefix
from ..hooks import map_tensors
from ..layers import LayerLike, as_layers, check_layers
from ..measure import saved_tensor_bytes, sync
from ..tracing import first_tensor, run_model
from .cost import interpolate_step_times
from .flops import batch_size_of
from .workload import LossFn, copy_model, make_optimizer, model_loss, random_targets, train_step

__all__ = ["curve_from_samples", "default_ks", "set_frozen_prefix", "step_time_curve"]


_prefixes: weakref.WeakKeyDictionary[nn.Module, FrozenPrefix] = weakref.WeakKeyDictionary()


def set_frozen_prefix(model: nn.Module, layers: Sequence[LayerLike], k: int, fuse: bool = True) -> None:
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
    fuse: bool = True,
    paired: bool = False,
) -> dict[str, Any]:
    """Median training-step time ``T(k)`` with the first ``k`` layers frozen, on a copy of ``model``.

    ``ks`` picks the k's to measure (default ``default_ks``: all of them up to 40 layers); the rest are
    interpolated linearly. One step is zero_grad, forward, loss, backward and ``optimizer.step()`` of
    the paper's SGD. ``example_input`` is a tensor, tuple or mapping (``run_model``); ``loss_fn(output, target)``
    defaults to ``model_loss`` (the model's own loss if it computes one, else cross-entropy on random labels).
    Each ``k`` is set up as ``FreezeOut`` leaves it (a tied embedding's flow into frozen layers cut). ``warmup``
    untimed steps run at ``k = n`` and ``k = 0`` first, then ``warm_rounds`` untimed passes over every k, and
    ``settle`` untimed steps after every change of ``k``: a training run changes ``k`` a few dozen times in
    thousands of steps, so what it pays per step is the steady-state cost. ``progress(1)`` is called after every
    step of a round.
    ``fuse``: frozen layers fused as ``FreezeOut``'s default does (``effects.folding``), or plain.
    ``paired``: a second copy with nothing frozen steps right beside every timed step (which goes first
    alternates), and ``T(k)`` is the median of the ratios to that neighbour times the neighbour's median step:
    a machine whose speed drifts within a round moves both steps of a pair alike, so the drift leaves the
    curve's shape (what every saving is) even when it is faster than a round; the result adds the neighbours'
    times as ``neighbour_samples`` (``curve_from_samples``).
    Returns ``step_times`` (k = 0 .. n), the measured ``ks``, raw samples and saved-for-backward bytes of the
    forward pass (``saved_bytes``: none and all frozen; ``saved_bytes_by_k``: also half, ``n // 2``, if measured).
    """
    layers = check_layers(layers)
    n = len(layers)
    repeats = check_int("repeats", repeats, 1)
    warmup, warm_rounds, settle = (
        check_int(k, v, 0) for k, v in (("warmup", warmup), ("warm_rounds", warm_rounds), ("settle", settle))
    )
    ks = default_ks(n) if ks is None else sorted(set(ks) | {0, n})
    if any(not 0 <= k <= n for k in ks):
        raise ValueError(f"ks must lie in 0 .. {n} (number of layers), got {ks}")
    batch_size_of(example_input)
    device = torch.device(device) if device is not None else first_tensor(example_input).device
    clone, clone_layers = copy_model(model, layers, device)
    x = map_tensors(example_input, lambda t: t.to(device))
    y = random_targets(clone, x) if target is None else target.to(device)
    loss_fn = loss_fn or model_loss
    optimizer = make_optimizer(clone, clone_layers, lr)
    steppers = [(clone, optimizer)]
    if paired:  # the neighbour: a run's baseline, never frozen, never toggled
        base, base_layers = copy_model(model, layers, device)
        steppers.append((base, make_optimizer(base, base_layers, lr)))

    def set_k(k: int, steps: int) -> None:
        """The first ``k`` layers frozen, then ``steps`` untimed steps."""
        set_frozen_prefix(clone, clone_layers, k, fuse)
        for _ in range(steps):
            train_step(clone, optimizer, x, y, loss_fn)

    for k in (n, 0):  # warm-up at both ends: eval-mode and train-mode kernels, allocator, caches
        set_k(k, warmup)
    for neighbour, neighbour_optimizer in steppers[1:]:
        for _ in range(warmup):
            train_step(neighbour, neighbour_optimizer, x, y, loss_fn)
    samples: dict[int, list[float]] = {k: [] for k in ks}
    neighbours: dict[int, list[float]] = {k: [] for k in ks}
    # A fresh process runs its first ~50 CPU steps of a big model ~10 % slow at small k (the heap still
    # growing: DenseNet-BC-76 measured T(0) = 1.135 s at first, 1.021 s after 60 steps, 1.005 s in a
    # training loop), which skewed T(0), the normaliser of every saving. Untimed rounds absorb it.
    for r in range(-warm_rounds, repeats):
        for i, k in enumerate(ks if r % 2 == 0 else reversed(ks)):  # alternate direction: drift hits every k alike
            set_k(k, settle)
            order = steppers if (r + i) % 2 == 0 else steppers[::-1]
            times = {}
            for model_, optimizer_ in order:
                sync(device)
                start = time.perf_counter()
                train_step(model_, optimizer_, x, y, loss_fn)
                sync(device)
                times[model_ is clone] = time.perf_counter() - start
            if r >= 0:
                samples[k].append(times[True])
                if paired:
                    neighbours[k].append(times[False])
            if progress:
                progress(1)
    measured = curve_from_samples(samples, neighbours if paired else None)
    saved = {}
    for k in sorted({0, n // 2, n} & set(ks)):
        set_k(k, 0)
        saved[k] = saved_tensor_bytes(lambda: run_model(clone, x))[1]
    set_frozen_prefix(clone, clone_layers, 0, fuse)
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
    where k = 0's own few pairs would scale every saving by their noise (±15 % per pair on a shared CPU)."""
    if neighbours is None:
        return {int(k): statistics.median(v) for k, v in samples.items()}
    base_step = statistics.median(b for v in neighbours.values() for b in v)
    ratios = {
        int(k): statistics.median(t / b for t, b in zip(v, neighbours[k], strict=True)) for k, v in samples.items()
    }
    return {k: base_step * (1.0 if k == 0 else ratio) for k, ratio in ratios.items()}
