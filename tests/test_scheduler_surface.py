"""FreezeOut as torch's schedulers are used: the LRScheduler API, torch's compositions refused by FreezeOut itself, a
resumed optimizer whose FreezeOut state was not loaded, step() called less often than optimizer.step(), and the LR
of the first layer still training."""

from __future__ import annotations

import io
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR, StepLR

from freezeout import FreezeOut, ScheduleWarning, compat
from tests.helpers.drop_in import closed_form_lr
from tests.helpers.models import TinyNet, batch


def train(model, opt, sched, steps, start=0, *, opt_steps=1):
    for s in range(start, start + steps):
        for _ in range(opt_steps):
            x, y = batch(s)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()


def build(optimizer="adamw", total=12, **options):
    torch.manual_seed(0)
    model = TinyNet()
    make = {
        "adamw": lambda: torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2),
        "sgd": lambda: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
    }[optimizer]
    opt = make()
    return model, opt, FreezeOut(opt, model.layers, total, **options)


def test_freezeout_is_a_torch_lr_scheduler_with_its_surface():
    model, opt, sched = build(total=10, t0=0.5, schedule="linear")
    step_before = type(opt).step
    assert isinstance(sched, LRScheduler) and sched.optimizer is opt
    assert not compat.lr_scheduler_attached(opt)  # LRScheduler.__init__ (which wraps step) did not run
    assert type(opt).step is step_before and "step" not in vars(opt)
    assert sched.last_epoch == 0 and sched._step_count == 1  # as torch's after their initial step
    for s in range(1, 11):
        train(model, opt, sched, 1, start=s)
        assert sched.last_epoch == sched.step_count == s and sched._step_count == s + 1
        assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups] == sched.get_lr() == sched.lrs_at(s)
        assert sched._last_lr == sched.get_last_lr()
    assert sched.num_frozen == 4 and sched.state_dict()["step_count"] == 10
    with pytest.raises(ValueError, match=r"last_epoch is its step count and cannot be set: .* step_to\(n\)"):
        sched.last_epoch = 3
    sched._step_count += 1  # what accelerate does on each micro-batch it accumulates: not FreezeOut's clock
    assert sched.step_count == 10 and sched._step_count == 11


def test_stepping_before_the_optimizer_or_without_it_warns_nothing():
    # torch's schedulers warn about step order (filterwarnings = error would fail here): FreezeOut's clock is its own
    sched = build()[2]
    sched.step()
    sched.step()
    assert sched.step_count == 2


@pytest.mark.parametrize("first", [True, False], ids=["freezeout-first", "freezeout-second"])
def test_sequential_lr_is_refused_by_freezeout_naming_warmup_steps(first):
    _, opt, sched = build()
    warm = LinearLR(opt, start_factor=0.1, total_iters=3)
    schedulers = [sched, warm] if first else [warm, sched]
    with pytest.raises(ValueError, match=r"^FreezeOut\.last_epoch .* inside SequentialLR .* warmup_steps=W"):
        SequentialLR(opt, schedulers, milestones=[3])


@pytest.mark.parametrize("first", [True, False], ids=["freezeout-first", "freezeout-second"])
def test_chained_scheduler_is_refused_at_its_first_step(first):
    model, opt, sched = build()
    warm = LinearLR(opt, start_factor=0.1, total_iters=3)  # built after FreezeOut: it scales the LRs FreezeOut set
    chain = ChainedScheduler([sched, warm] if first else [warm, sched])
    with pytest.raises(ValueError, match=r"changed outside FreezeOut .* by a torch LR scheduler .* warmup_steps=W"):
        train(model, opt, chain, 1)


