"""``torchrun -m freezeout train``: 2 gloo processes on loopback, CPU, through the real launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from freezeout.experiment.launch import SingleProcess, Torchrun, launch_from_env, state_checksums
from freezeout.experiment.models import build_model
from freezeout.schedule import freeze_times, num_frozen_at
from tests.helpers.models import RUN_FILES
from tests.helpers.seams import SCRIPT

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS = 3, 30  # digits: 1497 training examples, global batch 50 -> 30 steps per epoch
# t0 = 0.2 (cubic: the last layer freezes at t = 0.651, step 59): epoch 3 all-reduces the head alone
ARGS = ["--dataset", "digits", "--depth", "10", "--growth", "2", "--epochs", str(EPOCHS), "--t0", "0.2"]
ARGS += ["--device", "cpu", "--no-progress"]
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env(**extra):
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**base, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def torchrun(logs: Path, *args, nproc=2, dump: Path | None = None, **extra):
    """``python -m torch.distributed.run --standalone`` (a free port), each rank's stdout/stderr in its own file;
    ``dump``: each rank saves its final model state there (helpers.seams)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["--log-dir", str(logs), "--redirects", "3"]
    cmd += [SCRIPT, "--dump", str(dump)] if dump is not None else ["-m", "freezeout"]
    cmd += ["train", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(**extra), timeout=300)
    outputs = {}
    for rank in range(nproc):
        (folder,) = logs.glob(f"*/attempt_0/{rank}")
        outputs[rank] = ((folder / "stdout.log").read_text(), (folder / "stderr.log").read_text())
    return proc, outputs


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    (root / "dump").mkdir()
    proc, outputs = torchrun(root / "logs", *ARGS, "--out", root / "run", dump=root / "dump")
    assert proc.returncode == 0, "\n".join(err[-2000:] for _, err in outputs.values()) + proc.stderr[-1000:]
    return root, outputs


