"""One definition of FreezeOut's options: the controller, the Lightning callback and ``add_freezeout`` take the same
names, defaults and positions, and reject the same bad values."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import freezeout
from freezeout import FreezeOut, FreezeOutOptions
from tests.helpers.models import TinyNet

FIELDS = dataclasses.fields(FreezeOutOptions)
CHANGED = {"t0": 0.5, "schedule": "linear", "scale_lr": False, "warmup_steps": 3, "strict": True, "fuse": True}
BAD = [("t0", 0.0), ("t0", 1.5), ("schedule", "cosine"), ("warmup_steps", -1), ("warmup_steps", 2.5), ("fuse", 1)]


def test_the_controllers_signature_is_the_options():
    params = list(inspect.signature(FreezeOut).parameters.values())[3:]  # after optimizer, layers, total_steps
    assert [p.name for p in params] == [f.name for f in FIELDS]
    assert [p.default for p in params] == [f.default for f in FIELDS]
    assert [p.kind == p.KEYWORD_ONLY for p in params] == [f.kw_only for f in FIELDS]
    assert set(CHANGED) == {f.name for f in FIELDS}  # this test's table covers every option
    assert all(CHANGED[f.name] != f.default for f in FIELDS)


def controller(**options):
    model = TinyNet()
    return FreezeOut(torch.optim.SGD(freezeout.param_groups(model, model.layers), lr=0.1), model.layers, 10, **options)


def test_the_controller_holds_what_it_was_given_and_from_options_builds_the_same():
    sched = controller(**CHANGED)
    assert sched.options == FreezeOutOptions(**CHANGED)
    assert (sched.t0, sched.schedule, sched.warmup_steps, sched.fuse) == (0.5, "linear", 3, True)
    model = TinyNet()
    opt = torch.optim.SGD(freezeout.param_groups(model, model.layers), lr=0.1)
    again = FreezeOut.from_options(opt, model.layers, 10, FreezeOutOptions(**CHANGED))
    assert again.options == sched.options and again.times == sched.times


@pytest.mark.parametrize(("name", "value"), BAD)
def test_a_bad_option_names_itself_everywhere(name, value):
    with pytest.raises(ValueError, match=name):
        FreezeOutOptions(**{name: value})
    with pytest.raises(ValueError, match=name):
        controller(**{name: value})


def test_options_replace_validates_and_positions_match_the_controllers():
    o = FreezeOutOptions(0.5, "linear", False, fuse=False)
    assert o.replace(t0=0.7) == FreezeOutOptions(0.7, "linear", False, fuse=False)
    with pytest.raises(ValueError, match="t0"):
        o.replace(t0=2)
    with pytest.raises(TypeError):
        FreezeOutOptions(0.5, "linear", False, 3)  # warmup_steps is keyword-only, as in FreezeOut


def test_the_lightning_callback_takes_every_option():
    pytest.importorskip("lightning.pytorch")
    from freezeout.integrations.lightning import FreezeOutCallback

    assert FreezeOutCallback(None, 0.5, "linear", scale_lr=False).options == FreezeOutOptions(0.5, "linear", False)
    callback = FreezeOutCallback(**CHANGED)
    assert callback.options == FreezeOutOptions(**CHANGED)
    assert FreezeOutCallback(options=callback.options).options == callback.options
    for name, value in BAD:
        with pytest.raises(ValueError, match=name):
            FreezeOutCallback(**{name: value})
    with pytest.raises(ValueError, match=r"unknown option.*t_0.*FreezeOut's options are t0"):
        FreezeOutCallback(t_0=0.5)
    with pytest.raises(ValueError, match="both by position and by name"):
        FreezeOutCallback(None, 0.5, t0=0.6)
    with pytest.raises(ValueError, match="not both"):
        FreezeOutCallback(options=callback.options, fuse=True)


def test_add_freezeout_takes_every_option_and_gives_the_warmup_once(tmp_path):
    transformers = pytest.importorskip("transformers")
    from freezeout.integrations.transformers import add_freezeout
    from tests.helpers.hf import tiny_bert

    def trainer(**args):
        arguments = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **args)
        return transformers.Trainer(model=tiny_bert("classify"), args=arguments)

    assert add_freezeout(trainer(), None, 0.5, "linear", **{k: CHANGED[k] for k in ("strict", "fuse")}).options == (
        FreezeOutOptions(0.5, "linear", strict=True, fuse=True)
    )
    assert add_freezeout(trainer(), options=FreezeOutOptions(**CHANGED)).options == FreezeOutOptions(**CHANGED)
    for name, value in BAD:
        with pytest.raises(ValueError, match=name):
            add_freezeout(trainer(), **{name: value})
    with pytest.raises(ValueError, match=r"unknown option.*cache_size"):
        add_freezeout(trainer(), cache_size=3)
    with pytest.raises(ValueError, match="give the warmup once"):
        add_freezeout(trainer(warmup_steps=2), warmup_steps=3)
