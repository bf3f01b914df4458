"""MNIST-1D (Greydanus, "Scaling down deep learning", 2020): 10 classes of 1-D signals of length 40, generated.

The ``mnist1d`` package (the ``[study]`` extra) generates the standard set offline with its standard arguments
(``make_dataset(get_dataset_args())``: 5000 signals from seed 42, the first 4000 to train, 1000 to test), the set
its paper reports about 94 % test accuracy on for a small CNN and 68 % for an MLP. Nothing is downloaded. Each
signal becomes a float32 N x 1 x 1 x 40 "image" (one channel, one row), so that the image pipeline (statistics,
batches, memory formats) carries it unchanged; a 1-D model reads it as N x 1 x 40.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["EXTRA", "load_mnist1d", "mnist1d_args"]

EXTRA = "study"  # the pyproject extra that installs the generator


def _generator() -> tuple[Any, Any]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ValueError(
            f"dataset mnist1d needs the mnist1d package: pip install 'freezeout[{EXTRA}]' (or pip install mnist1d)"
        ) from None
    return get_dataset_args, make_dataset


def mnist1d_args() -> dict[str, Any]:
    """The generation arguments (the package's standard ones, less the download address): what a run records."""
    get_dataset_args, _ = _generator()
    args = get_dataset_args(as_dict=True)
    return {k: v for k, v in args.items() if k != "url"}


def load_mnist1d() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)``: float32 signals N x 1 x 1 x 40 and int64 labels (4000 / 1000).

    The generator seeds numpy's and Python's global random state: both are put back as they were.
    """
    get_dataset_args, make_dataset = _generator()
    saved = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])

    def signals(x: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).view(len(x), 1, 1, -1)

    def labels(y: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    return signals(d["x"]), labels(d["y"]), signals(d["x_test"]), labels(d["y_test"])