@pytest.mark.parametrize("built_first", [True, False], ids=["cosine-first", "freezeout-first"])
@pytest.mark.parametrize("stepped_first", [True, False], ids=["cosine-steps-first", "freezeout-steps-first"])
def test_a_cosine_annealing_lr_beside_it_is_refused_not_fought(built_first, stepped_first):
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cosine = CosineAnnealingLR(opt, 12) if built_first else None
    sched = FreezeOut(opt, model.layers, 12)
    cosine = cosine or CosineAnnealingLR(opt, 12)
    both = [cosine, sched] if stepped_first else [sched, cosine]
    with pytest.raises(ValueError, match=r"changed outside FreezeOut .* by a torch LR scheduler on this optimizer"):
        for s in range(2):  # the cosine's first change is seen at FreezeOut's next step at the latest
            x, y = batch(s)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            for other in both:
                other.step()
    assert sched.step_count <= 1


def test_a_torch_scheduler_built_and_dropped_is_no_fight():
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    StepLR(opt, 5)  # built, never stepped: it changes nothing
    sched = FreezeOut(opt, model.layers, 8, t0=0.5)
    train(model, opt, sched, 8)
    assert compat.lr_scheduler_attached(opt) and sched.num_frozen == 4


def checkpoint(model, opt, sched=None) -> bytes:
    saved = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    buffer = io.BytesIO()
    torch.save(saved | ({"freezeout": sched.state_dict()} if sched is not None else {}), buffer)
    return buffer.getvalue()


def resumed(optimizer: str, blob: bytes, *, freezeout_state: bool):
    saved = torch.load(io.BytesIO(blob), weights_only=True)
    model, opt, sched = build(optimizer)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    if freezeout_state:
        sched.load_state_dict(saved["freezeout"])
    return model, opt, sched


@pytest.mark.parametrize(("optimizer", "shows"), [("adamw", "5 earlier steps"), ("sgd", "momentum from earlier")])
def test_a_resume_without_freezeouts_state_is_said_for_what_it_is(optimizer, shows):
    model, opt, sched = build(optimizer)
    train(model, opt, sched, 5)
    model2, opt2, sched2 = resumed(optimizer, checkpoint(model, opt), freezeout_state=False)  # FreezeOut's left out
    with pytest.warns(ScheduleWarning) as caught:
        train(model2, opt2, sched2, 1, start=5)
    assert len(caught) == 1  # this one, not "changed outside FreezeOut ... another LR scheduler"
    message = str(caught[0].message)
    assert f"optimizer's state shows {shows}" in message and "FreezeOut is at step 1" in message
    assert "FreezeOut state was not loaded" in message and "sched.load_state_dict(...) after optimizer." in message
    train(model2, opt2, sched2, 2, start=6)  # said once


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_resume_with_freezeouts_state_or_an_explicit_clock_says_nothing(optimizer):
    model, opt, sched = build(optimizer)
    train(model, opt, sched, 5)
    blob = checkpoint(model, opt, sched)
    model2, opt2, sched2 = resumed(optimizer, blob, freezeout_state=True)
    train(model2, opt2, sched2, 3, start=5)  # filterwarnings = error: any warning fails here
    model3, opt3, sched3 = resumed(optimizer, blob, freezeout_state=False)
    for s in range(5, 8):  # timm's way: the clock is the loop's num_updates
        x, y = batch(s)
        opt3.zero_grad()
        F.cross_entropy(model3(x), y).backward()
        opt3.step()
        sched3.step_to(s + 1)
    assert sched3.step_count == sched2.step_count == 8
    for a, b in zip(model2.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)


def test_step_called_less_often_than_the_optimizer_is_said_once():
    model, opt, sched = build(total=4)
    with pytest.warns(ScheduleWarning, match=r"optimizer.step\(\) ran 3 times since the last FreezeOut.step\(\).*"
                      r"'interval': 'step'"):  # fmt: skip
        train(model, opt, sched, 1, opt_steps=3)  # as Lightning steps a scheduler by default: once per epoch
    train(model, opt, sched, 1, start=1, opt_steps=3)  # said once
    train(model, opt, sched, 1, start=2)
    assert sched.step_count == 3


