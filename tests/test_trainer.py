"""The trainer: run files, exact resume after a kill, config checks."""

from __future__ import annotations

import json

import pytest
import torch

import freezeout.experiment.session as session
from freezeout.checks import resolve_device
from freezeout.experiment.config import TrainConfig
from freezeout.experiment.trainer import train
from tests.helpers.cifar_files import one_thread, write_cifar
from tests.helpers.models import METRIC_KEYS, SUMMARY_KEYS


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


TIMING = ("epoch_seconds", "eval_seconds")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    # 5 x 19 = 95 training images: with batch 10 the last batch of each epoch is partial
    return write_cifar(tmp_path_factory.mktemp("c10"), "cifar10", packed=True, per_batch=19)


def tiny_config(cifar_dir, **kw):
    # linear t0 = 0.5 over 3 epochs of 10 steps: layers freeze from step 15 on, some before the
    # checkpoint at step 20 (refrozen on load), the rest after it.
    base = dict(dataset="cifar10", data_dir=str(cifar_dir), depth=10, growth=2, epochs=3, batch_size=10)
    return TrainConfig(**{**base, "schedule": "linear", "scale_lr": False, "t0": 0.5, **kw})


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


class Killed(Exception):
    pass


def kill_at_checkpoint(monkeypatch, epoch, before):
    """Make the trainer die at the checkpoint of ``epoch``: just before writing it, or just after."""
    real = session.atomic_torch_save

    def save(path, state):
        if state["epoch"] == epoch and before:
            raise Killed
        real(path, state)
        if state["epoch"] == epoch:
            raise Killed

    monkeypatch.setattr(session, "atomic_torch_save", save)


