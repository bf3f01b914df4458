"""A model's ``layers`` must be its forward path: each runs once, in order, one after another, feeding the output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freezeout.analysis.flops import check_forward_path, layer_flops


class Chain(nn.Module):
    def __init__(self, twice: bool = False, branch: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.gap = nn.BatchNorm2d(4)
        self.c = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.side = nn.Conv2d(4, 2, 1)
        self.unused = nn.Linear(2, 2)
        self.fc = nn.Linear(4, 2)
        self.twice, self.branch = twice, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(self.a(x))
        if self.twice:
            x = self.b(x)
        x = self.c(self.gap(x))
        if self.branch:
            self.side(x)  # computed, then thrown away
        return self.fc(x.mean(dim=(2, 3)))


X = torch.randn(2, 3, 5, 5)


def test_accepts_the_forward_path():
    m = Chain()
    check_forward_path(m, [m.a, m.b, m.gap, m.c], X)
    check_forward_path(m, [m.a, m.b], X)  # a prefix is fine: the rest runs after it


@pytest.mark.parametrize(
    ("make_layers", "kwargs", "match"),
    [
        (lambda m: [m.b, m.a], {}, r"layers\[1\] \(Conv2d\) ran before layers\[0\]"),
        (lambda m: [m.a, m.b, m.unused], {}, r"layers\[2\] \(Linear\) never ran in the forward pass"),
        (lambda m: [m.a, m.b], {"twice": True}, r"layers\[1\] \(Sequential\) ran 2 times"),
        (lambda m: [m.a, m.b, m.c], {}, r"module 'gap' has parameters, is not in layers and runs between layers\[1\]"),
        (lambda m: [m.a, m.b, m.b[0]], {}, r"layers\[2\] \(ReLU\) runs inside another listed layer"),
        (
            lambda m: [m.a, m.b, m.gap, m.c, m.side],
            {"branch": True},
            r"output of layers\[4\] \(Conv2d\) does not reach",
        ),
    ],
)
def test_rejects_layers_off_the_forward_path(make_layers, kwargs, match):
    m = Chain(**kwargs)
    with pytest.raises(ValueError, match=match):
        check_forward_path(m, make_layers(m), X)
    with pytest.raises(ValueError, match=match):
        layer_flops(m, make_layers(m), X)


def test_frozen_model_checks_without_unlocking():
    import freezeout

    m = Chain()
    layers = [m.a, m.b, m.gap, m.c]
    opt = torch.optim.SGD(freezeout.param_groups(m, layers), lr=0.1)
    freezeout.freeze_layer(layers[0], opt.param_groups[0], opt)
    m.train()
    check_forward_path(m, layers, X)
    assert m.b.training and freezeout.is_frozen(m.a) and not freezeout.is_frozen(m.b)
