"""Exact resume mid-schedule, in PyTorch's usual order (SPEC §5)."""

from __future__ import annotations

import io

import pytest
import torch

from freezeout import FreezeOut, param_groups
from tests.conftest import TinyNet
from tests.test_freezing import OPTIMIZERS, train_step

TOTAL = 16


def build(name: str):
    torch.manual_seed(0)
    model = TinyNet()
    opt = OPTIMIZERS[name](param_groups(model, model.layers))
    sched = FreezeOut(opt, model.layers, total_steps=TOTAL, t0=0.5, schedule="cubic", scale_lr=True)
    return model, opt, sched


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("stop", [3, 9])  # before any layer froze, and with some frozen
def test_resume_is_bit_identical_to_an_uninterrupted_run(name, stop):
    model, opt, sched = build(name)
    torch.manual_seed(123)  # dropout draws from the global RNG
    for step in range(TOTAL):
        train_step(model, opt, sched, step)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, sched = build(name)
    torch.manual_seed(123)
    for step in range(stop):
        train_step(model, opt, sched, step)
    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "rng": torch.get_rng_state(),
        },
        buf,
    )
    frozen_then = sched.num_frozen
    del model, opt, sched

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt, sched = build(name)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    torch.set_rng_state(ckpt["rng"])
    assert sched.num_frozen == frozen_then
    for step in range(stop, TOTAL):
        train_step(model, opt, sched, step)
    resumed = model.state_dict()
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_state_dict_from_another_configuration_is_refused():
    _, _, sched = build("sgd")
    state = sched.state_dict()
    state["t0"] = 0.9
    with pytest.raises(ValueError, match="t0"):
        sched.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        sched.load_state_dict({"step_count": 3})
