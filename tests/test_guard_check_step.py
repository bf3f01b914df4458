"""The guard's check step (the first training forward after a freeze) keeps no more for backward than the step
before it: under activation checkpointing frozen layers run unchecked (eval mode), so a check pass that let a
hooked activation or a tied weight flow into them held every frozen block's activations for that one step."""

from __future__ import annotations

import itertools
import weakref

import pytest
import torch
import torch.nn.functional as F

import freezeout
from freezeout.guard import FrozenInputWarning
from tests.helpers.lookalikes import TinyGPT, VisionTransformer


def held_bytes(fn):
    """``fn()`` and the bytes autograd still holds for backward when it returns (storages counted once)."""
    packed: dict[tuple[int, int], tuple[weakref.ref, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        packed[(s.data_ptr(), s.nbytes())] = (weakref.ref(t), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(n for ref, n in packed.values() if ref() is not None)


def test_memory_never_grows_as_layers_freeze_under_activation_checkpointing():
    torch.manual_seed(0)
    model = TinyGPT(depth=4, checkpoint="forward")  # HF's way: blocks checkpointed, token embedding output hooked
    layers = [model.wpe, *model.h]  # wte is tied to the head: it trains to the end
    opt = torch.optim.SGD(freezeout.param_groups(model, layers), lr=0.1)
    steps = 12
    sched = freezeout.FreezeOut(opt, layers, steps, t0=0.3, schedule="linear")
    ids = torch.randint(0, 13, (4, 8))
    held, frozen = [], []
    for _ in range(steps):
        loss, nbytes = held_bytes(lambda: model(ids).logsumexp(-1).mean())
        loss.backward()
        opt.step()
        opt.zero_grad()
        held.append(nbytes)
        frozen.append(sched.num_frozen)
        sched.step()
    assert frozen[-1] == len(layers) and frozen[0] == 0
    checks = [s for s in range(1, steps) if frozen[s] > frozen[s - 1]]
    assert len(checks) >= 4  # several check steps, each the first after a freeze
    assert all(b <= a for a, b in itertools.pairwise(held)), held
    assert held[-1] < 0.7 * held[0], held


def test_a_trainable_parameter_upstream_is_never_cut_at_the_check_step():
    torch.manual_seed(0)
    model = VisionTransformer(depth=3)
    layers = list(model.blocks)  # the root cls_token and pos_embed left in the rest: they feed frozen blocks
    opt = torch.optim.SGD(freezeout.param_groups(model, layers), lr=0.1)
    sched = freezeout.FreezeOut(opt, layers, 4, t0=0.3, schedule="linear")
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.warns(FrozenInputWarning, match="cls_token"):
        for _ in range(4):
            F.cross_entropy(model(x), y).backward()
            if sched.num_frozen:  # the gradient reaches it through the frozen blocks, as without FreezeOut
                assert model.cls_token.grad is not None and model.cls_token.grad.abs().sum() > 0
            opt.step()
            opt.zero_grad()
            sched.step()
    assert sched.num_frozen == len(layers)
