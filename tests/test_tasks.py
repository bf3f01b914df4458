"""The study's two tasks: MNIST-1D (generated) and the standard library's bytes, their loaders, batches, models and
metrics, against the generator itself, independent hashes and closed forms."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from freezeout import find_layers
from freezeout.analysis.flops import check_forward_path
from freezeout.cli import main
from freezeout.experiment import data as data_module
from freezeout.experiment.config import TrainConfig
from freezeout.experiment.data import Batches, TextBatches, load_dataset, load_text, normalise
from freezeout.experiment.data.text import stdlib_files
from freezeout.experiment.engine import evaluate
from freezeout.experiment.models import build_model
from freezeout.experiment.models.gpt import GPT
from tests.helpers.cifar_files import one_thread

needs_mnist1d = pytest.mark.skipif(importlib.util.find_spec("mnist1d") is None, reason="needs the [study] extra")


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def test_stdlib_files_leave_out_tests_packages_and_caches(tmp_path):
    keep = ["a.py", "pkg/b.py", "pkg/sub/c.py", "contest.py"]
    drop = ["test/test_t.py", "pkg/tests/x.py", "idlelib/idle_test/y.py", "site-packages/z.py", "test_foo.py",
            "__pycache__/c.py", "notes.txt", "dist-packages/q.py"]  # fmt: skip
    write_tree(tmp_path, {n: b"x = 1\n" for n in keep + drop})
    assert stdlib_files(tmp_path) == sorted(keep)
    with pytest.raises(ValueError, match=r"no \.py files"):
        stdlib_files(tmp_path / "test")  # a test suite only


def test_text_split_is_by_file_and_hashed(tmp_path):
    files = {f"m{i:02d}.py": f"# module {i}\n".encode() * (i + 3) for i in range(25)}
    write_tree(tmp_path, files)
    data = load_text("t", context=8, windows=10, eval_windows=4, root=tmp_path)
    names = sorted(files)
    held = [names[9], names[19]]  # every tenth file, from the tenth on
    train = [n for n in names if n not in held]
    want_train, want_test = b"".join(files[n] for n in train), b"".join(files[n] for n in held)
    assert bytes(data.train.tolist()) == want_train and bytes(data.test.tolist()) == want_test
    assert data.info["train_files"] == train and data.info["test_files"] == held
    assert data.info["train_sha256"] == hashlib.sha256(want_train).hexdigest()
    assert data.info["test_sha256"] == hashlib.sha256(want_test).hexdigest()
    assert data.num_train == 10 and data.info["test_bytes"] == len(want_test)


def counting_stream(n: int) -> torch.Tensor:
    return (torch.arange(n) % 251).to(torch.uint8)  # a byte is its position mod 251: a window tells its offset


def test_training_windows_are_seeded_crops_with_the_next_byte_as_target():
    stream = counting_stream(5000)
    batches = TextBatches(stream, 16, 7, 30, train=True, generator=torch.Generator().manual_seed(3))
    assert len(batches) == math.ceil(30 / 7)
    xs, ys = zip(*list(batches))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == y.shape == (30, 16) and x.dtype == torch.int64
    assert torch.equal((x[:, 1:] - x[:, :-1]) % 251, torch.ones(30, 15, dtype=torch.int64))  # contiguous bytes
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], (x[:, -1] + 1) % 251)  # the next byte
    again = TextBatches(stream, 16, 7, 30, train=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([a for a, _ in again]), x)
    other = TextBatches(stream, 16, 7, 30, train=True, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(torch.cat([a for a, _ in other]), x)


def test_evaluation_windows_are_fixed_and_span_the_stream():
    stream = counting_stream(1000)
    batches = TextBatches(stream, 10, 4, 5)
    first = [(a.clone(), b.clone()) for a, b in batches]
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, batches))
    starts = torch.cat([a[:, 0] for a, _ in first])
    last = len(stream) - 10 - 1
    assert starts.tolist() == [round(i * last / 4) % 251 for i in range(5)]  # offsets 0 .. last, evenly spaced


def test_two_ranks_share_one_process_s_windows():
    stream = counting_stream(3000)

    def windows(batch: int, shard: tuple[int, int]) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        return torch.cat([x for x, _ in TextBatches(stream, 8, batch, 12, train=True, shard=shard, generator=g)])

    whole, parts = windows(6, (0, 1)), [windows(3, (r, 2)) for r in range(2)]
    assert sorted(map(tuple, whole.tolist())) == sorted(map(tuple, torch.cat(parts).tolist()))


def test_uniform_predictions_score_eight_bits_per_byte():
    class Uniform(nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape, 256)

    loss, acc = evaluate(Uniform(), TextBatches(counting_stream(2000), 32, 5, 9))
    assert loss / math.log(2) == pytest.approx(8.0) and 0 <= acc <= 1  # log2(256): one byte of 256 values


def test_normalise_leaves_float_data_as_it_was():
    x = torch.randn(6, 1, 1, 40)
    kept = x.clone()
    batches = Batches(x, torch.zeros(6, dtype=torch.int64), 4, torch.tensor([0.5]), torch.tensor([2.0]))
    for _ in range(2):
        out = torch.cat([b for b, _ in batches])
    assert torch.equal(x, kept)  # an evaluation batch is a view of the data: normalised in a copy
    assert torch.allclose(out, (kept - 0.5) / 2.0)
    assert normalise(x, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)) is not x


@pytest.mark.slow  # generates the set twice: seconds
@needs_mnist1d
def test_mnist1d_is_the_package_s_standard_set_and_leaves_global_randomness_alone():
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(123)
    random.seed(123)
    before = np.random.get_state()[1].copy(), random.getstate()
    data = load_dataset("mnist1d")
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]
    assert data.train_x.shape == (4000, 1, 1, 40) and data.test_x.shape == (1000, 1, 1, 40)
    assert data.train_x.dtype == torch.float32 and set(data.test_y.tolist()) == set(range(10))
    oracle = make_dataset(get_dataset_args())  # the package's own generation, as its paper runs it
    assert np.array_equal(data.train_x.view(4000, 40).numpy(), oracle["x"].astype(np.float32))
    assert np.array_equal(data.test_y.numpy(), oracle["y_test"])
    assert data.info["seed"] == 42 and data.info["num_samples"] == 5000 and "url" not in data.info


def test_a_missing_mnist1d_package_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "mnist1d", None)  # import fails, as without the extra
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    data_module._generated.cache_clear()
    try:
        code = main(["train", "--dataset", "mnist1d", "--model", "resnet1d", "--out", str(tmp_path / "r")])
    finally:
        data_module._generated.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "freezeout[study]" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"dataset": "pystdlib", "model": "densenet-bc"}, "use one of gpt"),
        ({"dataset": "mnist1d", "model": "densenet-bc"}, "use one of resnet1d, resnet"),
        ({"dataset": "digits", "model": "gpt"}, "does not take dataset 'digits'"),
        ({"dataset": "pystdlib", "model": "gpt", "cache": True, "augment": False}, "drawn anew each epoch"),
        ({"dataset": "digits", "optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
    ],
)
def test_configs_that_cannot_run_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**fields).validate()


def test_a_text_set_holds_out_files_not_examples():
    with pytest.raises(ValueError, match="val_split must be an integer in \\[0, 0\\]"):
        load_dataset("pystdlib", val_split=5)


def gpt_params(d: int, layers: int, vocab: int = 256, block: int = 256) -> int:
    """nanoGPT's count, untied head: per block 2 LayerNorms (4d), qkv (3d^2 + 3d), two projections (d^2 + d,
    4d^2 + d), the MLP's input (4d^2 + 4d): 12 d^2 + 13 d; embeddings, final LayerNorm, head."""
    return layers * (12 * d * d + 13 * d) + vocab * d + block * d + 2 * d + d * vocab


