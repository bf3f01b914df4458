"""Small models and deterministic data shared by the tests."""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F
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


def randomise_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """BatchNorm statistics and affine parameters far from their initial values, so that no fold is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


def batch(step: int, n: int = 8, size: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic data for step `step`: the same batch whatever ran before."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def leave_process_group() -> None:
    """Destroy the process group once the caller has dropped its DDP wrappers.

    A DDP reducer keeps the gloo group alive; if it survives to interpreter exit, a gloo worker thread can
    free its last work item while Python finalizes and abort the process (SIGABRT, seen ~1 run in 20).
    With the wrappers collected, destroying the group joins those threads first.
    """
    gc.collect()
    dist.destroy_process_group()


OPTIMIZERS = {
    "sgd": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adamw": lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=1e-2),
    "adam": lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=1e-4),
}


def train_step(model, opt, sched, step, memory_format=torch.contiguous_format):
    """One step of a real loop on ``batch(step)``, zeroing grads in place (which must not revive frozen ones)."""
    model.train()  # a real loop calls this every epoch; frozen layers must stay in eval mode
    x, y = batch(step)
    x = x.contiguous(memory_format=memory_format)
    opt.zero_grad(set_to_none=False)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()


# What every run's files must hold (README, "freezeout train").
METRIC_KEYS = {
    "epoch", "step", "train_loss", "test_loss", "test_error", "test_accuracy", "epoch_seconds", "eval_seconds",
    "num_frozen", "lr",
}  # fmt: skip
SUMMARY_KEYS = {
    "config", "version", "epochs", "total_steps", "num_layers", "test_accuracy", "test_error", "test_loss",
    "train_seconds", "wall_seconds", "device", "finished",
}  # fmt: skip

# What a finished run folder holds, sorted: the lock and the four files of README, "freezeout train".
RUN_FILES = sorted([".freezeout.lock", "checkpoint.pt", "config.json", "metrics.jsonl", "summary.json"])


def modes_in_call(model: torch.nn.Module, *args: object) -> dict[str, bool]:
    """The ``training`` flag each module of ``model`` has while its own forward runs, on one call of ``model``."""
    seen: dict[str, bool] = {}

    def record(name: str) -> object:
        def hook(module: nn.Module, args: object) -> None:
            seen.setdefault(name, module.training)

        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return seen
