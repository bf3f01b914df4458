"""Augmentation, normalisation and minibatches, all on batched tensors on the training device.

The data set lives on the device as uint8 (CIFAR's 50,000 training images are 150 MB), so a batch is
an index gather plus a few elementwise ops: no worker processes, no per-sample Python, nothing that
can starve the model. All randomness of an epoch (order, crop offsets, flips) is drawn at its start
from one seeded CPU generator, whose state is what a checkpoint needs to replay the epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["Batches", "channel_stats", "check_pass", "crop_flip", "normalise"]


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (float32, shape C) of uint8 images N x C x H x W, summed in float64."""
    if x.dim() != 4 or len(x) == 0:
        raise ValueError(f"images must be a non-empty N x C x H x W tensor, got shape {tuple(x.shape)}")
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    ss = torch.zeros_like(s)
    for i in range(0, len(x), chunk):  # chunks: a float64 copy of all CIFAR would take 1.2 GB
        part = x[i : i + chunk].to("cpu", torch.float64)
        s += part.sum(dim=(0, 2, 3))
        ss += part.square().sum(dim=(0, 2, 3))
    count = x.numel() // x.shape[1]
    mean = s / count
    std = (ss / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)  # a constant channel stays finite
    return mean.float(), std.float()


def crop_flip(x: torch.Tensor, pad: int, offsets: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample random crop of the zero-padded images, then an optional horizontal flip, in one gather.

    ``x``: B x C x H x W; ``offsets``: B x 2 integers in [0, 2 * pad] (row, column of the window's top
    left corner in the padded image); ``flips``: B booleans. Output ``b`` equals
    ``F.pad(x, [pad] * 4)[b, :, r:r + H, c:c + W]`` with ``(r, c) = offsets[b]``, mirrored if ``flips[b]``.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    dev = x.device
    rows = offsets[:, 0, None] + torch.arange(h, device=dev)  # B x H
    cols = torch.arange(w, device=dev).expand(b, w)
    if flips is not None:
        # Mirroring the window is reading its columns backwards: no second pass over the images.
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    cols = offsets[:, 1, None] + cols  # B x W
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def normalise(x: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
    """uint8 (or float) images to a new float tensor: ``(x - mean) * inv_std`` per channel (``mean``, ``inv_std``:
    1 x C x 1 x 1). A copy, always: ``x`` may be a view of the data set (an evaluation batch), and float32 data
    would otherwise be normalised in place, again at every pass."""
    return x.to(torch.float32, copy=True).sub_(mean).mul_(inv_std)


def check_pass(train: bool, generator: torch.Generator | None, shard: tuple[int, int]) -> tuple[int, int]:
    """``(rank, world_size)`` of a pass over the data, once checked: a training pass draws from a seeded
    generator, and only a training pass is sharded."""
    if train and generator is None:
        raise ValueError("train=True needs a seeded torch.Generator")
    rank, world = shard
    if world < 1 or not 0 <= rank < world or (world > 1 and not train):
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, training only; got {shard}")
    return rank, world


class Batches:
    """Minibatches of an in-memory uint8 data set as normalised float tensors on ``device``.

    With ``train=True`` each pass shuffles and augments (crop with ``pad`` px of zero padding, and
    horizontal flips if ``flip``) using ``generator``; otherwise it yields the data in order, unchanged.
    The last partial batch is kept: ``len(self) = ceil(N / batch_size)`` steps per pass.

    ``shard=(rank, world_size)`` (training only) is one process's share of each pass, as PyTorch's
    ``DistributedSampler`` makes it: every rank draws the same order, crops and flips from its own copy of
    the generator, pads the order to a multiple of ``world_size`` by repeating its start, and takes every
    ``world_size``-th position from ``rank`` on. With ``batch_size`` the global batch over ``world_size``,
    step ``j``'s batches of all ranks together hold exactly the examples (and augmentations) of step
    ``j`` of one process running the global batch, and every rank takes ``ceil(N / global batch)`` steps.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        train: bool = False,
        pad: int = 0,
        flip: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rank, world = check_pass(train, generator, shard)
        self.shard = (rank, world)
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.batch_size, self.train, self.pad, self.flip = batch_size, train, pad, flip
        self.generator = generator
        self.mean = mean.to(self.device).view(1, -1, 1, 1)
        self.inv_std = (1.0 / std).to(self.device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.indices: torch.Tensor | None = None  # training: the positions in x of the batch last yielded

    def __len__(self) -> int:
        return -(-self.examples_per_pass // self.batch_size)

    @property
    def examples_per_pass(self) -> int:
        """Examples this process sees per pass: ``N``, or its share of ``N`` padded to the world size."""
        return -(-len(self.y) // self.shard[1])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = len(self.y), self.batch_size
        if self.train:
            g = self.generator
            order = torch.randperm(n, generator=g).to(self.device)
            offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g).to(self.device)
            flips = torch.randint(0, 2, (n,), generator=g).bool().to(self.device) if self.flip else None
            rank, world = self.shard
            if world > 1:  # the same draws on every rank; each takes its positions of the padded order
                mine = torch.arange(self.examples_per_pass * world, device=self.device)[rank::world] % n
                order, offsets = order[mine], offsets[mine]
                flips = None if flips is None else flips[mine]
                n = len(mine)
        for i in range(0, n, bs):
            if self.train:
                idx = order[i : i + bs]
                self.indices = idx
                x = crop_flip(self.x[idx], self.pad, offsets[i : i + bs], None if flips is None else flips[i : i + bs])
                y = self.y[idx]
            else:
                x, y = self.x[i : i + bs], self.y[i : i + bs]
            x = normalise(x, self.mean, self.inv_std)
            yield x.contiguous(memory_format=self.memory_format), y
