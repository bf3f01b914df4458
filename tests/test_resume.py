"""Exact resume mid-schedule, in PyTorch's usual order (docs/METHOD.md, "The public contract")."""

from __future__ import annotations

import io

import pytest
import torch

from freezeout import FreezeOut, freeze_times, param_groups
from tests.helpers.models import OPTIMIZERS, TinyNet, train_step

TOTAL = 16


def build(name: str):
    torch.manual_seed(0)
    model = TinyNet()
    opt = OPTIMIZERS[name](param_groups(model, model.layers))
    sched = FreezeOut(opt, model.layers, total_steps=TOTAL, t0=0.5, schedule="cubic", scale_lr=True)
    return model, opt, sched


# Resume points from build()'s freeze times (0.125, 0.244.., 0.422.., 0.670..), not hand-picked step numbers:
# layer i freezes in the sched.step() that makes step / TOTAL >= t_i.
TIMES = freeze_times(4, 0.5, "cubic")
FIRST_FREEZE = next(s for s in range(TOTAL + 1) if s / TOTAL >= TIMES[0])
STOPS = {  # name: (stop, layers frozen in the checkpoint)
    "before_any_froze": (FIRST_FREEZE - 1, 0),  # the first freeze comes after the resume
    "as_the_first_froze": (FIRST_FREEZE, 1),  # the checkpoint's last step froze a layer
    "some_frozen_some_not": (next(s for s in range(TOTAL + 1) if TIMES[2] <= s / TOTAL < TIMES[3]), 3),
}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("when", sorted(STOPS))
def test_resume_is_bit_identical_to_an_uninterrupted_run(name, when):
    stop, frozen_at_stop = STOPS[when]
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
    assert frozen_then == frozen_at_stop
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
