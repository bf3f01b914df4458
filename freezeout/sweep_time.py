"""What a sweep will cost and save: the paper's FLOP estimate per point and a short baseline timing.

The paper's estimate (Eq. 2-3, SPEC §3) needs each layer's forward FLOPs. ``freezeout.estimate`` (the
estimate issue) provides them with a calibrated alternative; when it is not installed we count FLOPs
here with ``torch.utils.flop_counter.FlopCounterMode`` — a small stand-in to be replaced by it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .schedule import freeze_times

__all__ = ["DATA_SHAPES", "example_model", "layer_flops", "paper_saving", "paper_savings", "time_baseline_epoch"]

# (channels, height, width, classes, training images) of each dataset the trainer knows; enough to build
# the model and to count steps without loading any data.
DATA_SHAPES = {
    "digits": (1, 8, 8, 10, 1497),
    "cifar10": (3, 32, 32, 10, 50000),
    "cifar100": (3, 32, 32, 100, 50000),
}


def example_model(base: dict[str, Any], batch: int | None = None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The base config's model, a random input batch and labels of its dataset's shape."""
    from .models import build_model

    if base.get("dataset") not in DATA_SHAPES:
        raise ValueError(f"dataset must be one of {', '.join(DATA_SHAPES)}, got {base.get('dataset')!r}")
    c, h, w, classes, _ = DATA_SHAPES[base["dataset"]]
    model = build_model(base.get("model", "densenet-bc"), base["depth"], base["growth"], classes, c)
    n = batch or base["batch_size"]
    gen = torch.Generator().manual_seed(0)
    return model, torch.randn(n, c, h, w, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def layer_flops(model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor) -> tuple[list[float], float]:
    """Forward FLOPs of each layer and of the rest, from one counted forward pass."""
    try:
        from .estimate import layer_flops as counted
    except ImportError:
        counted = None
    if counted is not None:
        return counted(model, layers, x)
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    starts: dict[int, int] = {}
    flops = [0.0] * len(layers)

    def pre(i: int):
        return lambda module, args: starts.__setitem__(i, counter.get_total_flops())

    def post(i: int):
        def hook(module, args, out):
            flops[i] += counter.get_total_flops() - starts[i]

        return hook

    handles = [m.register_forward_pre_hook(pre(i)) for i, m in enumerate(layers)]
    handles += [m.register_forward_hook(post(i)) for i, m in enumerate(layers)]
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return flops, float(counter.get_total_flops() - sum(flops))


def paper_saving(flops: Sequence[float], rest_flops: float, times: Sequence[float]) -> float:
    """``1 - C_f / C`` with ``C = sum 2 c_i`` and ``C_f = sum (1 + t_i) c_i``, the rest at ``t = 1``."""
    try:
        from .estimate import paper_saving as theirs
    except ImportError:
        theirs = None
    if theirs is not None:
        return theirs(flops, rest_flops, times)
    full = 2.0 * (sum(flops) + rest_flops)
    frozen = sum((1.0 + min(t, 1.0)) * c for c, t in zip(flops, times)) + 2.0 * rest_flops
    return 1.0 - frozen / full


def paper_savings(base: dict[str, Any], points: Iterable[tuple[str, float]]) -> dict[tuple[str, float], float]:
    """The paper's predicted saving for each ``(schedule, t0)``, counting the model's FLOPs once.

    Without the authors' x1.3 correction for the linear schedule: that is an empirical fudge of theirs.
    """
    model, x, _ = example_model(base, batch=1)
    flops, rest = layer_flops(model, model.layers, x)
    return {(s, t0): paper_saving(flops, rest, freeze_times(len(flops), t0, s)) for s, t0 in set(points)}


def time_baseline_epoch(base: dict[str, Any], steps: int = 3) -> float:
    """Seconds of one baseline training epoch: the median of ``steps`` timed SGD steps (after one warm-up)
    on random data of the dataset's shape, times the steps per epoch. Ignores data loading; a rough guide.
    """
    wanted = str(base.get("device", "auto"))
    device = "cuda" if wanted != "cpu" and torch.cuda.is_available() else "cpu"  # as the trainer resolves it
    model, x, y = example_model(base)
    model.to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first step pays for allocation and lazy initialisation
            times.append(time.perf_counter() - t)
    train_images = DATA_SHAPES[base["dataset"]][4] - int(base.get("val_split", 0))
    steps_per_epoch = -(-train_images // base["batch_size"])
    return statistics.median(times) * steps_per_epoch
