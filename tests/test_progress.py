"""The progress display: an ETA that knows the schedule, a line per epoch that survives the bar, no bar off a
terminal."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freezeout import FreezeOut, freeze_times, num_frozen_at, param_groups
from freezeout.experiment.config import TrainConfig
from freezeout.experiment.progress import (
    FROZEN_COST,
    Display,
    StepClock,
    freeze_steps,
    relative_step_cost,
    remaining_seconds,
)
from freezeout.experiment.trainer import train
from tests.helpers.cifar_files import one_thread
from tests.helpers.terminal import Terminal


def brute_force(step: int, total: int, times: list[float], unfrozen: float) -> float:
    """Step by step: each step's cost from the number of layers the schedule has frozen when it runs."""
    n = len(times)
    return sum(unfrozen * (1 - (1 - FROZEN_COST) * num_frozen_at(s, total, times) / n) for s in range(step, total))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    n=st.integers(1, 12),
    total=st.integers(1, 400),
    t0=st.sampled_from([0.05, 0.3, 0.5, 0.8, 0.95, 1.0]),
    schedule=st.sampled_from(["linear", "cubic"]),
    where=st.floats(0, 1),
)
def test_remaining_seconds_sums_the_schedule_step_by_step(n, total, t0, schedule, where):
    times = freeze_times(n, t0, schedule)
    step = int(where * total)
    got = remaining_seconds(step, total, freeze_steps(total, times), 0.05, n)
    assert got == pytest.approx(brute_force(step, total, times, 0.05), rel=1e-9, abs=1e-12)


def test_freeze_steps_are_where_the_controller_freezes(tiny):
    total = 37
    opt = torch.optim.SGD(param_groups(tiny, tiny.layers), lr=0.1)
    sched = FreezeOut(opt, tiny.layers, total, t0=0.5, schedule="linear")
    seen = []
    for _ in range(total):
        before = sched.num_frozen
        sched.step()
        seen += [sched.step_count] * (sched.num_frozen - before)
    assert seen == freeze_steps(total, sched.times) and len(seen) == len(tiny.layers)
    assert freeze_steps(total, freeze_times(len(tiny.layers), 1.0)) == []  # t0 = 1: nothing ever freezes


def test_baseline_and_end_cases_and_bad_input():
    assert remaining_seconds(10, 50, [], 0.2, 4) == pytest.approx(40 * 0.2)  # nothing freezes: rate x steps
    assert remaining_seconds(50, 50, [5, 6], 0.2, 2) == 0.0
    assert remaining_seconds(10, 50, [0, 0], 0.3, 2) == pytest.approx(40 * 0.3 * FROZEN_COST)  # all frozen
    with pytest.raises(ValueError, match=r"step must be in \[0, total_steps = 50\], got 51"):
        remaining_seconds(51, 50, [], 0.2, 4)
    with pytest.raises(ValueError, match=r"frozen must be in \[0, num_layers = 3\]"):
        relative_step_cost(4, 3)


def test_the_eta_follows_the_schedule_where_a_moving_average_overestimates():
    """A run whose steps cost what the schedule says: at every point the clock's ETA is the time really left,
    while the current rate times the steps left (tqdm's kind of ETA) is ever further off once layers freeze."""
    n, total, epochs, unfrozen = 21, 600, 20, 0.06
    times = freeze_times(n, 0.8, "cubic")
    durations = [unfrozen * relative_step_cost(num_frozen_at(s, total, times), n) for s in range(total)]
    clock = StepClock(total, times, epochs)
    naive_error = []
    for s, seconds in enumerate(durations):
        clock.observe(num_frozen_at(s, total, times), seconds * (1.02 if s % 7 == 0 else 1.0))  # a few slow steps
        if s % 50 == 49:
            truth = sum(durations[s + 1 :])
            assert clock.remaining(s + 1, 0) == pytest.approx(truth, rel=1e-9)
            naive_error.append(seconds * (total - s - 1) / truth - 1 if truth else 0.0)
    assert max(naive_error) > 0.5  # once freezing starts, the current rate overestimates by more than half
    clock.eval_seconds = 0.5
    assert clock.remaining(total, epochs - 2) == pytest.approx(2 * 0.5)  # evaluations still to run count too
    assert StepClock(total, times, epochs).remaining(0, 0) is None  # nothing measured: no ETA yet


def test_off_a_terminal_no_bar_only_lines():
    stream = Terminal()
    stream.isatty = lambda: False
    display = Display(10, stream=stream)
    display.set_info("epoch 1/2")
    for _ in range(10):
        display.update(1, remaining=3.0)
    display.note("epoch 1/2: loss 0.5")
    display.close()
    assert stream.getvalue() == "epoch 1/2: loss 0.5\n"


def test_on_a_terminal_the_bar_shows_the_schedules_eta_and_lines_survive_it():
    stream = Terminal()
    display = Display(10, stream=stream)
    display.set_info("epoch 1/2")
    display.update(1, remaining=125.0)
    display.note("epoch 1/2: loss 0.5")
    display.update(1, remaining=3725.0)
    display.close()
    text = stream.getvalue()
    assert "1/10 [" in text and "eta 02:05, epoch 1/2]" in text
    assert "epoch 1/2: loss 0.5\n" in text and "\r" in text


def run_files(tmp_path, monkeypatch, stream) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    config = TrainConfig(dataset="digits", depth=10, growth=2, epochs=2, batch_size=100, t0=0.5, device="cpu")
    with one_thread():
        train(config, tmp_path, progress=True)
    return stream.getvalue()


def test_training_off_a_terminal_writes_one_line_per_epoch(tmp_path, monkeypatch):
    stream = Terminal()
    stream.isatty = lambda: False
    lines = run_files(tmp_path, monkeypatch, stream).splitlines()
    assert len(lines) == 2 and "\r" not in "".join(lines)
    pattern = r"epoch {}/2: loss \d\.\d{{4}}, test acc \d+\.\d\d%, frozen {}/6, \d+\.\d s"
    assert re.fullmatch(pattern.format(1, r"\d"), lines[0]) and re.fullmatch(pattern.format(2, 6), lines[1]), lines


def test_training_on_a_terminal_shows_a_bar_with_eta_and_the_epoch_lines(tmp_path, monkeypatch):
    text = run_files(tmp_path, monkeypatch, Terminal())
    assert "epoch 1/2, loss ?, frozen 0]" in text  # before the first step
    assert re.search(r"eta \d\d:\d\d, epoch 2/2, loss \d\.\d{3}, frozen \d\]", text), text
    assert re.search(r"epoch 2/2: loss \d\.\d{4}, test acc .*, frozen 6/6, \d+\.\d s\n", text), text
