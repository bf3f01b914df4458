"""FreezeOut's folding (fuse=True) in real training loops: frozen weights untouched, exact resume, fuse=False as
before, compile_blocks on top, and DenseNet-BC's frozen fast path."""

from __future__ import annotations

import copy
import io
from dataclasses import replace
from unittest import mock

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from freezeout import FreezeOut, FreezeOutOptions, compile_blocks, param_groups, remove_effects
from freezeout.accel.fold import is_folded
from freezeout.experiment.models import DenseNetBC, ResNet, densenet
from tests.helpers.dynamo import DYNAMO_GRAD_PROBE
from tests.helpers.models import OPTIMIZERS, randomise_batchnorm, train_step

TOTAL = 12
pytestmark = DYNAMO_GRAD_PROBE


def build(make=lambda: DenseNetBC(10, 4), fuse: bool = True):
    torch.manual_seed(0)
    model = make()
    randomise_batchnorm(model)
    opt = OPTIMIZERS["sgd"](param_groups(model, model.layers))
    sched = FreezeOut(opt, model.layers, total_steps=TOTAL, t0=0.3, schedule="linear", fuse=fuse)
    return model, opt, sched


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("make", [lambda: DenseNetBC(10, 4), lambda: ResNet(8, 4)], ids=["densenet", "resnet"])
def test_frozen_layers_stay_bit_identical_and_nothing_leaks_into_the_state(make):
    model, opt, sched = build(make)
    keys = list(make().state_dict())
    frozen_at: dict[int, dict[str, torch.Tensor]] = {}
    off, off_opt, off_sched = build(make, fuse=False)
    for step in range(TOTAL):
        before = sched.num_frozen
        train_step(model, opt, sched, step)
        train_step(off, off_opt, off_sched, step)
        if before == 0:  # nothing ran folded yet: fuse on and off are the same run, bit for bit
            assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), off.state_dict().values()))
        for i in range(sched.num_frozen):
            frozen_at.setdefault(i, snapshot(model.layers[i]))
    assert sched.num_frozen == len(model.layers) and all(is_folded(layer) for layer in model.layers[1:])
    for i, layer in enumerate(model.layers):
        now = layer.state_dict()
        assert all(torch.equal(frozen_at[i][k], now[k]) for k in now), f"layer {i} moved after freezing"
    assert list(model.state_dict()) == keys  # no folded tensor in the state_dict, and none missing
    # after the first fold the runs differ only by float rounding, carried into what still trains
    for (k, a), b in zip(model.state_dict().items(), off.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("stop", [6, 9])  # 2 and 4 of 6 layers frozen in the checkpoint (t_i = 0.3, 0.42, ...)
def test_resume_with_fusion_is_bit_identical(stop):
    model, opt, sched = build()
    for step in range(TOTAL):
        train_step(model, opt, sched, step)
    reference = snapshot(model)
    model, opt, sched = build()
    for step in range(stop):
        train_step(model, opt, sched, step)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt, sched = build()  # a fresh model: its folds, built at load, must come from the loaded weights
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    assert sched.num_frozen > 0 and all(is_folded(layer) for layer in model.layers[1 : sched.num_frozen])
    for step in range(stop, TOTAL):
        train_step(model, opt, sched, step)
    resumed = model.state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def frozen_outputs_equal_eval_copies(model) -> list[bool]:
    """Per frozen layer: does its training forward equal, bit for bit, the plain eval-mode layer (the oracle)?"""
    out, h = [], torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    model.train()
    for layer in model.layers:
        oracle = copy.deepcopy(layer)
        remove_effects(oracle)  # the copy's modules run their class forward: the plain layer
        oracle.eval()
        with torch.no_grad():
            want = oracle(h)
        got = layer(h)
        out.append(torch.equal(got, want))
        h = want
    return out


def test_fuse_false_is_the_plain_frozen_forward_bit_for_bit():
    with mock.patch("freezeout.freezing.prefix.fold_effects", side_effect=AssertionError("folds built")):
        model, opt, sched = build(fuse=False)
        for step in range(TOTAL):
            train_step(model, opt, sched, step)
    assert not any(is_folded(layer) for layer in model.layers)
    assert all(frozen_outputs_equal_eval_copies(model))
    fused, opt, sched = build()  # the same check sees fusion: the oracle can tell the two apart
    for step in range(TOTAL):
        train_step(fused, opt, sched, step)
    assert not all(frozen_outputs_equal_eval_copies(fused))


def test_compile_blocks_traces_the_folds():
    graphs = []

    def recording(gm: torch.fx.GraphModule, inputs):  # runs the captured graph as it is: eager arithmetic
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    try:
        eager, opt, sched = build(lambda: ResNet(8, 4))
        for step in range(TOTAL):
            train_step(eager, opt, sched, step)
        model, opt, sched = build(lambda: ResNet(8, 4))
        compile_blocks(model.layers, backend=recording)
        for step in range(TOTAL):
            train_step(model, opt, sched, step)
    finally:
        torch._dynamo.reset()
    batch_norms = [sum("batch_norm" in str(n.target) for n in gm.graph.nodes) for gm in graphs]
    assert 0 in batch_norms and max(batch_norms) > 0  # frozen blocks compiled with their folds, trainable without
    for (k, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)


def step_grads(model, x, y, fast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A training step's logits and gradients, DenseNet-BC's frozen fast path on or off."""
    model.train()
    model.zero_grad(set_to_none=True)
    with mock.patch.object(densenet, "_fast", densenet._fast if fast else lambda layer, x: False):
        out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), [p.grad for p in model.parameters() if p.grad is not None]


def test_densenet_fast_path_is_exact_and_leaves_the_trainable_path_alone():
    # frozen: the stem and the first dense layer; inside block 1, so only the rectified hand-on differs
    model, opt, sched = build(lambda: DenseNetBC(16, 4))  # 2 dense layers per block
    step = 0
    while sched.num_frozen < 2:
        train_step(model, opt, sched, step)
        step += 1
    assert sched.num_frozen == 2
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    (a, ga), (b, gb) = step_grads(model, x, y, True), step_grads(model, x, y, False)
    # relu(cat(a, b)) = cat(relu(a), relu(b)) and relu(relu(x)) = relu(x): identical values, bit for bit
    assert torch.equal(a, b) and len(ga) == len(gb) and all(torch.equal(u, v) for u, v in zip(ga, gb))
    while sched.num_frozen < 4:  # the first transition freezes: it pools first, equal up to rounding
        train_step(model, opt, sched, step)
        step += 1
    (a, _), (b, _) = step_grads(model, x, y, True), step_grads(model, x, y, False)
    assert not torch.equal(a, b) and (a - b).abs().max() <= 1e-5 * b.abs().max()


def frozen_channels_last(depth: int, frozen: int):
    """A channels-last DenseNet-BC trained until ``frozen`` layers froze; the next step to train."""
    model, opt, sched = build(lambda: DenseNetBC(depth, 4))
    model.to(memory_format=torch.channels_last)
    step = 0
    while sched.num_frozen < frozen:
        train_step(model, opt, sched, step, memory_format=torch.channels_last)
        step += 1
    assert sched.num_frozen == frozen
    return model, opt, sched, step


def test_densenet_frozen_dense_layers_share_one_block_buffer_channels_last():
    # DenseNet-BC-22: 3 dense layers per block. Frozen: the stem and block 1's first two dense layers
    model, opt, sched, step = frozen_channels_last(22, 3)
    cl = torch.channels_last
    block = model.blocks[0]
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o)) for i, layer in enumerate(block)
    ]
    x, y = torch.randn(4, 3, 8, 8).contiguous(memory_format=cl), torch.randint(0, 10, (4,))
    (b, gb), (a, ga) = step_grads(model, x, y, False), step_grads(model, x, y, True)  # hooks keep the fast outputs
    first, second = outputs[0], outputs[1]
    # one buffer with room for the whole block (8 + 3 * 4 channels), each frozen layer's output a prefix view of it
    assert first._base is not None and first._base is second._base and first._base.shape[1] == 20
    assert (first.shape[1], second.shape[1]) == (12, 16) and first.data_ptr() == second.data_ptr()
    assert outputs[2]._base is None  # the trainable layer concatenates as always
    # the same function: a 1 x 1 conv as a matrix product, up to float rounding; the trainable path untouched
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(ga) == len(gb) and all(torch.allclose(u, v, rtol=1e-4, atol=1e-6) for u, v in zip(ga, gb))
    model.to(memory_format=torch.contiguous_format)  # an NCHW model: concatenation, as before (folds rebuilt)
    (c, _), (d, _) = step_grads(model, x.contiguous(), y, False), step_grads(model, x.contiguous(), y, True)
    assert outputs[0]._base is None and outputs[1]._base is None and torch.equal(c, d)
    model.to(memory_format=cl)
    for h in hooks:
        h.remove()
    # the whole block frozen: its last layer fills the buffer, and the transition reads it whole
    while sched.num_frozen < 5:
        train_step(model, opt, sched, step, memory_format=cl)
        step += 1
    (a, _), (b, _) = step_grads(model, x, y, True), step_grads(model, x, y, False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_densenet_frozen_layers_take_the_fast_path_inside_the_model_and_only_there():
    # DenseNet-BC-16 (2 dense layers per block), channels-last. Frozen: the stem, block 1 and its transition
    model, _, _, _ = frozen_channels_last(16, 4)
    cl = torch.channels_last
    x, y = torch.randn(4, 3, 8, 8).contiguous(memory_format=cl), torch.randint(0, 10, (4,))
    step_grads(model, x, y, True)  # the transition froze last: its first call proves and confirms its folds
    frozen = [*model.blocks[0], model.transitions[0]]
    calls: list[int] = []  # each frozen unit's leading ReLU module: the plain path runs it, the fast path never
    hooks = [m[0].register_forward_hook(lambda *a: calls.append(1)) for m in (*(d.body for d in frozen[:2]), frozen[2])]
    outputs: dict[int, torch.Tensor] = {}
    hooks += [m.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o)) for i, m in enumerate(frozen)]
    plain, plain_grads = step_grads(model, x, y, False)
    assert len(calls) == 3 and outputs[1].min() < 0  # the plain path: every ReLU runs, the features as they are
    calls.clear()
    fast, fast_grads = step_grads(model, x, y, True)
    assert not calls, "a frozen DenseNet-BC layer left the fast path"
    assert outputs[0]._base is outputs[1]._base is not None  # the block's one buffer, a prefix view each
    assert min(o.min() for o in outputs.values()) >= 0  # what each hands on is rectified
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)  # the same function, up to float rounding
    assert len(fast_grads) == len(plain_grads)
    for u, v in zip(fast_grads, plain_grads):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)
    # a frozen layer called on its own, outside the model's forward, is the plain layer
    calls.clear()
    with torch.enable_grad():
        alone = model.blocks[0][0](torch.randn(4, 8, 8, 8).contiguous(memory_format=cl))
    assert len(calls) == 1 and alone.min() < 0
    for h in hooks:
        h.remove()


def test_the_fuse_setting_reaches_freezeout_from_the_command_line():
    from freezeout.cli import build_parser
    from freezeout.cli.common import config_from_args
    from freezeout.experiment.config import TrainConfig
    from freezeout.experiment.data import load_dataset
    from freezeout.experiment.engine import Run

    parse = build_parser().parse_args
    config = config_from_args(parse(["train", "--out", "x", "--no-fuse", "--depth", "10", "--growth", "1"]))
    assert config.fuse is False and config_from_args(parse(["train", "--out", "x", "--fuse"])).fuse is True
    assert config_from_args(parse(["train", "--out", "x"])).fuse is FreezeOutOptions().fuse  # the option's default
    assert TrainConfig().differences(TrainConfig(fuse=True)) == ["fuse: False -> True"]  # resume refuses a mix
    data = load_dataset("digits", None, 0)
    assert Run(config, data, torch.device("cpu")).sched.fuse is False
    assert Run(replace(config, fuse=True), data, torch.device("cpu")).sched.fuse is True
    with pytest.raises(ValueError, match="fuse must be True or False"):
        TrainConfig(fuse="yes").validate()
