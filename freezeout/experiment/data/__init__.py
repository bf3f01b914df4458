"""The data sets the experiment trains on, as a registry: one entry per data set, everything else reads it.

An entry says how to load the data (from a user's folder, or embedded), its classes and image shape (enough to
build a model without loading anything) and its augmentation. Sizes (how many training images, hence steps per
epoch) are read from the loaded data, never written down. A new data set is one ``DatasetSpec`` in ``DATASETS``.

A data set also says its task, and so its metric: ``classify`` (images or 1-D signals, labels; test error) or
``lm`` (a byte stream; the loss in bits per byte, ``bpb``). A language-model set loads as ``TextData`` (``.text``),
not ``Dataset``; both tell ``num_train``, the training examples of an epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...checks import check_int
from .batches import Batches, channel_stats, crop_flip, normalise
from .cifar import LAYOUTS, load_cifar
from .digits import load_digits
from .mnist1d import load_mnist1d, mnist1d_args
from .text import TextBatches, TextData, load_text

__all__ = [
    "DATASETS",
    "PYSTDLIB",
    "Batches",
    "Dataset",
    "DatasetSpec",
    "TextBatches",
    "TextData",
    "channel_stats",
    "crop_flip",
    "get_dataset",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "load_text",
    "normalise",
]

_VAL_SEED = 0  # fixed, so the validation images are the same for every seed of a sweep
# The byte-level corpus: windows of 64 bytes (nanoGPT's CPU example, "baby GPT", trains on 64), 1024 of them an
# epoch (64 steps of 16: an evaluation every 64 steps), 512 fixed windows (32,768 predicted bytes) to evaluate.
PYSTDLIB = {"context": 64, "windows": 1024, "eval_windows": 512}

Parts = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@functools.cache
def _generated(name: str) -> Any:
    """A generated data set, made once per process (a sweep in lockstep opens one run per grid point): MNIST-1D
    takes seconds to generate. Shared read-only: batches gather or copy, never write into the data."""
    return load_mnist1d() if name == "mnist1d" else load_text(name, **PYSTDLIB)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[str | None], Parts]  # data_dir -> (train_x, train_y, test_x, test_y), uint8 N x C x H x W
    num_classes: int
    shape: tuple[int, int, int]  # C, H, W of one image
    pad: int  # random-crop padding in pixels
    flip: bool  # random horizontal flips
    needs_dir: bool  # read from the user's data_dir (nothing can be downloaded)
    task: str = "classify"  # or "lm": a byte stream to predict (loads as TextData)
    # the metric a sweep compares, as its summary names it: test_<metric> (lower is better)
    metric: str = "error"
    info: Callable[[], dict] | None = None  # how the data was made, recorded with each run (None: nothing to add)
    models: tuple[str, ...] | None = None  # the models that take its input (None: every image model)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        # 8 x 8 images, where 4 px would shift a digit half off the image: 1 px. No flips: a mirrored digit is
        # not the same digit (2 and 5, 3 and epsilon).
        DatasetSpec("digits", lambda _dir: load_digits(), 10, (1, 8, 8), 1, False, False),
        # The paper's augmentation: random 32 x 32 crops of the image padded by 4 px, and flips.
        *(
            DatasetSpec(name, lambda d, name=name: load_cifar(name, d), lay.num_classes, (3, 32, 32), 4, True, True)
            for name, lay in LAYOUTS.items()
        ),
        # MNIST-1D's standard set, generated (the [study] extra): no augmentation, as in its paper.
        DatasetSpec(
            "mnist1d",
            lambda _dir: _generated("mnist1d"),
            10,
            (1, 1, 40),
            0,
            False,
            False,
            info=mnist1d_args,
            models=("resnet1d", "resnet"),
        ),
        # The standard library's .py files as bytes, for a language model: bits per byte on held-out files.
        DatasetSpec(
            "pystdlib",
            lambda _dir: _generated("pystdlib"),
            256,
            (PYSTDLIB["context"],),
            0,
            False,
            False,
            task="lm",
            metric="bpb",
            models=("gpt",),
        ),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    return DATASETS[name]


@dataclass
class Dataset:
    """uint8 images N x C x H x W and int64 labels, with how to augment them."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    pad: int  # random-crop padding in pixels
    flip: bool  # random horizontal flips
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    info: dict | None = None  # how the data was made (the spec's ``info``), recorded with each run
    task: str = "classify"

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def num_train(self) -> int:
        """Training examples per epoch."""
        return len(self.train_y)


def load_dataset(name: str, data_dir: str | None = None, val_split: int = 0) -> Dataset | TextData:
    """Load and validate a data set; hold out ``val_split`` training examples (a fixed random subset)."""
    spec = get_dataset(name)
    if spec.task == "lm":
        check_int("val_split", val_split, 0, 0, what=f"{name} holds out whole files already: its test split")
        return spec.load(data_dir)
    train_x, train_y, test_x, test_y = spec.load(data_dir)
    val_split = check_int("val_split", val_split, 0, len(train_y) - 1, what=f"training images held out of {name}")
    data = Dataset(name, train_x, train_y, test_x, test_y, spec.num_classes, spec.pad, spec.flip)
    data.info = spec.info() if spec.info is not None else None
    if val_split:
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(_VAL_SEED))
        val, keep = order[:val_split], order[val_split:]
        data.val_x, data.val_y = train_x[val], train_y[val]
        data.train_x, data.train_y = train_x[keep], train_y[keep]
    return data
