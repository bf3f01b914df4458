"""FreezeOut under accelerate, as accelerate's docs write the loop (docs/RECIPES.md's block): wrapped by prepare,
stepped once per optimizer step whatever the accumulation, and under a real 2-process launch once per process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("accelerate")

from tests.helpers import accelerate_runs, doc_blocks


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    accelerate_runs.reset()


@pytest.mark.parametrize("adjust", [False, True], ids=["as-run", "adjust_scheduler"])
def test_accumulating_micro_batches_do_not_stop_freezeouts_clock(tmp_path, monkeypatch, adjust):
    # With adjust_scheduler (GradientAccumulationPlugin's documented default, which accelerate 1.16 drops on the
    # way to its GradientState) accelerate adds 1 to a scheduler's _step_count on every micro-batch it accumulates,
    # and stops stepping a scheduler once _step_count passes its total_steps: 3 such micro-batches would pass
    # FreezeOut's 2 before its first step
    from accelerate.state import GradientState

    monkeypatch.setattr(GradientState, "adjust_scheduler", property(lambda self: adjust))
    with accelerate_runs.clock() as clock:
        ran = accelerate_runs.run(tmp_path, batches=8, epochs=1, accumulation=4)
    freeze = ran["freeze"]
    assert freeze.total_steps == 2 and clock == [1, 2] and freeze.num_frozen == 4
    assert ran["sched"].scheduler._step_count == 3  # torch's count, from FreezeOut's clock


def test_prepare_hands_back_freezeouts_surface(tmp_path):
    ran = accelerate_runs.run(tmp_path, batches=2, epochs=1, accumulation=1)
    sched, freeze = ran["sched"], ran["freeze"]
    assert sched.get_last_lr() == freeze.get_last_lr() == sched.get_lr()  # accelerate's passthroughs
    assert sched.state_dict() == freeze.state_dict() and freeze.last_epoch == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes importing torch and accelerate, training twice: 20-40 s
def test_two_processes_step_freezeout_once_per_process_and_resume_bit_identically(tmp_path):
    script = doc_blocks.ROOT / "tests" / "helpers" / "accelerate_runs.py"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(script), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(doc_blocks.ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for record in ranks:
        straight, resumed = record["straight"], record["resumed"]
        assert straight["processes"] == 2 and straight["total"] == 2 * 8 // 2  # on the loader as built
        # each process runs 2 optimizer steps per epoch (4 of the 8 batches); accelerate steps FreezeOut twice
        # for each, so its clock reaches the total with the last of them: all frozen
        assert straight["clock"] == list(range(1, 9)) and straight["frozen"] == 4
        assert resumed["clock"] == list(range(5, 9)) and resumed["frozen"] == 4  # from the saved step 4
        for k, v in straight["state"].items():
            assert torch.equal(v, resumed["state"][k]), k
    for k, v in ranks[0]["straight"]["state"].items():  # DDP kept the ranks' parameters equal (BatchNorm's running
        if "running_" not in k and "num_batches" not in k:  # statistics are each rank's own since its last forward)
            assert torch.equal(v, ranks[1]["straight"]["state"][k]), k
