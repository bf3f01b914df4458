"""DenseNet-BC as the FreezeOut paper trains it (docs/METHOD.md, "The experiment"): bottleneck, compression 0.5,
ReLU -> BN -> Conv."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...checks import check_int

__all__ = ["DenseNetBC", "check_depth", "densenet_bc"]


MAX_DEPTH = 1000  # far beyond the paper's 186; a typo must not build a model that cannot fit anywhere


def check_depth(depth: int) -> int:
    """Dense layers per block for a DenseNet-BC of ``depth = 6n + 4`` (76 -> 12, 186 -> 30)."""
    depth = check_int("depth", depth, 10, MAX_DEPTH, what="6n + 4 for densenet-bc: 10, 40, 76, 186, ...")
    if (depth - 4) % 6:
        raise ValueError(f"depth must be 6n + 4 for densenet-bc (10, 40, 76, 186, ...), got {depth!r}")
    return (depth - 4) // 6


def _unit(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    # The paper swaps the usual BN -> ReLU order: every unit is ReLU -> BatchNorm -> Conv.
    return [nn.ReLU(), nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)]


class DenseLayer(nn.Module):
    """Bottleneck dense layer: 1x1 conv to 4k channels, 3x3 conv to k, output concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_unit(cin, 4 * growth, 1), *_unit(4 * growth, growth, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class Transition(nn.Sequential):
    """Compression 0.5: a 1x1 conv halves the channels, then 2x2 average pooling halves the resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(*_unit(cin, cout, 1), nn.AvgPool2d(2))


class DenseNetBC(nn.Module):
    """DenseNet-BC with three dense blocks. ``layers`` lists the freezable layers in forward order:
    the stem conv, each dense layer, each transition; the head (final ReLU/BN, pooling, classifier)
    is the rest and trains to the end."""

    def __init__(self, depth: int = 76, growth: int = 12, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        per_block = check_depth(depth)
        growth = check_int("growth", growth, 1)
        num_classes = check_int("num_classes", num_classes, 1)
        in_channels = check_int("in_channels", in_channels, 1)
        self.depth, self.growth = depth, growth
        channels = 2 * growth
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for b in range(3):
            block = nn.Sequential()
            for _ in range(per_block):
                block.append(DenseLayer(channels, growth))
                channels += growth
            self.blocks.append(block)
            if b < 2:
                out = channels // 2
                self.transitions.append(Transition(channels, out))
                channels = out
        self.head = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(channels), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def layers(self) -> list[nn.Module]:
        """Freezable layers in the order data meets them."""
        out: list[nn.Module] = [self.stem]
        for b, block in enumerate(self.blocks):
            out.extend(block)
            if b < len(self.transitions):
                out.append(self.transitions[b])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b, block in enumerate(self.blocks):
            x = block(x)
            if b < len(self.transitions):
                x = self.transitions[b](x)
        return self.fc(self.head(x))


def densenet_bc(depth: int = 76, growth: int = 12, num_classes: int = 10, in_channels: int = 3) -> DenseNetBC:
    return DenseNetBC(depth=depth, growth=growth, num_classes=num_classes, in_channels=in_channels)
