"""Measured training-step time with the first ``k`` layers frozen, the curve ``T(k)`` the estimates use.

A frozen prefix is set up exactly as ``freeze_layer`` leaves it (``requires_grad`` off, grads ``None``,
eval mode), but by toggling, so one model copy and one optimizer serve every ``k``; k's alternate
round robin after a warm-up round and each ``T(k)`` is a median, which keeps slow drift on a shared
machine from biasing one end of the curve.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..accel.fuse import fuse_layer, unfuse_layer
from ..checks import check_int
from ..freezing import lock_eval, unlock_eval
from ..groups import check_layers, param_groups, unwrap
from ..measure import eval_mode, saved_tensor_bytes, sync
from .cost import interpolate_step_times

__all__ = [
    "copy_model",
    "default_ks",
    "make_optimizer",
    "random_targets",
    "set_frozen_prefix",
    "step_time_curve",
    "train_step",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def copy_model(model: nn.Module, layers: Sequence[nn.Module], device: Any = None) -> tuple[nn.Module, list]:
    """A deep copy of ``model`` (on ``device``) and its layers, found again by their module names."""
    inner = unwrap(model)
    names = {id(m): name for name, m in inner.named_modules()}
    missing = [i for i, layer in enumerate(layers) if id(layer) not in names]
    if missing:
        raise ValueError(f"layers[{missing[0]}] is not a submodule of the model")
    clone = copy.deepcopy(inner)
    if device is not None:
        clone.to(device)
    return clone, [clone.get_submodule(names[id(layer)]) for layer in layers]


def make_optimizer(model: nn.Module, layers: Sequence[nn.Module], lr: float = 0.1) -> torch.optim.Optimizer:
    """The paper's optimizer (SGD, Nesterov momentum 0.9, weight decay 1e-4) on FreezeOut's groups."""
    return torch.optim.SGD(param_groups(model, layers), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)


def random_targets(model: nn.Module, example_input: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random class labels for cross-entropy, the class count read from the model's output ``(B, C)``."""
    with eval_mode(model), torch.no_grad():  # reading the output shape must not move BatchNorm statistics
        out = model(example_input)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError("pass target= and loss_fn= for a model whose output is not (batch, classes) logits")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, out.shape[1], (out.shape[0],), generator=g).to(out.device)


def set_frozen_prefix(model: nn.Module, layers: Sequence[nn.Module], k: int, fuse: bool = True) -> None:
    """Make the first ``k`` layers frozen (eval mode locked, and fused if ``fuse``, as ``FreezeOut(fuse=...)``
    leaves them) and the others trainable, as ``freeze_layer`` would."""
    model.train()
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            p.requires_grad_(i >= k)
            if i < k:
                p.grad = None
        if i < k:
            lock_eval(layer)
            if fuse:
                fuse_layer(layer)
            else:
                unfuse_layer(layer)
        else:
            unfuse_layer(layer)
            unlock_eval(layer)
            layer.train()


def train_step(model: nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    optimizer.step()


def default_ks(n: int, max_points: int = 41) -> list[int]:
    """Every ``k = 0 .. n`` up to ``max_points`` values; beyond that, evenly spaced ones (0 and n kept)."""
    if n + 1 <= max_points:
        return list(range(n + 1))
    return sorted({round(j * n / (max_points - 1)) for j in range(max_points)})


def step_time_curve(
    model: nn.Module,
    layers: Sequence[nn.Module],
    example_input: torch.Tensor,
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
) -> dict[str, Any]:
    """Median training-step time ``T(k)`` with the first ``k`` layers frozen, on a copy of ``model``.

    ``ks`` picks the k's to measure (default ``default_ks``: all of them up to 40 layers); the rest are
    interpolated linearly. One step is zero_grad, forward, loss, backward and ``optimizer.step()`` of
    the paper's SGD. ``loss_fn`` defaults to cross-entropy on random labels. ``warmup`` untimed steps run at
    ``k = n`` and ``k = 0`` first, then ``warm_rounds`` untimed passes over every k, and ``settle`` untimed
    steps after every change of ``k``: a training run changes ``k`` a few dozen times in thousands of steps,
    so what it pays per step is the steady-state cost. ``progress(1)`` is called after every step of a round.
    ``fuse``: frozen layers fused as ``FreezeOut``'s default does (``accel.fuse``), or plain.
    Returns ``step_times`` (k = 0 .. n), the measured ``ks``, raw samples and saved-for-backward bytes.
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
    device = torch.device(device) if device is not None else example_input.device
    clone, clone_layers = copy_model(model, layers, device)
    x = example_input.to(device)
    y = (random_targets(clone, x) if target is None else target).to(device)
    loss_fn = loss_fn or F.cross_entropy
    optimizer = make_optimizer(clone, clone_layers, lr)
    for k in (n, 0):  # warm-up at both ends: eval-mode and train-mode kernels, allocator, caches
        set_frozen_prefix(clone, clone_layers, k, fuse)
        for _ in range(warmup):
            train_step(clone, optimizer, x, y, loss_fn)
    samples: dict[int, list[float]] = {k: [] for k in ks}
    # A fresh process runs its first ~50 CPU steps of a big model ~10 % slow at small k (the heap still
    # growing: DenseNet-BC-76 measured T(0) = 1.135 s at first, 1.021 s after 60 steps, 1.005 s in a
    # training loop), which skewed T(0), the normaliser of every saving. Untimed rounds absorb it.
    for r in range(-warm_rounds, repeats):
        for k in ks if r % 2 == 0 else reversed(ks):  # alternate direction: drift hits every k alike
            set_frozen_prefix(clone, clone_layers, k, fuse)
            for _ in range(settle):
                train_step(clone, optimizer, x, y, loss_fn)
            sync(device)
            start = time.perf_counter()
            train_step(clone, optimizer, x, y, loss_fn)
            sync(device)
            if r >= 0:
                samples[k].append(time.perf_counter() - start)
            if progress:
                progress(1)
    measured = {k: statistics.median(v) for k, v in samples.items()}
    saved = {}
    for k in (0, n):
        set_frozen_prefix(clone, clone_layers, k, fuse)
        saved[k] = saved_tensor_bytes(lambda: clone(x))[1]
    return {
        "ks": list(ks),
        "step_times": interpolate_step_times(measured, n),
        "samples": {str(k): v for k, v in samples.items()},
        "saved_bytes": {"none_frozen": saved[0], "all_frozen": saved[n]},
        "device": str(device),
    }
