"""Bad arguments raise ValueError naming the argument and what it accepts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freezeout import FreezeOut, param_groups
from tests.helpers.models import TinyNet


def sgd(groups):
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"t0": 0.0}, r"t0 must be a number in \(0, 1\]"),
        ({"t0": 1.01}, r"t0 must be a number in \(0, 1\]"),
        ({"t0": -0.5}, r"t0 must be a number in \(0, 1\]"),
        ({"t0": float("nan")}, r"t0 must be a number in \(0, 1\]"),  # NaN passes a plain `v <= 0 or v > 1` check
        ({"t0": "late"}, r"t0 must be a number in \(0, 1\]"),
        ({"total_steps": 0}, "total_steps must be an integer >= 1"),
        ({"total_steps": 2.5}, "total_steps must be an integer >= 1"),
        ({"total_steps": True}, "total_steps must be an integer >= 1"),  # a bool is an int to isinstance
        ({"schedule": "exp"}, "schedule must be one of 'linear', 'cubic', got 'exp'"),
    ],
)
def test_bad_scalar_arguments_name_the_argument_and_its_range(tiny, kwargs, message):
    opt = sgd(param_groups(tiny, tiny.layers))
    args = {"total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        FreezeOut(opt, tiny.layers, **args)


def test_empty_layer_list(tiny):
    with pytest.raises(ValueError, match="layers"):
        param_groups(tiny, [])
    opt = sgd(tiny.parameters())
    with pytest.raises(ValueError, match="layers"):
        FreezeOut(opt, [], total_steps=10)


def test_layer_not_inside_the_model(tiny):
    stranger = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not a submodule"):
        param_groups(tiny, [tiny.stem, stranger])


def test_same_layer_or_parameter_twice(tiny):
    with pytest.raises(ValueError, match="same module"):
        param_groups(tiny, [tiny.stem, tiny.stem])
    nested = [tiny.blocks[0], tiny.blocks[0][2]]  # a block and a conv inside it share parameters
    with pytest.raises(ValueError, match="shares a parameter"):
        param_groups(tiny, nested)


def test_the_same_layer_twice_straight_to_freezeout(tiny):
    # without param_groups in between: FreezeOut checks its own layer list before the optimizer's layout
    opt = sgd(param_groups(tiny, tiny.layers))
    with pytest.raises(ValueError, match=r"layers\[1\] is the same module as layers\[0\]"):
        FreezeOut(opt, [tiny.stem, tiny.stem], total_steps=10)
    relu = nn.ReLU()  # no parameters, so only the module identity check can tell the two apart
    with pytest.raises(ValueError, match=r"layers\[2\] is the same module as layers\[1\]"):
        FreezeOut(opt, [tiny.stem, relu, relu], total_steps=10)


def test_groups_spanning_layers_are_split_per_layer_keeping_their_options(tiny):
    decay = [p for p in tiny.parameters() if p.dim() > 1]
    no_decay = [p for p in tiny.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}])
    sched = FreezeOut(opt, tiny.layers, total_steps=10)
    n = len(tiny.layers)
    owner = {id(p): layer_index for layer_index, m in enumerate(tiny.layers) for p in m.parameters()}
    seen = []
    for group, i in zip(opt.param_groups, sched.group_layers):
        assert {owner.get(id(p), n) for p in group["params"]} == {i}  # one layer, or the rest, per group
        seen += [(id(p), group["weight_decay"]) for p in group["params"]]
    want = [(id(p), 0.1) for p in decay] + [(id(p), 0.0) for p in no_decay]
    assert sorted(seen) == sorted(want)  # every parameter once, with its own group's weight decay
    again = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}])
    FreezeOut(again, tiny.layers, total_steps=10)
    assert [[id(p) for p in g["params"]] for g in again.param_groups] == [
        [id(p) for p in g["params"]] for g in opt.param_groups
    ]  # deterministic: the same split, so a saved optimizer state loads


def test_lr_scale_multiplies_the_schedule(tiny):
    groups = param_groups(tiny, tiny.layers)
    for i, g in enumerate(groups):
        g["lr_scale"] = 0.5**i
    opt = sgd(groups)
    sched = FreezeOut(opt, tiny.layers, total_steps=10, t0=0.5, schedule="linear")
    plain = FreezeOut(sgd(param_groups(tiny, tiny.layers)), tiny.layers, total_steps=10, t0=0.5, schedule="linear")
    for _ in range(3):
        sched.step(), plain.step()
    assert sched.get_last_lr() == pytest.approx([lr * 0.5**i for i, lr in enumerate(plain.get_last_lr())])


def test_param_groups_layout_covers_every_parameter_once():
    model = TinyNet()
    groups = param_groups(model, model.layers, momentum=0.5)
    assert len(groups) == len(model.layers) + 1
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert {id(p) for p in groups[-1]["params"]} == {id(p) for m in (model.head, model.fc) for p in m.parameters()}
    assert all(g["momentum"] == 0.5 for g in groups)  # group options copied into every group
