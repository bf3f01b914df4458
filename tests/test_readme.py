"""The README's training-loop example runs as written and gives the paper's schedule."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from freezeout import freeze_times, learning_rates
from tests.helpers.models import TinyNet, batch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_freezes_everything(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    torch.manual_seed(0)
    model = TinyNet()
    loader = [batch(i) for i in range(5)]
    namespace = {"model": model, "loader": loader, "epochs": 3}
    exec(compile(code, str(README), "exec"), namespace)
    sched, opt = namespace["sched"], namespace["opt"]
    assert sched.num_frozen == len(model.layers)  # t0 = 0.8 < 1: every layer frozen by the end
    times = freeze_times(len(model.layers), 0.8, "cubic")
    want = learning_rates(15, 15, times, [0.1] * (len(times) + 1), scale_lr=True)
    assert [g["lr"] for g in opt.param_groups] == [want[i] for i in sched.group_layers]
    assert len(opt.param_groups) == len(model.layers) + 1  # the user's one group, split per layer then the rest
    assert {(g["weight_decay"], g["momentum"], g["nesterov"]) for g in opt.param_groups} == {(1e-4, 0.9, True)}
    assert "layers frozen" in capsys.readouterr().out
