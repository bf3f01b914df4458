"""Small models built the way timm 1.0 builds its CNNs (timm is not installed here), for find_layers and folding.

EfficientNet and MobileNetV3 (``blocks`` of stages, a stage of one block last, the stem and ``bn1`` held by the
root), RegNet (stages of residual blocks made of conv-norm-act units), ResNet (``conv1``/``bn1``/``act1``/``maxpool``
held by the root) and ``BatchNormAct2d``, timm's BatchNorm subclass that runs drop and an activation after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's: a BatchNorm2d subclass whose forward is ``F.batch_norm`` (copied from torch's), then drop, then act."""

    def __init__(self, c: int, act: bool = True, drop: float = 0.0) -> None:
        super().__init__(c)
        self.drop = nn.Dropout(drop) if drop else nn.Identity()
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )
        return self.act(self.drop(x))


class ReusesInput(nn.BatchNorm2d):
    """Looks like BatchNormAct2d but adds its input back after normalising: not a batch norm then a tail."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x)) + x


class CountsCalls(nn.BatchNorm2d):
    """Normalises, then does the work of the tail, then updates a buffer nobody reads: a side effect."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add_(1)
        return F.relu(super().forward(x))


class ConvNormAct(nn.Module):
    """timm's ``ConvNormAct``: conv, then a BatchNormAct2d; it chains the two."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = BatchNormAct2d(cout, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, rd: int) -> None:
        super().__init__()
        self.conv_reduce, self.act1 = nn.Conv2d(c, rd, 1), nn.SiLU(inplace=True)
        self.conv_expand, self.gate = nn.Conv2d(rd, c, 1), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_dw, self.bn1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), BatchNormAct2d(cin)
        self.se = SqueezeExcite(cin, max(1, cin // 4))
        self.conv_pw, self.bn2 = nn.Conv2d(cin, cout, 1, bias=False), BatchNormAct2d(cout, act=False)
        self.has_skip = cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(self.bn1(self.conv_dw(x)))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, ratio: int = 4) -> None:
        super().__init__()
        mid = cin * ratio
        self.conv_pw, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), BatchNormAct2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid)
        self.se = SqueezeExcite(mid, max(1, cin // 4))
        self.conv_pwl, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), BatchNormAct2d(cout, act=False)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x)))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_skip else y


class EfficientNet(nn.Module):
    """timm's EfficientNet/MobileNetV3 layout: root-held stem, ``blocks`` of stages, ``conv_head``/``bn2`` head.

    ``last="ir"``: the last stage is one InvertedResidual (EfficientNet's ``blocks.6``); ``"cna"``: one ConvNormAct
    (MobileNetV3's ``blocks.5``), followed by a ``conv_head`` without BatchNorm."""

    def __init__(self, last: str = "ir", width: int = 4, classes: int = 5) -> None:
        super().__init__()
        w = width
        self.conv_stem, self.bn1 = nn.Conv2d(3, w, 3, 2, 1, bias=False), BatchNormAct2d(w)
        stages = [nn.Sequential(DepthwiseSeparableConv(w, w))]
        stages += [nn.Sequential(InvertedResidual(w, 2 * w, 2), InvertedResidual(2 * w, 2 * w))]
        stages += [nn.Sequential(InvertedResidual(2 * w, 3 * w, 2), *(InvertedResidual(3 * w, 3 * w) for _ in "ab"))]
        if last == "ir":
            stages.append(nn.Sequential(InvertedResidual(3 * w, 4 * w)))
        else:
            stages.append(nn.Sequential(ConvNormAct(3 * w, 4 * w)))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(4 * w, 8 * w, 1, bias=last != "ir")
        self.bn2 = BatchNormAct2d(8 * w) if last == "ir" else nn.Identity()
        self.classifier = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        x = self.bn2(self.conv_head(x))
        return self.classifier(x.mean((2, 3)))


class RegBottleneck(nn.Module):
    """timm's RegNet ``Bottleneck``: three ConvNormAct units, an SE, a shortcut (ConvNormAct or identity)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout)
        self.conv2 = ConvNormAct(cout, cout, 3, stride, groups=max(1, cout // 4))
        self.se = SqueezeExcite(cout, max(1, cin // 4))
        self.conv3 = ConvNormAct(cout, cout, act=False)
        self.downsample = ConvNormAct(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else nn.Identity()
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(x + self.downsample(shortcut))


class RegStage(nn.Module):
    """Blocks held as attributes ``b1``, ``b2``, ... and chained by a loop over the children."""

    def __init__(self, depth: int, cin: int, cout: int) -> None:
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", RegBottleneck(cin if i == 0 else cout, cout, 2 if i == 0 else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


class RegNet(nn.Module):
    def __init__(self, depths: tuple[int, ...] = (1, 1, 2, 3), width: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, width, 3, 2)
        cin = width
        for i, d in enumerate(depths):
            self.add_module(f"s{i + 1}", RegStage(d, cin, width * (i + 1)))
            cin = width * (i + 1)
        self.head = nn.Linear(cin, classes)
        self.num_stages = len(depths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"s{i + 1}")(x)
        return self.head(x.mean((2, 3)))


class Bottleneck(nn.Module):
    """timm's ResNet block: leaf modules, a residual sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(x + shortcut)


class TimmResNet(nn.Module):
    """timm's ResNet: ``conv1``, ``bn1``, ``act1``, ``maxpool`` held by the root; a ``forward_features``."""

    def __init__(self, width: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
        self.act1, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(width, width), Bottleneck(width, width))
        self.layer2 = nn.Sequential(Bottleneck(width, 2 * width, 2), Bottleneck(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


class StemReused(TimmResNet):
    """The stem's conv output also feeds a side branch: folding ``bn1`` into ``conv1`` would change that branch."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        x = self.maxpool(self.act1(self.bn1(y))) + F.max_pool2d(y, 3, 2, 1)
        return self.layer2(self.layer1(x))
