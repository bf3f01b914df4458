from __future__ import annotations

import gc

import pytest
import torch
import torch.distributed as dist
from torch import nn


class TinyNet(nn.Module):
    """A small conv net with BatchNorm and dropout inside its freezable layers."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.BatchNorm2d(width), nn.Conv2d(width, width, 3, padding=1), nn.Dropout(0.2))
            for _ in range(3)
        )
        self.head = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, classes)

    @property
    def layers(self) -> list[nn.Module]:
        return [self.stem, *self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(self.head(x))


def batch(step: int, n: int = 8, size: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic data for step `step`: the same batch whatever ran before."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def leave_process_group() -> None:
    """Destroy the process group once the caller has dropped its DDP wrappers.

    A DDP reducer keeps the gloo group alive; if it survives to interpreter exit, a gloo worker thread can
    free its last work item while Python finalizes and abort the process (SIGABRT, seen ~1 run in 20).
    With the wrappers collected, destroying the group joins those threads first.
    """
    gc.collect()
    dist.destroy_process_group()
