"""The model and data set registries, and the CIFAR ResNet that proves a model is one registry entry."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import find_layers
from freezeout.analysis.flops import check_forward_path
from freezeout.cli import main
from freezeout.experiment.data import DATASETS, load_dataset
from freezeout.experiment.models import MODELS, build_example, build_model
from freezeout.experiment.models.resnet import BasicBlock, resnet
from freezeout.experiment.plan import steps_per_epoch
from tests.helpers.cifar_files import one_thread, write_cifar


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_at_its_default_size_and_lists_its_forward_path(name):
    spec = MODELS[name]
    model, x = build_example(name, None, None, 7, (1, 8, 8), 2, channels_last=False)
    assert model.depth == spec.default_depth
    out = model(x)  # logits: (2, 7) per image, or (2, 8, 7) per token of a language model
    assert out.shape == ((2, 7) if spec.example is None else (2, 8, 7))
    check_forward_path(model, model.layers, x)  # each layer runs once, in order, and feeds the output
    assert find_layers(model, x[:1]) == model.layers  # discovery from the traced pass agrees


@pytest.mark.parametrize("depth, per_stage", [(8, 1), (20, 3), (32, 5), (56, 9)])
def test_resnet_depth_counts_weighted_layers(depth, per_stage):
    # He et al.: 6n + 2 = the stem conv, 2 convs in each of 3n blocks, the classifier (option A: no shortcut convs)
    model = resnet(depth=depth, width=4)
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth
    assert len(model.layers) == 1 + 3 * per_stage
    widths = [b.conv2.out_channels for b in model.layers[1:]]
    assert widths == [4] * per_stage + [8] * per_stage + [16] * per_stage


def test_resnet_units_run_conv_then_batchnorm():
    block = resnet(depth=8, width=4).layers[1]
    order = []
    for name, m in block.named_children():
        m.register_forward_hook(lambda mod, args, out, name=name: order.append(name))
    block(torch.randn(1, 4, 8, 8))
    assert order == ["conv1", "bn1", "conv2", "bn2"]


def test_resnet_shortcut_is_option_a():
    # With the residual branch silenced, a downsampling block gives relu(x subsampled by 2, zero-padded channels).
    block = BasicBlock(3, 5, stride=2).eval()
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 3, 6, 6)
    expected = torch.zeros(2, 5, 3, 3)
    expected[:, :3] = x[:, :, 0::2, 0::2]
    assert torch.equal(block(x), F.relu(expected))
    assert sum(p.numel() for p in block.parameters()) == sum(
        p.numel() for m in (block.conv1, block.bn1, block.conv2, block.bn2) for p in m.parameters()
    )


@pytest.mark.parametrize("depth", [21, 6, 10_000, 20.0, True])
def test_resnet_refuses_other_depths(depth):
    with pytest.raises(ValueError, match="depth must be"):
        build_model("resnet", depth=depth)


def test_dataset_sizes_are_read_from_the_data(tmp_path):
    folder = write_cifar(tmp_path, "cifar10", packed=True, per_batch=7)
    base = {"dataset": "cifar10", "data_dir": str(folder), "batch_size": 4, "val_split": 5}
    assert steps_per_epoch(base) == -(-(5 * 7 - 5) // 4)  # 35 training images, 5 held out
    digits = load_dataset("digits")
    assert steps_per_epoch({"dataset": "digits", "batch_size": 100}) == -(-len(digits.train_y) // 100)
    for name, spec in DATASETS.items():  # the registry's shapes and classes are what the loaders give
        if spec.task == "lm" or (name == "mnist1d" and importlib.util.find_spec("mnist1d") is None):
            continue  # a byte stream has no image shape (tests/test_tasks.py); mnist1d needs the [study] extra
        if name in ("digits", "mnist1d"):  # generated or embedded: no folder to read
            data = digits if name == "digits" else load_dataset(name)
        else:
            data = load_dataset(name, str(write_cifar(tmp_path / name, name, True, 3)))
        assert tuple(data.train_x.shape[1:]) == spec.shape and data.num_classes == spec.num_classes


def test_resnet_end_to_end_through_the_cli(tmp_path, capsys):
    # The one registry entry is all it takes: train, estimate, bench and a sweep accept --model resnet.
    small = ["--model", "resnet", "--depth", "8", "--growth", "2"]
    run = ["--dataset", "digits", "--epochs", "1", "--batch-size", "500", "--device", "cpu", "--no-progress"]
    with one_thread():
        assert main(["train", *small, *run, "--out", str(tmp_path / "run")]) == 0
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["config"]["model"] == "resnet" and summary["num_layers"] == 4
        capsys.readouterr()
        assert main(["estimate", *small, "--input-size", "8", "--batch-size", "2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["num_layers"] == 4
        bench = ["--input-size", "8", "--batch-size", "2", "--steps", "4", "--repeats", "1", "--curve-points", "2"]
        assert main(["bench", *small, *bench, "--quiet", "--out", str(tmp_path / "b.json")]) == 0
        assert json.loads((tmp_path / "b.json").read_text())["model"]["name"] == "resnet"
        grid = ["--strategies", "cubic-scaled", "--t0", "0.5", "--seeds", "0", "--out", str(tmp_path / "sweep")]
        assert main(["sweep", *small, *run, *grid]) == 0
    table = json.loads((tmp_path / "sweep" / "aggregate.json").read_text())
    assert [r["strategy"] for r in table["rows"]] == ["baseline", "cubic-scaled"]
    assert table["base_config"]["model"] == "resnet"
