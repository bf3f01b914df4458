"""Real text with no download: the Python standard library's own ``.py`` sources, as bytes, for a language model.

The files: every ``.py`` under ``sysconfig.get_paths()["stdlib"]``, sorted by their path relative to it, less
the test suites (any folder ``test``, ``tests`` or ``idle_test``, any file ``test_*.py``), installed packages
(``site-packages``, ``dist-packages``) and caches. Every tenth file of that list (positions 9, 19, ...) is held
out: the validation (``test``) split, whole files the model never trains on. Each split is its files' bytes
concatenated in list order. The data is the standard library of the Python that runs it: the run records the
Python version, both file lists and the sha256 of each split's bytes, so a rerun can tell it read the same text.

Training examples are random windows of ``context`` bytes (a crop of the training stream at a uniform random
offset, its target the same window shifted by one byte), ``windows`` of them per epoch, drawn from the run's
seeded generator; the evaluation windows are fixed: ``eval_windows`` windows at evenly spaced offsets over the
whole held-out stream, the same for every run and seed.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .batches import check_pass

__all__ = ["EXCLUDED_DIRS", "TextBatches", "TextData", "load_text", "stdlib_files"]

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
HELD_OUT_EVERY = 10  # one file in ten validates: ~10 % of the text, spread over the whole library


def stdlib_files(root: str | Path | None = None) -> list[str]:
    """The corpus's files, relative to ``root`` (the running Python's standard library), sorted, as posix paths."""
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not root.is_dir():
        raise ValueError(f"the standard library folder {root} does not exist")
    found = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if EXCLUDED_DIRS.isdisjoint(rel.parts[:-1]) and not rel.name.startswith("test_") and p.is_file():
            found.append(rel.as_posix())
    if not found:
        raise ValueError(f"no .py files under {root}")
    return sorted(found)


@dataclass
class TextData:
    """A byte stream to train on and one to evaluate, with the windows each pass takes from them."""

    name: str
    train: torch.Tensor  # uint8, the training files' bytes
    test: torch.Tensor  # uint8, the held-out files' bytes
    context: int  # bytes per window
    windows: int  # training windows per epoch
    eval_windows: int
    info: dict[str, Any] = field(default_factory=dict)  # what the run records: files, hashes, Python
    num_classes: int = 256  # bytes
    in_channels: int = 1  # one stream
    task: str = "lm"

    @property
    def num_train(self) -> int:
        """Training examples per epoch: the windows (the trainer's steps per epoch = ceil(windows / batch))."""
        return self.windows


def load_text(name: str, context: int, windows: int, eval_windows: int, root: str | Path | None = None) -> TextData:
    """The standard library corpus (``stdlib_files``) split by file, as ``TextData``; ``root`` for tests."""
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    files = stdlib_files(root)
    held = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    parts = {}
    for split, names in (("train", train), ("test", held)):
        data = b"".join((root / f).read_bytes() for f in names)
        if len(data) <= context:
            raise ValueError(
                f"the {split} files of {root} hold {len(data)} bytes, fewer than a window of {context} + 1"
            )
        parts[split] = (data, names)
    info = {
        "source": "the .py files of the Python standard library (sysconfig stdlib), tests and site-packages excluded",
        "python": platform.python_version(),
        "context": context,
        "windows_per_epoch": windows,
        "eval_windows": eval_windows,
        **{f"{s}_bytes": len(d) for s, (d, _) in parts.items()},
        **{f"{s}_sha256": hashlib.sha256(d).hexdigest() for s, (d, _) in parts.items()},
        **{f"{s}_files": n for s, (_, n) in parts.items()},
    }
    stream = {s: torch.frombuffer(bytearray(d), dtype=torch.uint8) for s, (d, _) in parts.items()}
    return TextData(name, stream["train"], stream["test"], context, windows, eval_windows, info)


class TextBatches:
    """Minibatches of windows of a byte stream: token ids ``x`` (batch x context, int64) and targets ``y`` (the
    next byte of each position).

    ``train=True``: each pass draws ``windows`` uniform random offsets from ``generator`` (the run's seeded one,
    whose state a checkpoint keeps); ``shard=(rank, world_size)`` takes one process's share of them, as
    ``Batches`` does. Otherwise: ``windows`` fixed windows at evenly spaced offsets, in order, every pass alike.
    """

    def __init__(
        self,
        stream: torch.Tensor,
        context: int,
        batch_size: int,
        windows: int,
        *,
        train: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if stream.dim() != 1 or len(stream) <= context or context < 1:
            raise ValueError(f"stream must be 1-d and longer than context + 1 = {context + 1}, got {len(stream)}")
        if batch_size < 1 or windows < 1:
            raise ValueError(f"batch_size and windows must be >= 1, got {batch_size} and {windows}")
        rank, world = check_pass(train, generator, shard)
        self.device = torch.device(device)
        self.stream = stream.to(self.device)
        self.context, self.batch_size, self.windows, self.train = context, batch_size, windows, train
        self.generator, self.shard = generator, (rank, world)
        self.indices: torch.Tensor | None = None  # no example repeats: nothing for a cache to key
        self.span = torch.arange(context + 1, device=self.device)
        last = len(stream) - context - 1  # the last offset whose window and target fit
        if not train:
            offsets = torch.linspace(0, last, windows, dtype=torch.float64).round().long().to(self.device)
            self.x, self.y = self._cut(offsets)

    def _cut(self, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.stream[offsets[:, None] + self.span].long()
        return rows[:, :-1], rows[:, 1:]

    @property
    def examples_per_pass(self) -> int:
        """Windows this process takes per pass: its share of ``windows``, padded to the world size."""
        return -(-self.windows // self.shard[1])

    def __len__(self) -> int:
        return -(-self.examples_per_pass // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        if not self.train:
            for i in range(0, self.windows, bs):
                yield self.x[i : i + bs], self.y[i : i + bs]
            return
        last = len(self.stream) - self.context - 1
        offsets = torch.randint(0, last + 1, (self.windows,), generator=self.generator).to(self.device)
        rank, world = self.shard
        if world > 1:  # the same draws on every rank; each takes its positions of the padded order
            offsets = offsets[
                torch.arange(self.examples_per_pass * world, device=self.device)[rank::world] % self.windows
            ]
        for i in range(0, len(offsets), bs):
            yield self._cut(offsets[i : i + bs])