def test_an_explicit_clock_may_skip_steps_without_a_word():
    model, opt, sched = build(total=12)
    for s in range(3):
        for k in range(4):
            x, y = batch(4 * s + k)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step_to(4 * (s + 1))  # once per epoch, the clock given
    assert sched.step_count == 12 and sched.num_frozen == 4


def test_first_layer_lr_is_the_paper_lr_of_the_earliest_layer_still_training():
    model, opt, sched = build(total=10, t0=0.5)
    n = len(model.layers)
    seen = set()
    for s in range(11):
        frozen = sched.num_frozen
        want = closed_form_lr(s, 10, frozen, n, 1e-2, t0=0.5) if frozen < n else None
        assert sched.first_layer_lr() == sched.first_layer_lr(s) == (None if want is None else pytest.approx(want))
        seen.add(frozen)
        if s < 10:
            train(model, opt, sched, 1, start=s)
    assert seen >= {0, 1, 2, 4}
    assert sched.first_layer_lr(0) == pytest.approx(1e-2 / 0.5**3)  # scaled: the first layer at lr / t_0


def test_the_recompile_allowance_is_said_once_and_only_under_dynamo(caplog, monkeypatch):
    calls = []
    monkeypatch.setattr(compat, "raise_recompile_limit", lambda by: calls.append(by) or (8, 8 + by))
    caplog.set_level(logging.INFO, logger="freezeout")
    model, opt, sched = build(total=8, t0=0.5, schedule="linear")
    train(model, opt, sched, 8)
    assert calls == [2 * 4]  # at the first freeze, two per freeze to come
    said = [r.getMessage() for r in caplog.records if "recompile_limit" in r.getMessage()]
    assert said == [said[0]] and "from 8 to 16" in said[0]
    monkeypatch.setattr(compat, "raise_recompile_limit", lambda by: None)  # dynamo not loaded: nothing said
    caplog.clear()
    model, opt, sched = build(total=8, t0=0.5)
    train(model, opt, sched, 8)
    assert sched.num_frozen == 4 and not [r for r in caplog.records if "recompile" in r.getMessage()]


class Chain(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(n))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def compiled_run(n: int, allowance: bool) -> tuple[int, list[bool]]:
    """A whole-model torch.compile (a counting backend: dynamo's guards and limits, no codegen) under FreezeOut, an
    evaluation forward every 4 steps: the graphs compiled, and for each training step whether it ran compiled."""
    import torch._dynamo

    limits = torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256)  # torch's defaults
    with pytest.MonkeyPatch.context() as patch, limits:
        if not allowance:
            patch.setattr(compat, "raise_recompile_limit", lambda by: None)
        torch._dynamo.reset()
        try:
            return _compiled_run(n)
        finally:
            torch._dynamo.reset()


def _compiled_run(n: int) -> tuple[int, list[bool]]:
    graphs, ran = [], [0]

    def backend(gm, example):
        graphs.append(gm)
        return lambda *args: (ran.__setitem__(0, ran[0] + 1), gm.forward(*args))[1]

    torch.manual_seed(0)
    model = Chain(n)
    compiled = torch.compile(model, backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = FreezeOut(opt, list(model.layers), 2 * n, t0=0.5, schedule="linear")
    x, steps = torch.randn(4, 8), []
    for s in range(2 * n):
        before = ran[0]
        compiled(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        steps.append(ran[0] > before)
        if s % 4 == 3:
            model.eval()
            with torch.no_grad():
                compiled(x)
            model.train()
    assert sched.num_frozen == n
    return len(graphs), steps


@pytest.mark.slow  # ~20 dynamo traces of a small model: 10-25 s
def test_a_whole_model_compile_stays_compiled_through_every_freeze():
    n = 10
    graphs, steps = compiled_run(n, allowance=False)
    assert graphs == 8 and not all(steps)  # torch's default: eager once 8 graphs are spent
    graphs, steps = compiled_run(n, allowance=True)
    assert all(steps) and graphs > 8 + 2  # every training step ran compiled, with a graph per frozen state
