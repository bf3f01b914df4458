"""On a CUDA device (skipped without one): frozen means frozen with CUDA's optimizer kernels, and the
trainer's CUDA options run. CI has no GPU; these run where one is lent."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from freezeout import FreezeOut, param_groups
from freezeout.cli import main
from tests.helpers.models import batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# CUDA optimizers take the foreach (multi-tensor) or fused kernels, code paths the CPU tests never reach.
OPTIMIZERS = {
    "sgd-foreach": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, foreach=True),
    "sgd-fused": lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, fused=True),
    "adamw-foreach": lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=1e-2, foreach=True),
    "adamw-fused": lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=1e-2, fused=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_frozen_layers_stay_bit_identical_on_cuda(tiny, name):
    model = tiny.cuda()
    layers = model.layers
    opt = OPTIMIZERS[name](param_groups(model, layers))
    sched = FreezeOut(opt, layers, total_steps=24, t0=0.4, schedule="linear")
    frozen_at: dict[int, dict[str, torch.Tensor]] = {}
    for step in range(24):
        model.train()
        x, y = (t.cuda() for t in batch(step))
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
        for i in range(sched.num_frozen):
            frozen_at.setdefault(i, {k: v.clone() for k, v in layers[i].state_dict().items()})
            assert all(p.grad is None and not p.requires_grad and p not in opt.state for p in layers[i].parameters())
    assert sorted(frozen_at) == [0, 1, 2, 3]
    for i, layer in enumerate(layers):
        for k, v in layer.state_dict().items():
            assert torch.equal(frozen_at[i][k], v), f"layer {i} moved after freezing ({k})"


def test_trainer_runs_on_cuda_with_channels_last_and_bf16(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--depth", "10", "--growth", "4", "--epochs", "3", "--t0", "0.5"]
    args += ["--device", "cuda", "--channels-last", "--bf16", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records)
    assert records[-1]["num_frozen"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["config"]["device"] == "cuda"


def test_bench_and_calibrated_estimate_run_on_cuda(tmp_path, capsys):
    tiny_args = ["--depth", "10", "--growth", "2", "--batch-size", "4", "--input-size", "16", "--device", "cuda"]
    out = tmp_path / "bench.json"
    assert main(["bench", *tiny_args, "--steps", "4", "--repeats", "1", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cuda" and "baseline_peak_bytes" in result["memory"]
    assert all(row["peak_memory_bytes"] > 0 for row in result["rows"])
    capsys.readouterr()
    assert main(["estimate", *tiny_args, "--calibrate", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert len(estimate["step_times"]) == estimate["num_layers"] + 1 == 7
