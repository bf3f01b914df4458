"""The CIFAR ResNet of He et al. (2015, section 4.2): depth 6n + 2, basic blocks in Conv -> BN -> ReLU order.

A 3 x 3 stem conv to ``w`` channels, then three stages of ``n`` basic blocks with ``w``, ``2w``, ``4w`` channels
(the first block of stages 2 and 3 halves the resolution), global average pooling and a linear classifier:
``w = 16`` gives ResNet-20/32/56/110. Shortcuts are the paper's option A for CIFAR: identity, and where the
shape changes, the input subsampled by 2 and zero-padded with new channels (no parameters). The freezable
layers are the stem and every residual block, input side first; the classifier is the head.

``dims=1`` is the same network for 1-D signals (``Conv1d``, ``BatchNorm1d``, stride 2 along the signal): the
model of the MNIST-1D task, whose signals travel through the data pipeline as 1 x L images (N x C x 1 x L), read
here as N x C x L.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...checks import check_int

__all__ = ["ResNet", "check_resnet_depth", "resnet", "resnet1d"]

MAX_DEPTH = 1202  # the deepest network of the paper's CIFAR study
_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def check_resnet_depth(depth: int) -> int:
    """Blocks per stage of a CIFAR ResNet of ``depth = 6n + 2`` (20 -> 3, 56 -> 9)."""
    depth = check_int("depth", depth, 8, MAX_DEPTH, what="6n + 2 for resnet: 20, 32, 56, 110, ...")
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 for resnet (20, 32, 56, 110, ...), got {depth!r}")
    return (depth - 2) // 6


class BasicBlock(nn.Module):
    """Two 3 x 3 Conv -> BN units with a ReLU between them and after the residual sum."""

    def __init__(self, cin: int, cout: int, stride: int, dims: int = 2) -> None:
        super().__init__()
        conv, bn = _CONV[dims], _NORM[dims]
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn(cout)
        self.stride, self.extra, self.dims = stride, cout - cin, dims

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[(slice(None), slice(None), *[slice(None, None, self.stride)] * self.dims)]
        if self.extra:
            x = F.pad(x, (0, 0) * self.dims + (0, self.extra))  # option A: new channels are zeros
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet; ``layers`` lists the freezable layers (stem, then each block) in forward order."""

    def __init__(
        self, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3, dims: int = 2
    ) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        per_stage = check_resnet_depth(depth)
        width = check_int("width", width, 1)
        num_classes = check_int("num_classes", num_classes, 1)
        in_channels = check_int("in_channels", in_channels, 1)
        self.depth, self.width, self.dims = depth, width, dims
        conv, bn = _CONV[dims], _NORM[dims]
        self.stem = nn.Sequential(conv(in_channels, width, 3, 1, 1, bias=False), bn(width), nn.ReLU())
        blocks, cin = [], width
        for stage in range(3):
            cout = width * 2**stage
            for b in range(per_stage):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1, dims))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, conv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, bn):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def layers(self) -> list[nn.Module]:
        return [self.stem, *self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 1 and x.dim() == 4:  # a signal as the data pipeline carries it: N x C x 1 x L
            x = x.flatten(2)
        x = self.blocks(self.stem(x))
        pooled = F.adaptive_avg_pool1d(x, 1) if self.dims == 1 else F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(pooled, 1))


def resnet(depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels)


def resnet1d(depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 1) -> ResNet:
    """The 1-D ResNet of the MNIST-1D task (``ResNet`` with ``dims=1``)."""
    return ResNet(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels, dims=1)
