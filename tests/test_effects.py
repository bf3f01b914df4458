"""Frozen state that real training code cannot break (docs/METHOD.md, "What frozen means"): whatever sets the
mode, every micro-batch and copy cut, nothing left to train, and ``close()`` leaving no trace."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import FreezeOut, find_layers, is_frozen, param_groups, remove_effects, saved_tensor_bytes
from freezeout.freezing import requested_training
from tests.helpers.lookalikes import TinyGPT
from tests.helpers.models import OPTIMIZERS, TinyNet, batch, modes_in_call, randomise_batchnorm


def tokens(step: int, n: int = 4) -> torch.Tensor:
    return torch.randint(0, 13, (n, 8), generator=torch.Generator().manual_seed(step))


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())


def frozen_tinynet(fuse: bool, steps: int = 5):
    torch.manual_seed(0)
    model = TinyNet()
    randomise_batchnorm(model)
    opt = OPTIMIZERS["sgd"](param_groups(model, model.layers))
    sched = FreezeOut(opt, model.layers, 8, t0=0.3, schedule="linear", fuse=fuse)
    for s in range(steps):
        model.train()
        x, y = batch(s)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    return model, opt, sched


def plain_eval_copy(module: nn.Module) -> nn.Module:
    """The oracle: a copy with FreezeOut's effects stripped, in eval mode."""
    oracle = copy.deepcopy(module)
    remove_effects(oracle)
    return oracle.eval()


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("how", ["flag", "train()", "lightning-restore"])
def test_frozen_is_frozen_however_the_mode_is_set(fuse, how):
    model, _, sched = frozen_tinynet(fuse)
    assert sched.num_frozen >= 2
    frozen = [m for layer in model.layers[: sched.num_frozen] for m in layer.modules()]
    if how == "flag":  # a direct write on a frozen BatchNorm
        for m in frozen:
            m.training = True
    elif how == "train()":
        for m in frozen:
            m.train()
    else:  # Lightning's validation loop: eval(), then each module's flag written back as it was found
        found = {m: m.training for m in model.modules()}
        model.eval()
        for m, flag in found.items():
            m.training = flag
    # while frozen a module reads as a hand-frozen copy does (eval); what the user set is kept for after close()
    assert not any(m.training for m in frozen)
    assert all(requested_training(m) == (how != "lightning-restore") for m in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = batch(20)[0]
    layer = model.blocks[0]
    h = model.stem(x).detach()
    want = plain_eval_copy(layer)(h)
    got = layer(h)  # a training forward: grad on, flags say train
    if fuse:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(got, want)
    model(x).sum().backward()
    after = model.state_dict()
    prefixes = ("stem.", "blocks.0.", "blocks.1.", "blocks.2.")[: sched.num_frozen]
    frozen_keys = [k for k in before if k.startswith(prefixes)]
    assert frozen_keys and all(torch.equal(before[k], after[k]) for k in frozen_keys)  # statistics fixed


def test_fuse_on_and_off_compute_the_same_function_after_an_explicit_bn_train():
    outs = []
    for fuse in (False, True):
        model, _, _ = frozen_tinynet(fuse)
        model.train()
        model.blocks[0][1].train()  # an explicit train() on a frozen BatchNorm
        outs.append(model(batch(30)[0]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def gpt_run(total=8, accumulate=3, stop=None, state=None):
    """A nanoGPT-style loop with gradient accumulation on a GPT with a tied head: per micro-batch saved bytes."""
    torch.manual_seed(0)
    model = TinyGPT()
    layers = find_layers(model, tokens(0))
    opt = torch.optim.AdamW(param_groups(model, layers, weight_decay=0.01), lr=1e-2)
    sched = FreezeOut(opt, layers, total, t0=0.3, schedule="linear")
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])  # the blocks' dropout
        start = state["sched"]["step_count"]
    saved = []
    for step in range(start, total if stop is None else stop):
        model.train()
        row = []
        for micro in range(accumulate):
            loss, nbytes = saved_tensor_bytes(
                lambda i=step * accumulate + micro: lm_loss(model, tokens(i)) / accumulate
            )
            loss.backward()
            row.append(nbytes)
        saved.append((sched.num_frozen, row))
        opt.step()
        opt.zero_grad()
        sched.step()
    snapshot = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}
    snapshot["rng"] = torch.get_rng_state()
    return model, sched, saved, {**snapshot, "sched": sched.state_dict()}


