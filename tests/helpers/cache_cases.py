"""Models that ordinary code writes and that a frozen-prefix cache could get wrong, for the cache's tests.

Each function returns a ``Case``, made afresh for each run (``tests.helpers.cache_runs.twice``): ``make()`` ->
``(model, layers)``, ``data(indices)`` -> ``(input, target)``, ``loss(model, input, target)``. They run in float64,
where float32 rounding would blur a wrong row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

N, B, WIDTH, LENGTH, VOCAB = 12, 4, 8, 6, 20


def cross_entropy(model: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


@dataclass
class Case:
    make: Callable[[], tuple[nn.Module, list]]
    data: Callable[[torch.Tensor], tuple[Any, torch.Tensor]]
    loss: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor] = cross_entropy
    extra: Callable[[nn.Module], list[torch.Tensor]] | None = None  # trainable tensors that are not parameters
    examples: range = field(default_factory=lambda: range(N))
    batch: int = B


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


X = torch.randn(N, WIDTH, generator=_generator(2), dtype=torch.float64)
Y = torch.randint(0, 3, (N,), generator=_generator(3))


def features(i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return X[i], Y[i]


class Block(nn.Sequential):
    """``Tanh`` then ``Linear``, times ``gain`` (a plain Python attribute)."""

    def __init__(self, norm: Callable[[], nn.Module] | None = None) -> None:
        super().__init__(nn.Tanh(), *([norm()] if norm else []), nn.Linear(WIDTH, WIDTH))
        self.gain = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.gain


class Stack(nn.Module):
    """``before(self, x)``, three blocks (the freezable layers), ``after(x)``, a linear head."""

    def __init__(self, before: Callable | None = None, after: nn.Module | None = None, norm=None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(norm) for _ in range(3))
        self.before, self.after = before, after or nn.Identity()
        self.head = nn.Linear(WIDTH, 3)
        self.register_buffer("scale", torch.ones(WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale
        if self.before is not None:
            x = self.before(self, x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.after(x))


def stack(before: Callable | None = None, after: Callable[[], nn.Module] | None = None, norm=None, data=features,
          dtype: torch.dtype = torch.float64, **kw: Any) -> Case:  # fmt: skip
    def make():
        torch.manual_seed(0)
        model = Stack(before, after() if after else None, norm).to(dtype)
        model.prompt = torch.zeros(WIDTH, dtype=dtype, requires_grad=True)
        return model, list(model.blocks)

    return Case(make, data, **kw)


def batch_statistics_before() -> Case:
    """A parameter-free normalisation over the batch before the frozen layers: each row depends on the batch."""
    return stack(before=lambda m, x: (x - x.mean(0)) / (x.std(0) + 1e-3))


def batch_maximum_before() -> Case:
    """The batch's maximum taken off each row: exact in any order, so only a batch of other rows shows it."""
    return stack(before=lambda m, x: x - x.amax(0))


def batchnorm_without_running_stats() -> Case:
    """A BatchNorm that keeps no running statistics uses the batch's in eval mode too, frozen or not."""
    return stack(norm=lambda: nn.BatchNorm1d(WIDTH, track_running_stats=False))


def inplace_after() -> Case:
    """``LeakyReLU(inplace=True)`` right after the last frozen layer writes into the frontier."""
    return stack(after=lambda: nn.LeakyReLU(0.1, inplace=True))


def plain() -> Case:
    return stack()


def prompt() -> Case:
    """A learned prompt held as a trainable tensor attribute (not a parameter), added before the frozen layers."""

    return stack(before=lambda m, x: x + m.prompt, extra=lambda m: [m.prompt])


_SHIFT = torch.zeros(WIDTH, dtype=torch.float64, requires_grad=True)  # a trainable tensor nobody holds


def global_shift() -> Case:
    """A trainable tensor held by a global, not by the model, added before the frozen layers."""
    with torch.no_grad():
        _SHIFT.zero_()
    return stack(before=lambda m, x: x + _SHIFT, extra=lambda m: [_SHIFT])


def sign_flips() -> Case:
    """Augmentation by polarity: examples 0 and 1 come negated every other epoch."""
    seen = [0]

    def data(i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = seen[0] // (N // B)
        seen[0] += 1
        sign = torch.ones(len(i), 1, dtype=torch.float64)
        sign[(i < 2) & torch.tensor(epoch % 2 == 1)] = -1
        return X[i] * sign, Y[i]

    return stack(data=data)


class Sorted(nn.Module):
    """Sorts its batch by length (as packed sequences want) before the blocks and puts it back after them."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        order = (ids != 0).sum(1).argsort(descending=True, stable=True)
        x = self.emb(ids).mean(1)[order]
        for block in self.blocks:
            x = block(x)
        return self.head(x[order.argsort()])


def _ids() -> torch.Tensor:
    ids = torch.randint(1, VOCAB, (N, LENGTH), generator=_generator(4))
    for i in range(N):  # lengths 2..LENGTH, zero-padded
        ids[i, 2 + i % (LENGTH - 1) :] = 0
    return ids


IDS = _ids()


def sorted_by_length() -> Case:
    def make():
        torch.manual_seed(0)
        model = Sorted().double()
        return model, [model.emb, *model.blocks]

    return Case(make, lambda i: (IDS[i], Y[i]))


class Subset(nn.Module):
    """The blocks run only on the rows with more than two tokens (``x[valid]``); the embedding is fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH).requires_grad_(False)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids).sum(1)
        valid = (ids != 0).sum(1) > 2
        h = x[valid]
        for block in self.blocks:
            h = block(h)
        out = torch.zeros_like(x)
        out[valid] = h
        return self.head(out + x)


def subset_rows() -> Case:
    """Examples 0-7 all pass the test, so the first batches (in order) give the blocks every row."""
    ids = IDS.clone()
    ids[:8, :4] = torch.randint(1, VOCAB, (8, 4), generator=_generator(6))

    def make():
        torch.manual_seed(0)
        model = Subset().double()
        return model, list(model.blocks)

    return Case(make, lambda i: (ids[i], Y[i]))


AUTOCAST = [False]  # whether ``autocast_later``'s loss runs under CPU autocast (bfloat16)


def autocast_later() -> Case:
    """A float32 model whose loop turns autocast on part-way (the test sets ``AUTOCAST``)."""
    AUTOCAST[0] = False

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=AUTOCAST[0]):
            out = model(x)
        return F.cross_entropy(out.float(), y)

    return stack(data=lambda i: (X[i].float(), Y[i]), dtype=torch.float32, loss=loss)


class Branching(Stack):
    """When an input's first feature is large, skips its last block (``swap=False``), or runs the two halves of
    its first layer the other way round (``swap=True``): which frozen calls run depends on the batch."""

    def __init__(self, swap: bool) -> None:
        super().__init__()
        self.swap = swap
        self.pair = nn.ModuleList([nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flagged = bool((x[:, 0].abs() > 10).any())
        first, second = reversed(self.pair) if flagged and self.swap else self.pair
        x = second(first(x))
        for block in self.blocks[:2] if flagged and not self.swap else self.blocks:
            x = block(x)
        return self.head(x)


def branching(swap: bool = False) -> Case:
    """Examples 4-7 take the other branch, so batches in order take it in the second step of each epoch."""
    x = X.clone()
    x[4:8, 0] = 20.0

    def make():
        torch.manual_seed(0)
        model = Branching(swap).double()
        return model, [list(model.pair), *model.blocks]

    return Case(make, lambda i: (x[i], Y[i]))
