"""One list of normalisation layers behind both rules that treat them apart: no weight decay, and a model's head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freezeout import find_layers
from freezeout.groups import default_no_decay
from freezeout.layers import is_norm


class ScaleNorm(nn.Module):
    """A library's own norm (no torch base class): recognised by its name."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class Scale(ScaleNorm):
    """The same computation under a name that says nothing: not a norm."""


NORMS = {
    "BatchNorm1d": lambda: nn.BatchNorm1d(4),
    "SyncBatchNorm": lambda: nn.SyncBatchNorm(4),
    "InstanceNorm1d": lambda: nn.InstanceNorm1d(4, affine=True),
    "LayerNorm": lambda: nn.LayerNorm(4),
    "GroupNorm": lambda: nn.GroupNorm(2, 4),
    "RMSNorm": lambda: nn.RMSNorm(4),
    "ScaleNorm": lambda: ScaleNorm(4),
}


@pytest.mark.parametrize("make", NORMS.values(), ids=NORMS.keys())
def test_a_norm_goes_to_the_head_and_keeps_no_weight_decay(make):
    norm = make()
    assert is_norm(norm)
    matrix = nn.Parameter(torch.ones(4, 4))  # a 2-d parameter: only the module's kind exempts it from decay
    assert default_no_decay("weight", matrix, norm) and not default_no_decay("weight", matrix, nn.Linear(4, 4))
    if isinstance(norm, nn.InstanceNorm1d):
        return  # it needs a (N, C, L) input, which the Linear layers around it do not give
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), norm, nn.Linear(4, 2))
    assert find_layers(model, torch.randn(2, 4)) == [model[0], model[1]]  # the norm before the classifier: head


def test_a_module_not_named_or_made_a_norm_is_a_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), Scale(4), nn.Linear(4, 2))
    assert not is_norm(model[2]) and not default_no_decay("g", nn.Parameter(torch.ones(4, 4)), model[2])
    assert find_layers(model, torch.randn(2, 4)) == [model[0], model[1], model[2]]
