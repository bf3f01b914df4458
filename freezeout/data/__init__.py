"""Data for the trainer: CIFAR-10/100 from the python-version archives, or the embedded digits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batches import Batches, channel_stats, crop_flip, normalise
from .cifar import LAYOUTS, load_cifar
from .digits import load_digits

__all__ = ["Batches", "Dataset", "channel_stats", "crop_flip", "load_cifar", "load_dataset", "load_digits", "normalise"]

_VAL_SEED = 0  # fixed, so the validation images are the same for every seed of a sweep


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

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])


def load_dataset(name: str, data_dir: str | None = None, val_split: int = 0) -> Dataset:
    """Load and validate a data set; hold out ``val_split`` training examples (a fixed random subset).

    CIFAR: the paper's augmentation, random 32 x 32 crops of the image padded by 4 px, and flips.
    Digits: 8 x 8 images, where 4 px would shift a digit half off the image, so the padding is 1 px;
    and no flips, since a mirrored digit is not the same digit (2 and 5, 3 and epsilon).
    """
    if name == "digits":
        parts, classes, pad, flip = load_digits(), 10, 1, False
    elif name in LAYOUTS:
        parts, classes, pad, flip = load_cifar(name, data_dir), LAYOUTS[name].num_classes, 4, True
    else:
        raise ValueError(f"dataset must be one of digits, {', '.join(LAYOUTS)}, got {name!r}")
    train_x, train_y, test_x, test_y = parts
    if isinstance(val_split, bool) or not isinstance(val_split, int) or not 0 <= val_split < len(train_y):
        raise ValueError(f"val_split must be an integer in [0, {len(train_y)}) for {name}, got {val_split!r}")
    data = Dataset(name, train_x, train_y, test_x, test_y, classes, pad, flip)
    if val_split:
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(_VAL_SEED))
        val, keep = order[:val_split], order[val_split:]
        data.val_x, data.val_y = train_x[val], train_y[val]
        data.train_x, data.train_y = train_x[keep], train_y[keep]
    return data