def records(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # real torchrun processes: ~13 s together
def test_ranks_end_bit_identical_and_trained(two_ranks):
    root, _ = two_ranks
    r0, r1 = (torch.load(root / "dump" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    ckpt = torch.load(root / "run" / "checkpoint.pt", weights_only=True)
    assert r0.keys() == r1.keys() == ckpt["model"].keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
        assert torch.equal(r0[k], ckpt["model"][k]), f"checkpoint differs from rank 0 in {k}"
    torch.manual_seed(0)  # the trainer's initial model: training moved it
    init = build_model("densenet-bc", 10, 2, 10, 1).state_dict()
    assert not torch.equal(init["fc.weight"], r0["fc.weight"])
    assert ckpt["world_size"] == 2 and ckpt["step"] == EPOCHS * STEPS


@pytest.mark.slow  # real torchrun processes: ~13 s together
def test_allreduced_bytes_are_the_trainable_parameters_each_step(two_ranks):
    root, _ = two_ranks
    model = build_model("densenet-bc", 10, 2, 10, 1)
    layer_bytes = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in model.layers]
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    times = freeze_times(len(model.layers), 0.2, "cubic")

    def trainable(step):  # parameters requiring grad in step `step`'s backward (closed form)
        return total - sum(layer_bytes[: num_frozen_at(step, EPOCHS * STEPS, times)])

    recs = records(root / "run")
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    for e, r in enumerate(recs):
        expected = sum(trainable(s) for s in range(e * STEPS, (e + 1) * STEPS)) / STEPS
        assert r["allreduce_bytes_per_step"] == pytest.approx(expected, rel=1e-12), r
        assert r["world_size"] == 2
    first, last = recs[0]["allreduce_bytes_per_step"], recs[-1]["allreduce_bytes_per_step"]
    assert last < first
    head = total - sum(layer_bytes)
    assert last == recs[-1]["trainable_bytes"] == head and recs[-1]["num_frozen"] == len(model.layers)


@pytest.mark.slow  # real torchrun processes: ~13 s together
def test_only_rank_zero_writes(two_ranks):
    root, outputs = two_ranks
    out = root / "run"
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert len(records(out)) == EPOCHS  # one appender, not two
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"] and summary["total_steps"] == EPOCHS * STEPS
    assert "test accuracy" in outputs[0][0] and outputs[1][0] == ""  # one summary printed, by rank 0
    assert outputs[0][1] == outputs[1][1] == ""


@pytest.mark.slow  # real torchrun processes: ~13 s together
def test_resume_with_another_world_size_is_one_line(two_ranks, tmp_path):
    root, _ = two_ranks
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):  # a 2-rank run killed after its last epoch
        (run / name).write_bytes((root / "run" / name).read_bytes())
    cmd = [sys.executable, "-m", "freezeout", "train", *ARGS, "--out", str(run), "--resume"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env())
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "mismatched world size" in proc.stderr and "trained by 2" in proc.stderr
    assert "Traceback" not in proc.stderr and not (run / "summary.json").exists()


@pytest.mark.slow  # real torchrun processes: ~13 s together
def test_bad_launch_is_one_line_per_process(tmp_path):
    proc, outputs = torchrun(tmp_path / "logs", *ARGS, "--batch-size", "51", "--out", tmp_path / "run")
    assert proc.returncode != 0 and not (tmp_path / "run").exists()
    errors = [err for _, err in outputs.values()]
    # Each rank finds the bad batch on its own; once one exits, torchrun stops the others, so a slower rank may be
    # ended before it gets to say so (its stderr then empty): never a traceback, never more than the one line.
    assert any(errors), errors
    for err in errors:
        assert err == "" or (err.count("\n") == 1 and "divisible by the torchrun world size 2" in err), err


def test_launch_from_env():
    assert launch_from_env({}) == launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) == SingleProcess()
    single = SingleProcess()
    assert (single.rank, single.world_size, single.is_main, single.batch_per_process(51)) == (0, 1, True, 51)
    ok = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert launch_from_env(ok) == Torchrun(rank=3, world_size=4, local_rank=1)
    assert not launch_from_env(ok).is_main
    for bad in ({"RANK": "4"}, {"LOCAL_RANK": "2"}, {"LOCAL_WORLD_SIZE": "8"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(ValueError, match="mismatched world size"):
            launch_from_env({**ok, **bad})
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        launch_from_env({**ok, "RANK": "x"})
    assert Torchrun(0, 4, 0).batch_per_process(64) == 16
    with pytest.raises(ValueError, match="divisible"):
        Torchrun(0, 4, 0).batch_per_process(50)


def test_state_checksums_see_every_bit():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    names, sums = state_checksums(model)
    assert names == list(model.state_dict())
    w = model[0].weight.data.view(torch.int32)
    for i in range(w.numel()):  # flipping any single bit of any element changes that tensor's checksum only
        bit = 1 << (i % 31)
        w.view(-1)[i] ^= bit
        changed = state_checksums(model)[1] != sums
        w.view(-1)[i] ^= bit
        assert changed.tolist() == [n == "0.weight" for n in names]


def test_device_gives_each_process_its_local_gpu(monkeypatch):
    launch = Torchrun(rank=3, world_size=4, local_rank=1)
    gpu = torch.cuda.is_available()
    # torch.device("cuda", i) is only a name: pretend there is a GPU to check the choice without one
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        for name in ("cuda", "auto"):
            assert launch.device(name) == torch.device("cuda", 1)
        with pytest.raises(ValueError, match=r"device 'cuda:0' names one GPU; .* uses cuda:LOCAL_RANK: use cuda"):
            launch.device("cuda:0")
    assert launch.device("cpu") == torch.device("cpu")
    assert launch.device("auto") == torch.device("cuda", 1) if gpu else torch.device("cpu")


def test_start_refuses_a_process_group_other_than_the_launch(tmp_path):
    # A group the caller initialised is used as it is: it must be the world torchrun's environment describes.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        launch = Torchrun(rank=0, world_size=2, local_rank=0)
        with pytest.raises(ValueError, match="mismatched world size: the process group has rank 0 of 1, the "):
            launch.start(torch.device("cpu"))
        assert not launch.owns_group  # not ours: close() must leave it to the caller
    finally:
        dist.destroy_process_group()