@pytest.fixture(scope="module")
def uninterrupted(cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    with one_thread():
        summary = train(tiny_config(cifar_dir), out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return out, summary, state


def test_run_files(uninterrupted):
    out, summary, state = uninterrupted
    records = lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3] and [r["step"] for r in records] == [10, 20, 30]
    assert all(set(r) >= METRIC_KEYS for r in records)
    assert set(summary) >= SUMMARY_KEYS and summary == json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["total_steps"] == 30 and summary["num_layers"] == 6
    assert summary["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in records))
    assert summary["test_accuracy"] == records[-1]["test_accuracy"] == pytest.approx(1 - records[-1]["test_error"])
    assert TrainConfig.from_dict(summary["config"]) == tiny_config(summary["config"]["data_dir"])
    assert records[-1]["num_frozen"] == 6 and records[-1]["lr"] == {"min": 0.0, "max": 0.0, "head": 0.0}
    assert records[0]["num_frozen"] == 0 and 0 < records[0]["lr"]["min"] <= records[0]["lr"]["max"]
    assert json.loads((out / "config.json").read_text())["config"] == summary["config"]
    assert state["epoch"] == 3 and state["step"] == 30


@pytest.mark.parametrize("before", [False, True], ids=["killed-after-checkpoint", "killed-before-checkpoint"])
def test_resume_equals_uninterrupted_run(cifar_dir, tmp_path, monkeypatch, uninterrupted, before):
    full_out, full_summary, full_state = uninterrupted
    kill_at_checkpoint(monkeypatch, 2, before)
    with pytest.raises(Killed):
        train(tiny_config(cifar_dir), tmp_path)
    assert not (tmp_path / "summary.json").exists()
    assert len(lines(tmp_path / "metrics.jsonl")) == 2  # before=True: epoch 2's line has no checkpoint yet
    monkeypatch.undo()
    summary = train(tiny_config(cifar_dir), tmp_path, resume=True)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["model"].keys() == full_state["model"].keys()
    for k, v in full_state["model"].items():
        assert torch.equal(state["model"][k], v), k
    assert without_timing(lines(tmp_path / "metrics.jsonl")) == without_timing(lines(full_out / "metrics.jsonl"))
    for k in ("test_accuracy", "test_loss", "total_steps", "num_frozen"):
        assert summary[k] == full_summary[k]
    assert torch.equal(state["rng"]["generator"], full_state["rng"]["generator"])


def test_resume_checks(cifar_dir, tmp_path, uninterrupted):
    out = uninterrupted[0]
    with pytest.raises(ValueError, match="no checkpoint"):
        train(tiny_config(cifar_dir), tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="already holds a train run"):
        train(tiny_config(cifar_dir), out)
    with pytest.raises(ValueError, match=r"different config \(t0: 0.5 -> 0.7; seed: 0 -> 3\)"):
        train(tiny_config(cifar_dir, t0=0.7, seed=3), out, resume=True)
    before = (out / "metrics.jsonl").read_bytes()
    assert train(tiny_config(cifar_dir), out, resume=True) == uninterrupted[1]  # finished: read back
    assert (out / "metrics.jsonl").read_bytes() == before
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        train(tiny_config(cifar_dir), tmp_path / "torn", resume=True)


def test_channels_last_is_the_default_layout_and_computes_like_nchw(cifar_dir):
    from freezeout.experiment.data import load_dataset
    from freezeout.experiment.engine import Run

    nhwc, nchw = tiny_config(cifar_dir), tiny_config(cifar_dir, channels_last=False)
    assert nhwc.channels_last  # the default: measured ~1.5x faster steps on CPU (docs/BENCHMARKS.md)
    data = load_dataset("cifar10", str(cifar_dir))
    results = []
    for config, want in ((nhwc, torch.channels_last), (nchw, torch.contiguous_format)):
        run = Run(config, data, torch.device("cpu"))
        x, y = next(iter(run.train_batches))
        for t in (x, run.model.stem.weight):
            assert t.is_contiguous(memory_format=want) and t.is_contiguous() == (want is torch.contiguous_format)
        logits = run.model(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        results.append((x, logits.detach(), torch.cat([p.grad.flatten() for p in run.model.parameters()])))
    (xa, la, ga), (xb, lb, gb) = results
    assert torch.equal(xa, xb)  # the same batch, only laid out differently
    # The same maths up to float rounding. CPU's channels-last BatchNorm rounds ~10x coarser (~1e-5 here), and
    # in this tiny net a few ReLU inputs near 0 flip sign with it, so gradients agree as a whole, not per entry.
    assert torch.allclose(la, lb, rtol=1e-4, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(ga, gb, dim=0) > 0.999
    assert (ga - gb).norm() < 0.05 * gb.norm()  # seen: 0.028


def test_defaults_are_the_papers_and_reach_the_optimizer(cifar_dir):
    from freezeout.experiment.data import load_dataset
    from freezeout.experiment.engine import Run

    d = TrainConfig()
    assert (d.batch_size, d.lr, d.momentum, d.nesterov, d.weight_decay) == (50, 0.1, 0.9, True, 1e-4)
    assert (d.schedule, d.scale_lr, d.t0) == ("cubic", True, 0.8)
    # only the size and the data change: every optimisation field stays at its default
    config = TrainConfig(dataset="cifar10", data_dir=str(cifar_dir), depth=10, growth=2, epochs=1, device="cpu")
    run = Run(config.validate(), load_dataset("cifar10", str(cifar_dir)), torch.device("cpu"))
    assert type(run.opt) is torch.optim.SGD
    assert run.opt.defaults["lr"] == 0.1
    for group in run.opt.param_groups:  # FreezeOut sets each group's LR, never these
        assert (group["nesterov"], group["momentum"], group["weight_decay"]) == (True, 0.9, 1e-4)


def test_auto_device_follows_cuda_availability(monkeypatch):
    # a torch.device is only a name: nothing is allocated on CUDA, so this runs on machines without it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_validation_split_is_evaluated(tmp_path):
    summary = train(TrainConfig(depth=10, growth=2, epochs=1, batch_size=200, val_split=100, device="cpu"), tmp_path)
    record = lines(tmp_path / "metrics.jsonl")[0]
    assert {"val_loss", "val_error", "val_accuracy"} <= set(record) and "val_accuracy" in summary
    assert summary["steps_per_epoch"] == 7  # ceil(1397 / 200)


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"dataset": "mnist"}, "dataset"),
        ({"dataset": "cifar10"}, "data_dir"),
        ({"depth": 11}, "depth"),
        ({"depth": 76.0}, "depth"),
        ({"growth": 0}, "growth"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"schedule": "exp"}, "schedule"),
        ({"t0": 0.0}, "t0"),
        ({"t0": 1.5}, "t0"),
        ({"seed": -1}, "seed"),
        ({"val_split": -1}, "val_split"),
        ({"device": "tpu"}, "device"),
        ({"bf16": 1}, "bf16"),
        ({"model": "vgg"}, "model"),
    ],
)
def test_config_validation(kw, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**kw).validate()


def test_config_round_trip_and_unknown_fields():
    c = TrainConfig(t0=0.5, schedule="linear")
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown config fields: tzero"):
        TrainConfig.from_dict({**c.to_dict(), "tzero": 1})
