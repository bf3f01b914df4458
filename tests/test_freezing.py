"""Frozen means frozen (docs/METHOD.md, "What frozen means"), checked bit for bit on a real training loop."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch

from freezeout import FreezeOut, freeze_times, learning_rates, param_groups, saved_tensor_bytes
from freezeout.freezing.saved import SavedStorages
from tests.helpers.models import OPTIMIZERS, batch, modes_in_call, train_step


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_lrs_follow_the_formulas_from_construction_on(tiny):
    opt = OPTIMIZERS["sgd"](param_groups(tiny, tiny.layers))
    sched = FreezeOut(opt, tiny.layers, total_steps=20, t0=0.5, schedule="linear", scale_lr=True)
    times = freeze_times(4, 0.5, "linear")
    for step in range(21):
        want = learning_rates(step, 20, times, [0.1] * 5, scale_lr=True)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(want)
        if step < 20:
            train_step(tiny, opt, sched, step)
    assert sched.num_frozen == 4


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}  # the trainer's default: NHWC


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_frozen_layers_are_bit_identical_for_the_rest_of_the_run(tiny, name, layout):
    tiny.to(memory_format=LAYOUTS[layout])
    layers = tiny.layers
    opt = OPTIMIZERS[name](param_groups(tiny, layers))
    sched = FreezeOut(opt, layers, total_steps=24, t0=0.4, schedule="linear")
    frozen_at: dict[int, dict[str, torch.Tensor]] = {}
    before = {i: snapshot(layer) for i, layer in enumerate(layers)}
    for step in range(24):
        train_step(tiny, opt, sched, step, LAYOUTS[layout])
        for i in range(sched.num_frozen):
            layer = layers[i]
            if i not in frozen_at:
                frozen_at[i] = snapshot(layer)
                # trained before it froze: weights and BN statistics moved (so this test can fail)
                assert any(not torch.equal(before[i][k], v) for k, v in frozen_at[i].items())
            # inference mode inside every call of the layer, while the model around it trains
            modes = modes_in_call(tiny, batch(0)[0].to(memory_format=LAYOUTS[layout]))
            name = next(n for n, m in tiny.named_modules() if m is layer)
            assert modes[""] and all(not v for k, v in modes.items() if k == name or k.startswith(name + "."))
            for p in layer.parameters():
                assert p.grad is None and not p.requires_grad
                assert p not in opt.state  # optimizer state released
    assert sorted(frozen_at) == [0, 1, 2, 3]
    for i, layer in enumerate(layers):
        now = snapshot(layer)
        assert all(torch.equal(frozen_at[i][k], now[k]) for k in now), f"layer {i} moved after freezing"
    assert tiny.fc.weight.requires_grad and tiny.fc.weight.grad is not None  # the rest still trains


def test_bn_uses_running_stats_once_frozen(tiny):
    opt = OPTIMIZERS["sgd"](param_groups(tiny, tiny.layers))
    sched = FreezeOut(opt, tiny.layers, total_steps=4, t0=0.5, schedule="linear")
    for step in range(4):
        train_step(tiny, opt, sched, step)
    tiny.train()
    x, _ = batch(99)
    block = tiny.blocks[0]
    with torch.no_grad():
        h = tiny.stem(x)
        reference = copy.deepcopy(block).eval()  # a plain eval-mode copy: the oracle
        assert torch.equal(block(h), reference(h))


def test_saved_for_backward_bytes_match_a_hand_frozen_oracle(tiny):
    oracle = copy.deepcopy(tiny)
    opt = OPTIMIZERS["sgd"](param_groups(tiny, tiny.layers))
    sched = FreezeOut(opt, tiny.layers, total_steps=10, t0=0.5, schedule="linear")
    x, _ = batch(0)
    _, full = saved_tensor_bytes(lambda: tiny(x))
    for step in range(7):  # t = 0.7: layers with t_i in {0.5, 0.625} frozen
        train_step(tiny, opt, sched, step)
    assert sched.num_frozen == 2
    oracle.train()
    for layer in oracle.layers[:2]:
        layer.requires_grad_(False)
        layer.eval()
    tiny.train()
    _, ours = saved_tensor_bytes(lambda: tiny(x))
    _, want = saved_tensor_bytes(lambda: oracle(x))
    assert ours == want
    assert ours < full


def test_a_model_with_frozen_layers_still_pickles(tiny):
    opt = OPTIMIZERS["sgd"](param_groups(tiny, tiny.layers))
    sched = FreezeOut(opt, tiny.layers, total_steps=2, t0=0.5, schedule="linear")
    train_step(tiny, opt, sched, 0)
    train_step(tiny, opt, sched, 1)
    clone = pickle.loads(pickle.dumps(tiny))
    buf = io.BytesIO()
    torch.save(tiny, buf)
    clone.train()
    modes = modes_in_call(clone, batch(0)[0])
    assert not modes["stem"] and modes["fc"]  # the copy runs frozen like the original


@pytest.mark.parametrize("scale_lr", [True, False])
@pytest.mark.parametrize("schedule", ["linear", "cubic"])
def test_t0_one_is_plain_cosine_and_never_freezes(tiny, schedule, scale_lr):
    # t0 = 1 is the paper's baseline: every t_i is 1, and t = 1 at the last step must not count as "due"
    total, n = 8, len(tiny.layers)
    opt = OPTIMIZERS["sgd"](param_groups(tiny, tiny.layers))
    sched = FreezeOut(opt, tiny.layers, total_steps=total, t0=1.0, schedule=schedule, scale_lr=scale_lr)
    base_lrs = [0.1] * (n + 1)
    for step in range(total + 1):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs == pytest.approx(learning_rates(step, total, [1.0] * n, base_lrs, scale_lr))
        assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * step / total))] * (n + 1), abs=1e-12)
        assert sched.num_frozen == 0
        assert all(p.requires_grad for p in tiny.parameters())
        if step < total:
            train_step(tiny, opt, sched, step)
            assert all(m.training for m in tiny.modules())  # no layer was switched to eval mode
            assert all(p.grad is not None and p in opt.state for p in tiny.parameters())
    assert sched.step_count == total and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_saved_bytes_count_each_storage_once_whoever_counts():
    # exp saves its result b, b * b saves b twice (one storage), a * a saves a twice: two storages of 1 KiB
    a = torch.randn(256, requires_grad=True)
    saved = SavedStorages()
    with torch.autograd.graph.saved_tensors_hooks(saved.add, lambda t: t):
        b = a.exp()
        (b * b + a * a).sum()
    assert saved.nbytes == 2 * 256 * 4 and len(saved.sizes) == 2
    assert saved_tensor_bytes(lambda: (lambda b: (b * b + a * a).sum())(a.exp()))[1] == saved.nbytes