def test_gradient_accumulation_every_micro_batch_is_cut_and_resume_is_bit_identical():
    model, sched, saved, _ = gpt_run()
    assert sched.num_frozen == len(sched.layers)
    for frozen, row in saved:
        assert len(set(row)) == 1, (frozen, row)  # micro-batches 2..N keep what the first keeps
    by_frozen = {frozen: row[0] for frozen, row in saved}
    assert by_frozen[max(by_frozen)] < by_frozen[0]
    # resume after a freeze (the first step after it cut as in the uninterrupted run)
    _, half, _, state = gpt_run(stop=4)
    assert half.num_frozen > 0
    resumed, _, saved_b, _ = gpt_run(state=state)
    assert saved_b == saved[4:]
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_deep_copy_after_freezing_runs_frozen_and_cut_like_the_original():
    model, sched, _, _ = gpt_run(stop=5)
    assert sched.num_frozen > 0
    twin = copy.deepcopy(model)  # an EMA or best-model copy
    ids = tokens(99)
    _, mine = saved_tensor_bytes(lambda: lm_loss(model, ids))
    _, theirs = saved_tensor_bytes(lambda: lm_loss(twin, ids))
    assert mine == theirs
    assert remove_effects(twin) > 0  # the copy's own effects, bound to the copy
    for p in twin.parameters():
        p.requires_grad_(True)
    _, plain = saved_tensor_bytes(lambda: lm_loss(twin, ids))
    assert plain > mine
    _, again = saved_tensor_bytes(lambda: lm_loss(model, ids))
    assert again == mine  # the original kept its own


