"""Optimizer layouts of real training code: several groups per layer in any order, decay / no-decay, warmup,
and FreezeOut saying it is the LR schedule when something else changes the LRs."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from freezeout import FreezeOut, param_groups
from freezeout.controller import ScheduleWarning
from freezeout.layers import as_layers
from tests.helpers.models import TinyNet, batch

OPTIMIZERS = {
    "sgd": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "adamw": lambda g: torch.optim.AdamW(g, lr=1e-2),
}


def paper_lr(step: int, total: int, t_i: float, base: float, scaled: bool, warmup: int = 0) -> float:
    """The schedule written out from docs/METHOD.md, independently of freezeout.schedule."""
    t = min(step / total, 1.0)
    lr = 0.0 if t >= t_i else 0.5 * (base / t_i if scaled else base) * (1 + math.cos(math.pi * t / t_i))
    return lr * (1.0 if warmup == 0 else min(1.0, step / warmup))


def linear_times(n: int, t0: float) -> list[float]:
    return [t0 + (1 - t0) * i / n for i in range(n)]


def shuffled_decay_groups(model: TinyNet, seed: int = 0) -> list[dict]:
    """Decay / no-decay groups per layer with their own base LRs, in a random order."""
    groups = param_groups(model, model.layers, weight_decay=1e-2)
    for g in groups:
        g["lr"] = 0.1 if g["weight_decay"] else 0.05
    random.Random(seed).shuffle(groups)
    return groups


def owner_of(model: TinyNet, group: dict) -> int:
    layers = as_layers(model.layers)
    ids = {id(p) for p in group["params"]}
    return next((layer.index for layer in layers if ids & {id(p) for p in layer.parameters()}), len(layers))


def step(model, opt, sched, s):
    model.train()
    x, y = batch(s)
    opt.zero_grad(set_to_none=False)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_shuffled_decay_groups_each_follow_their_layers_schedule(name):
    torch.manual_seed(0)
    model = TinyNet()
    opt = OPTIMIZERS[name](shuffled_decay_groups(model))
    total, n = 16, len(model.layers)
    sched = FreezeOut(opt, model.layers, total, t0=0.5, schedule="linear", scale_lr=True)
    owners = [owner_of(model, g) for g in opt.param_groups]
    assert len(opt.param_groups) > n + 1 and sorted(set(owners)) == list(range(n + 1))
    times = [*linear_times(n, 0.5), 1.0]
    frozen_at: dict[int, dict[str, torch.Tensor]] = {}
    for s in range(total + 1):
        for g, i in zip(opt.param_groups, owners):
            base = 0.1 if g["weight_decay"] else 0.05
            assert g["lr"] == pytest.approx(paper_lr(s, total, times[i], base, scaled=i < n)), (s, i)
        for i in range(sched.num_frozen):
            state = {k: v.clone() for k, v in model.layers[i].state_dict().items()}
            assert all(torch.equal(v, frozen_at.setdefault(i, state)[k]) for k, v in state.items()), f"{i} moved"
            assert all(p.grad is None and p not in opt.state for p in model.layers[i].parameters())
        if s < total:
            step(model, opt, sched, s)
    assert sched.num_frozen == n and sorted(frozen_at) == list(range(n))


def test_the_decay_split_by_the_default_rule_and_by_patterns():
    model = TinyNet()
    groups = param_groups(model, model.layers, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    # by hand: conv and linear weights decay; BatchNorm weights and biases, and every bias, do not
    assert decayed == {"stem.weight", *(f"blocks.{i}.2.weight" for i in range(3)), "fc.weight"}
    assert plain == set(names.values()) - decayed
    assert all(len({owner_of(model, g)}) == 1 for g in groups)  # no group mixes layers
    by_pattern = param_groups(model, model.layers, weight_decay=0.05, no_decay=["fc.*", "*.bias"])
    plain = {names[id(p)] for g in by_pattern if g["weight_decay"] == 0.0 for p in g["params"]}
    assert plain == {n for n in names.values() if n.startswith("fc.") or n.endswith(".bias")}
    with pytest.raises(ValueError, match="no_decay needs weight_decay"):
        param_groups(model, model.layers, no_decay=["fc.*"])


def test_warmup_multiplies_every_lr_and_leaves_freeze_times_alone():
    torch.manual_seed(0)
    model, ref = TinyNet(), TinyNet()
    total, warm, n = 12, 5, len(model.layers)
    opt = torch.optim.SGD(param_groups(model, model.layers), lr=0.1)
    ref_opt = torch.optim.SGD(param_groups(ref, ref.layers), lr=0.1)
    sched = FreezeOut(opt, model.layers, np.int64(total), t0=0.5, schedule="linear", warmup_steps=np.int32(warm))
    plain = FreezeOut(ref_opt, ref.layers, total, t0=0.5, schedule="linear")
    times = [*linear_times(n, 0.5), 1.0]
    for s in range(total + 1):
        want = [paper_lr(s, total, t, 0.1, i < n, warmup=warm) for i, t in enumerate(times)]
        assert sched.get_last_lr() == pytest.approx(want)
        assert sched.get_last_lr()[0] == 0.0 if s == 0 else True  # step 0 of a warmup: LR 0, as HF's schedules
        assert sched.num_frozen == plain.num_frozen
        if s < total:
            step(model, opt, sched, s)
            step(ref, ref_opt, plain, s)
    assert sched.last_epoch == total and sched.state_dict()["warmup_steps"] == warm


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("stop", [3, 9])  # during the warmup, and after layers froze
def test_resume_with_several_groups_per_layer_and_warmup(name, stop):
    total = 14

    def build():
        torch.manual_seed(0)
        model = TinyNet()
        opt = OPTIMIZERS[name](shuffled_decay_groups(model))
        return model, opt, FreezeOut(opt, model.layers, total, t0=0.4, warmup_steps=4)

    model, opt, sched = build()
    for s in range(total):
        step(model, opt, sched, s)
    model2, opt2, sched2 = build()
    for s in range(stop):
        step(model2, opt2, sched2, s)
    buf = io.BytesIO()
    state = {"m": model2.state_dict(), "o": opt2.state_dict(), "s": sched2.state_dict(), "rng": torch.get_rng_state()}
    torch.save(state, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model3, opt3, sched3 = build()
    model3.load_state_dict(saved["m"])
    opt3.load_state_dict(saved["o"])
    sched3.load_state_dict(saved["s"])
    torch.set_rng_state(saved["rng"])  # dropout in the layers still training
    for s in range(stop, total):
        step(model3, opt3, sched3, s)
    for (k, a), b in zip(model.state_dict().items(), model3.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_manual_write_is_warned_once():
    # (a torch scheduler beside FreezeOut is refused: tests/test_scheduler_surface.py)
    model = TinyNet()
    opt = torch.optim.SGD(param_groups(model, model.layers), lr=0.1)
    sched = FreezeOut(opt, model.layers, 20)
    step(model, opt, sched, 0)
    opt.param_groups[1]["lr"] = 0.5
    with pytest.warns(ScheduleWarning, match="changed outside FreezeOut .* another LR scheduler or a manual write"):
        step(model, opt, sched, 1)
    want = sched.get_last_lr()  # FreezeOut set them again: the schedule is its own
    opt.param_groups[2]["lr"] = 1.0
    step(model, opt, sched, 2)  # warned once only (filterwarnings = error would fail this line)
    assert sched.get_last_lr() != want and sched.get_last_lr()[2] != 1.0


def test_sequential_lr_gets_a_clear_error():
    model = TinyNet()
    opt = torch.optim.SGD(param_groups(model, model.layers), lr=0.1)
    sched = FreezeOut(opt, model.layers, 20)
    with pytest.raises(ValueError, match=r"cannot run inside SequentialLR .* warmup_steps"):
        sched.step(0)  # what SequentialLR calls at its milestone


def test_a_group_added_later_is_adopted_with_a_warning():
    model = TinyNet()
    groups = param_groups(model, model.layers)
    fc_bias = groups[-1]["params"].pop()  # added later, with its own LR
    bn_bias = groups[1]["params"].pop(1)  # layers[1]'s: added later mixed with the rest
    opt = torch.optim.SGD(groups, lr=0.1)
    total, n = 10, len(model.layers)
    sched = FreezeOut(opt, model.layers, total, t0=0.5, schedule="linear")
    opt.add_param_group({"params": [fc_bias], "lr": 0.3})
    with pytest.warns(ScheduleWarning, match="group 5 was added after FreezeOut was built: .* the rest"):
        step(model, opt, sched, 0)
    assert opt.param_groups[-1]["lr"] == pytest.approx(paper_lr(1, total, 1.0, 0.3, scaled=False))
    assert sched.group_layers == [*range(n), n, n]
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1)), bn_bias]})  # added later: not split
    with pytest.raises(ValueError, match=r"group 6 holds parameters of layers\[1\] and the rest"):
        step(model, opt, sched, 1)


@pytest.mark.parametrize("total", [np.int64(10), np.uint16(10), torch.tensor(10), 10])
def test_any_integer_type(total):
    model = TinyNet()
    sched = FreezeOut(torch.optim.SGD(param_groups(model, model.layers), lr=0.1), model.layers, total)
    assert sched.total_steps == 10 and type(sched.total_steps) is int


@pytest.mark.parametrize("bad", [10.0, True, "10", np.float64(10), 0, -3])
def test_non_integers_are_refused_naming_the_argument(bad):
    model = TinyNet()
    opt = torch.optim.SGD(param_groups(model, model.layers), lr=0.1)
    with pytest.raises(ValueError, match=r"total_steps must be an integer >= 1"):
        FreezeOut(opt, model.layers, bad)
    with pytest.raises(ValueError, match=r"warmup_steps must be an integer >= 0"):
        FreezeOut(opt, model.layers, 10, warmup_steps=-1 if bad == 0 else bad)


def test_the_cli_and_the_trainer_pass_warmup_steps_through():
    from freezeout.cli import build_parser
    from freezeout.cli.common import config_from_args
    from freezeout.experiment.data import load_dataset
    from freezeout.experiment.engine import Run

    args = build_parser().parse_args(["train", "--depth", "10", "--growth", "2", "--warmup-steps", "7", "--out", "x"])
    config = config_from_args(args)
    assert config.warmup_steps == 7
    run = Run(config, load_dataset("digits"), torch.device("cpu"))
    assert run.sched.warmup_steps == 7 and run.sched.get_last_lr() == [0.0] * len(run.opt.param_groups)
