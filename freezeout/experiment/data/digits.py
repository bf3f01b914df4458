"""The embedded default data: scikit-learn's handwritten digits (1797 images, 8 x 8, values 0..16)."""

from __future__ import annotations

import csv
import gzip
import io
from importlib import resources

import torch

__all__ = ["DIGITS_TEST", "load_digits"]

DIGITS_TEST = 300  # held-out test images; the other 1497 train
_SPLIT_SEED = 0  # fixed, so every run and every seed sees the same test set


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)``: uint8 images N x 1 x 8 x 8 (values 0..16), int64 labels."""
    raw = resources.files(__package__).joinpath("embedded/digits.csv.gz").read_bytes()
    with gzip.open(io.BytesIO(raw), "rt", newline="") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f) if row]
    table = torch.tensor(rows, dtype=torch.int64)
    if table.shape != (1797, 65):
        raise ValueError(f"embedded digits.csv.gz has shape {tuple(table.shape)}, expected (1797, 65)")
    x = table[:, :64].to(torch.uint8).view(-1, 1, 8, 8)
    y = table[:, 64]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    test, train = order[:DIGITS_TEST], order[DIGITS_TEST:]
    return x[train], y[train], x[test], y[test]
