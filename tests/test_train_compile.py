"""``train(compile=True)`` (``freezeout train --compile``): per-layer compile, no recompile-limit fallback."""

from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import freezeout.experiment.engine as engine
import freezeout.experiment.trainer as trainer
from freezeout.experiment.config import TrainConfig
from tests.helpers.cifar_files import one_thread
from tests.helpers.dynamo import DYNAMO_GRAD_PROBE

pytestmark = DYNAMO_GRAD_PROBE
CONFIG = {"depth": 10, "growth": 2, "epochs": 2, "t0": 0.5, "device": "cpu"}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    with one_thread():
        yield
    torch._dynamo.reset()


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # dynamo compiles every layer: ~11 s
def test_compiled_training_matches_eager_without_recompile_fallback(tmp_path, monkeypatch):
    eager = trainer.train(TrainConfig(**CONFIG), tmp_path / "eager")
    cnt = CompileCounterWithBackend("aot_eager")  # AOTAutograd without inductor's codegen: seconds, not minutes
    monkeypatch.setattr(engine, "COMPILE_KWARGS", {"backend": cnt})
    compiled = trainer.train(TrainConfig(**CONFIG, compile=True), tmp_path / "compiled")
    assert compiled["config"]["compile"] and not eager["config"]["compile"]
    assert not any("recompile limit" in k.lower() for k in counters["unimplemented"])
    n = compiled["num_layers"]
    assert compiled["num_frozen"] == n == 6
    # every layer compiled; a handful of graphs each (train/eval, input and own parameters frozen or not,
    # the last partial batch), a number that does not grow with depth or epochs
    assert n <= cnt.frame_count <= 6 * n
    for a, b in zip(records(tmp_path / "eager"), records(tmp_path / "compiled")):
        assert b["num_frozen"] == a["num_frozen"]
        for k in ("train_loss", "test_loss", "test_accuracy"):
            assert b[k] == pytest.approx(a[k], abs=1e-4), k


def test_compile_flag_reaches_the_config():
    from freezeout.cli import build_parser
    from freezeout.cli.common import config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["train", "--out", "x", "--compile"])).compile is True
    assert config_from_args(parse(["train", "--out", "x"])).compile is False
    with pytest.raises(ValueError, match="compile must be True or False"):
        TrainConfig(compile="yes").validate()