def test_gpt_layers_are_found_and_its_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(depth=3, width=64).eval()
    assert sum(p.numel() for p in model.parameters()) == gpt_params(64, 3)
    x = torch.randint(0, 256, (2, 12))
    assert find_layers(model, x[:1]) == model.layers == [model.embed, *model.blocks]
    check_forward_path(model, model.layers, x)
    changed = x.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 256
    a, b = model(x), model(changed)
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.allclose(a[:, 7:], b[:, 7:])  # the past never sees ahead
    with pytest.raises(ValueError, match=r"growth .* multiple of 32"):
        build_model("gpt", 2, 100)


def test_resnet1d_reads_a_signal_in_either_layout():
    torch.manual_seed(0)
    model = build_model("resnet1d", 14, 4, 10, 1).eval()
    assert len([m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]) == 14
    assert len(model.layers) == 1 + 3 * 2
    x = torch.randn(3, 1, 40)
    assert torch.equal(model(x), model(x.view(3, 1, 1, 40))) and model(x).shape == (3, 10)
    assert find_layers(model, x[:1]) == model.layers


def stdlib_hash(names: list[str]) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    return hashlib.sha256(b"".join((root / n).read_bytes() for n in names)).hexdigest()


@pytest.mark.slow  # reads and hashes the 12 MB of the library, trains and evaluates: seconds
def test_a_byte_level_run_reports_bits_per_byte_and_its_data(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--dataset", "pystdlib", "--model", "gpt", "--depth", "1", "--growth", "16", "--epochs", "1",
            "--batch-size", "512", "--optimizer", "adamw", "--lr", "0.001", "--weight-decay", "0.1", "--device", "cpu",
            "--no-progress", "--out", str(out)]  # fmt: skip
    with one_thread():
        assert main(["train", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert f"test {summary['test_bpb']:.3f} bits per byte" in capsys.readouterr().out
    assert summary["test_bpb"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert 0 < summary["test_bpb"] < 8.5  # a uniform guess is 8 bits; one epoch of 2 steps is near it
    files = config["data"]["train_files"]
    assert files == sorted(files) and not any("/test/" in f or f.startswith("test") for f in files)
    assert summary["data"]["train_sha256"] == stdlib_hash(files)  # recomputed here, from the files themselves
    assert summary["data"]["test_sha256"] == stdlib_hash(config["data"]["test_files"])
    assert "train_files" not in summary["data"]  # the lists are in config.json only
    opt = torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]
    assert {g["weight_decay"] for g in opt["param_groups"]} == {0.1, 0.0}  # AdamW: matrices decay, the rest not
    assert {tuple(g["betas"]) for g in opt["param_groups"]} == {(0.9, 0.99)}


@pytest.mark.parametrize("command", ["estimate", "bench"])
def test_the_image_timing_commands_refuse_a_language_model_in_one_line(command, tmp_path, capsys):
    assert main([command, "--model", "gpt", "--out", str(tmp_path / "b.json")] if command == "bench" else
                [command, "--model", "gpt"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes token ids" in err[0] and "estimate_saving" in err[0]


def test_an_epoch_line_of_a_language_model_shows_its_bits_per_byte():
    from freezeout.experiment.progress import epoch_line

    record = {"epoch": 2, "train_loss": 2.5, "test_bpb": 3.14159, "test_accuracy": 0.4, "num_frozen": 1,
              "epoch_seconds": 1.25}  # fmt: skip
    assert epoch_line(record, 5, 5) == "epoch 2/5: loss 2.5000, test 3.142 bits/byte, frozen 1/5, 1.2 s"
