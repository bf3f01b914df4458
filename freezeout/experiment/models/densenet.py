"""DenseNet-BC as the FreezeOut paper trains it (docs/METHOD.md, "The experiment"): bottleneck, compression 0.5,
ReLU -> BN -> Conv.

Frozen fast path: while a fused frozen layer runs a training forward (``effects.folds_running``), dense layers
and transitions skip work the plain order repeats, exactly. Every consumer of a block's features starts with a
ReLU (dense layers, transitions, the head), and ``relu(cat(a, b)) = cat(relu(a), relu(b))`` with ReLU idempotent,
so a frozen layer hands on *rectified* features: each one rectifies only its own new channels instead of its whole
input again, and every consumer still computes the same values (bit for bit: ``relu(relu(x)) == relu(x)``). A
transition pools before its 1 x 1 conv: 2 x 2 average pooling commutes with per-pixel affine maps (the BatchNorm,
the 1 x 1 conv), so the conv runs on a quarter of the pixels. The trainable path is the plain one, unchanged.

Frozen dense layers of a block also share one channels-last buffer with room for the block's every channel, in
place of a concatenation per layer, which copies all features so far each time (docs/BENCHMARKS.md, "One
buffer per dense block"): each layer writes only its new channels, hands on a channel prefix of the buffer (a
view), and runs its folded 1 x 1 bottleneck as one matrix product straight on that view (every pixel's channels a
row, the buffer's width the row stride), the same product the 1 x 1 conv computes.

What a frozen layer hands on (its rectified output, and the block buffer that output is a prefix of) travels in
the ``FrozenPath`` each forward of ``DenseNetBC`` makes and lends its dense layers and transitions for the length
of that forward (``_lend``), never on the tensors and never as a call argument (so each layer is still called with
its input alone, as anything that wraps or watches a layer's call expects: hooks, ``PrefixCache``); a consumer
trusts it only for the very tensor it was handed. A layer called on its own, outside the model's forward, takes
the plain path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...checks import check_int
from ...freezing.folding import active_fold, folds_running

__all__ = ["DenseBlock", "DenseLayer", "DenseNetBC", "FrozenPath", "Transition", "check_depth", "densenet_bc"]


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


def _fast(layer: nn.Module, x: torch.Tensor) -> bool:
    # frozen and fused, in a training forward; eager only (the hand-on below is Python state a compiled graph would
    # not carry), and never on an input that requires grad (a trainable stem left out of the layers): the block
    # buffer is written in place
    return not torch.compiler.is_compiling() and folds_running(layer) and not x.requires_grad


def _lent(module: nn.Module) -> FrozenPath | None:
    """The ``FrozenPath`` the running forward of ``DenseNetBC`` lent ``module`` (``DenseNetBC._lend``), if any."""
    return module.__dict__.get("_frozen_path")


class FrozenPath:
    """What the frozen fast path hands from one layer to the next within one forward of ``DenseNetBC``: the
    tensor the last frozen layer or transition handed on, rectified (every value >= 0), and the block buffer it is
    a channel prefix of (``None``: a concatenation, or a transition's output). A consumer reads it only for that
    very tensor: anything else (an input, a tensor a hook replaced) takes the plain path."""

    __slots__ = ("buffer", "out")

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None
        self.buffer: torch.Tensor | None = None

    def rectified(self, x: torch.Tensor) -> bool:
        return x is self.out

    def relu_once(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rectified(x) else F.relu(x)

    def buffer_of(self, x: torch.Tensor) -> torch.Tensor | None:
        """The block buffer ``x`` is a channel prefix of, if a frozen dense layer handed it on."""
        return self.buffer if self.rectified(x) else None

    def hand_on(self, out: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
        self.out, self.buffer = out, buffer
        return out


def _block_buffer(r: torch.Tensor, buf: torch.Tensor | None, capacity: int) -> torch.Tensor:
    """``buf``, the channels-last buffer whose first channels ``r`` is (a frozen dense layer's output), or a new one
    with ``r`` copied in: the one copy of the block's input that every later frozen layer builds on."""
    if buf is not None and buf.shape[1] == capacity:
        return buf
    n, c, h, w = r.shape
    buf = torch.empty((n, capacity, h, w), dtype=r.dtype, device=r.device, memory_format=torch.channels_last)
    buf[:, :c].copy_(r)
    return buf


def _pointwise(buf: torch.Tensor, c: int, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1 x 1 conv of the buffer's first ``c`` channels, as a matrix product on a view of it (no copy)."""
    n, _, h, w = buf.shape
    rows = buf.permute(0, 2, 3, 1)[..., :c].reshape(n * h * w, c)  # row stride: the buffer's width
    weight = weight.reshape(weight.shape[0], c).t()
    out = rows @ weight if bias is None else torch.addmm(bias, rows, weight)
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)  # channels-last, as the conv's output


def _chain(modules: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for m in modules:
        x = m(x)
    return x


class DenseLayer(nn.Module):
    """Bottleneck dense layer: 1x1 conv to 4k channels, 3x3 conv to k, output concatenated to the input."""

    def __init__(self, cin: int, growth: int, capacity: int | None = None) -> None:
        super().__init__()
        self.body = nn.Sequential(*_unit(cin, 4 * growth, 1), *_unit(4 * growth, growth, 3))
        # channels at the end of the block (DenseNetBC sets it): the frozen path's shared buffer; None: concatenate
        self.capacity = capacity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = _lent(self)
        if _fast(self, x) and path is not None:  # frozen, inside the model's forward (see the module doc)
            return self._frozen(path.relu_once(x), path)
        return torch.cat([x, self.body(x)], dim=1)

    def _frozen(self, r: torch.Tensor, path: FrozenPath) -> torch.Tensor:
        """The layer on rectified features ``r``, its own new channels rectified: what it hands on."""
        _, bn, conv, *unit3x3 = self.body  # ReLU -> BN -> 1x1 conv, then ReLU -> BN -> 3x3 conv
        fold, capacity = active_fold(conv), getattr(self, "capacity", None)  # a model pickled before it: None
        buf = path.buffer_of(r)
        buffered = buf is not None or r.is_contiguous(memory_format=torch.channels_last)
        if fold is None or fold[0] is not bn or capacity is None or r.dim() != 4 or not buffered:
            new = _chain(unit3x3, conv(bn(r)))  # the body without its first ReLU; BatchNorms folded by effects
            return path.hand_on(torch.cat([r, new.relu_()], dim=1))
        c = r.shape[1]
        buf = _block_buffer(r, buf, capacity)
        new = _chain(unit3x3, _pointwise(buf, c, fold[1], fold[2]))
        end = c + new.shape[1]
        torch.clamp_min(new, 0, out=buf[:, c:end])  # the ReLU every consumer applies, written in place
        return path.hand_on(buf[:, :end], buf)


class DenseBlock(nn.Sequential):
    """A block's dense layers, run in order; in a forward of ``DenseNetBC`` they share its ``FrozenPath``."""


class Transition(nn.Sequential):
    """Compression 0.5: a 1x1 conv halves the channels, then 2x2 average pooling halves the resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(*_unit(cin, cout, 1), nn.AvgPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = _lent(self)
        if _fast(self, x) and path is not None:  # frozen (see the module doc): pool first, rectified out
            _, bn, conv, pool = self
            return path.hand_on(F.relu(conv(bn(pool(path.relu_once(x))))))
        return super().forward(x)


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
            block = DenseBlock()
            end = channels + per_block * growth
            for _ in range(per_block):
                block.append(DenseLayer(channels, growth, end))
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
        lent = self._lend(FrozenPath())  # this forward's alone: what its frozen layers hand on lives no longer than it
        try:
            x = self.stem(x)
            for b, block in enumerate(self.blocks):
                x = block(x)
                if b < len(self.transitions):
                    x = self.transitions[b](x)
        finally:
            self._lend(None, lent)
        return self.fc(self.head(x))

    def _lend(self, path: FrozenPath | None, modules: list[nn.Module] | None = None) -> list[nn.Module]:
        modules = [m for m in self.layers if isinstance(m, (DenseLayer, Transition))] if modules is None else modules
        for m in modules:
            m.__dict__["_frozen_path"] = path  # a plain attribute: not a parameter, buffer or submodule
        return modules


def densenet_bc(depth: int = 76, growth: int = 12, num_classes: int = 10, in_channels: int = 3) -> DenseNetBC:
    return DenseNetBC(depth=depth, growth=growth, num_classes=num_classes, in_channels=in_channels)