class LoRA(nn.Module):
    """A LoRA-style adapter around a frozen linear map: only ``a`` and ``b`` train."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.randn(rank, base.in_features) * 0.1)
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.a), self.b)


def test_adapters_as_the_only_trainable_parameters_last_layer_trains_to_the_end(caplog):
    torch.manual_seed(0)
    model = TinyGPT()
    for block in model.h:
        block.mlp.fc1 = LoRA(block.mlp.fc1)
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith((".a", ".b")))
    layers = list(model.h)
    groups = [{"params": [p for p in g["params"] if p.requires_grad]} for g in param_groups(model, layers)]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-2)
    total = 10
    with caplog.at_level(logging.INFO, logger="freezeout"):
        sched = FreezeOut(opt, layers, total, t0=0.3, schedule="linear")
    assert "the last layer trains to the end" in caplog.text
    last = [p.detach().clone() for p in model.h[-1].parameters() if p.requires_grad]
    moved_late = False
    for step in range(total):
        loss = lm_loss(model, tokens(step))
        loss.backward()  # must not raise "does not require grad" once the others froze
        opt.step()
        opt.zero_grad()
        if sched.num_frozen == len(layers) - 1:
            now = [p for p in model.h[-1].parameters() if p.requires_grad]
            moved_late = moved_late or any(not torch.equal(a, b) for a, b in zip(last, now))
        last = [p.detach().clone() for p in model.h[-1].parameters() if p.requires_grad]
        lr = sched.head_lr()
        sched.step()
        assert lr > 0  # the logged LR is the last layer's, never group 0's 0
    assert sched.num_frozen == len(layers) - 1 and moved_late
    assert sched.head_lr() == pytest.approx(0.0, abs=1e-12)  # its cosine ends at 0, as the head's would


def pristine(model: nn.Module) -> list:
    return [
        (name, sorted(m.__dict__.keys() - {"_forward_pre_hooks", "_forward_hooks"}), len(m._forward_pre_hooks),
         len(m._forward_hooks), m.training)
        for name, m in model.named_modules()
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["tinynet", "gpt"])
def test_close_leaves_no_trace_and_a_second_stage_trains_every_layer(kind):
    torch.manual_seed(0)
    model = TinyNet() if kind == "tinynet" else TinyGPT()
    example = batch(0)[0] if kind == "tinynet" else tokens(0)
    layers = model.layers if kind == "tinynet" else find_layers(model, example)
    held_back = next(model.parameters())  # the user froze this one before FreezeOut came
    held_back.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = pristine(model)
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.05, momentum=0.9)

    def loss_of(s):
        return F.cross_entropy(model(batch(s)[0]), batch(s)[1]) if kind == "tinynet" else lm_loss(model, tokens(s))

    with FreezeOut(opt, layers, 6, t0=0.3, schedule="linear") as sched:
        for s in range(6):
            model.train()
            loss_of(s).backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        assert sched.num_frozen == len(layers) and pristine(model) != before
    assert pristine(model) == before  # no hook, patched attribute, lock or fold left
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(RuntimeError, match="after close"):
        sched.step()
    assert sched.num_frozen == len(layers)  # what the run froze
    # the second stage: train() trains every module, every parameter gets its gradient (no cut left)
    held_back.requires_grad_(True)
    model.train()
    assert all(modes_in_call(model, example).values())
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    loss_of(7).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(not torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    # TorchScript and export see a plain model
    model.eval()
    if kind == "tinynet":  # (torch's MultiheadAttention does not jit.trace, FreezeOut or not)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch 2.13
            traced = torch.jit.trace(model, (example,))
        torch.testing.assert_close(traced(example), model(example))
    torch.export.export(model, (example,))


def test_head_lr_is_the_heads_not_group_zeros():
    model = TinyNet()
    opt = torch.optim.SGD(param_groups(model, model.layers), lr=0.1)  # the layers' groups first, the rest last
    sched = FreezeOut(opt, model.layers, 10, t0=0.3, schedule="linear")
    for _ in range(5):
        sched.step()
        assert sched.head_lr() == opt.param_groups[-1]["lr"]
    assert opt.param_groups[0]["lr"] == 0.0 < sched.head_lr()
    assert sched.head_lr(2) == sched.lrs_at(2)[-1]


def test_load_state_dict_cannot_go_back_after_a_freeze():
    model, _, sched = frozen_tinynet(fuse=True, steps=3)
    assert sched.num_frozen > 0
    earlier = {**sched.state_dict(), "step_count": 1}
    with pytest.raises(ValueError, match="cannot go back to an earlier step once layers are frozen"):
        sched.load_state_dict(earlier)
    assert is_frozen(model.stem) and sched.step_count == 3


def test_step_to_is_n_steps_and_refuses_to_go_back_past_a_freeze():
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    opts = [torch.optim.SGD(param_groups(m, m.layers), lr=0.1) for m in (a, b)]
    stepped = FreezeOut(opts[0], a.layers, 10, t0=0.3, schedule="linear")
    clocked = FreezeOut(opts[1], b.layers, 10, t0=0.3, schedule="linear")
    for _ in range(6):
        stepped.step()
    clocked.step_to(6)  # skipping ahead: every freeze due on the way
    assert clocked.get_last_lr() == stepped.get_last_lr() and clocked.num_frozen == stepped.num_frozen > 1
    assert clocked.step_count == 6
    clocked.step_to(6)  # the same step again changes nothing
    with pytest.raises(ValueError, match=r"step_to\(2\).*cannot go back past a freeze"):
        clocked.step_to(2)
    with pytest.raises(ValueError, match="n must be"):
        clocked.step_to(-1)
