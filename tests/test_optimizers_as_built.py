"""The optimizer a user already builds, taken as it is: every parameter's LR against the paper's closed form at every
step, its weight decay and betas kept, frozen parameters unmoved, resume exact (nanoGPT's decay / no-decay groups,
a single ``AdamW(model.parameters())``, timm's layer-wise decay with ``lr_scale``)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import freezeout
from tests.helpers.drop_in import NanoGPT, closed_form_lr, create_optimizer_v2, get_batch
from tests.helpers.lookalikes import VisionTransformer

TOTAL, LR = 24, 1e-3


def nanogpt():
    torch.manual_seed(0)
    model = NanoGPT()
    opt = model.configure_optimizers(0.1, LR, (0.9, 0.95), "cpu")
    return model, opt, [model.transformer.wpe, *model.transformer.h]


def single_group():
    torch.manual_seed(0)
    model = NanoGPT()
    return model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01), [
        model.transformer.wpe, *model.transformer.h
    ]  # fmt: skip


def layer_decay():
    torch.manual_seed(0)
    model = VisionTransformer(depth=3)
    opt = create_optimizer_v2(model, "adamw", lr=LR, weight_decay=0.05, layer_decay=0.75)
    return model, opt, [(model.patch_embed, model.cls_token, model.pos_embed), *model.blocks]


CASES = {"nanogpt": nanogpt, "single_group": single_group, "layer_decay": layer_decay}


def loss_at(model, step):
    torch.manual_seed(step)  # the ViT look-alike has dropout: the same draws in every run of a step
    if isinstance(model, NanoGPT):
        return model(*get_batch(step))[1]
    g = torch.Generator().manual_seed(step)
    return F.cross_entropy(model(torch.randn(4, 3, 8, 8, generator=g)), torch.randint(5, (4,), generator=g))


def train(model, opt, sched, steps):
    for step in steps:
        opt.zero_grad()
        loss_at(model, step).backward()
        opt.step()
        sched.step()


def what_each_parameter_had(opt, model, layers):
    """Before FreezeOut: each parameter's group options and lr_scale, and the index of its layer (None: the rest)."""
    index = {}
    for i, layer in enumerate(layers):
        for part in layer if isinstance(layer, tuple) else (layer,):
            for p in part.parameters() if isinstance(part, torch.nn.Module) else (part,):
                index[id(p)] = i
    had = {}
    for g in opt.param_groups:
        options = {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
        for p in g["params"]:
            had[id(p)] = (index.get(id(p)), g["lr"], options)
    assert len(had) == len(list(model.parameters()))
    return had


@pytest.mark.parametrize("case", CASES)
def test_every_parameter_follows_the_closed_form_keeps_its_options_and_freezes_for_good(case):
    model, opt, layers = CASES[case]()
    had = what_each_parameter_had(opt, model, layers)
    sched = freezeout.FreezeOut(opt, layers, TOTAL)
    n, frozen_at = len(layers), {}
    for step in range(TOTAL + 1):
        group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
        for p in model.parameters():
            layer, base, options = had[id(p)]
            g = group_of[id(p)]
            want = options.get("lr_scale", 1.0) * closed_form_lr(step, TOTAL, layer, n, base)
            assert g["lr"] == pytest.approx(want, rel=1e-12, abs=1e-18), (case, step, layer)
            assert {k: g[k] for k in options} == options  # weight decay, betas, lr_scale: as the user built them
        for i in range(sched.num_frozen):
            frozen_at.setdefault(i, [p.detach().clone() for p in model.parameters() if had[id(p)][0] == i])
        for i, before in frozen_at.items():
            now = [p for p in model.parameters() if had[id(p)][0] == i]
            assert all(torch.equal(a, b) for a, b in zip(before, now)), f"layer {i} moved after its freeze"
        if step < TOTAL:
            train(model, opt, sched, [step])
    assert sched.num_frozen == n and len(frozen_at) == n
    decayed = {had[id(p)][2]["weight_decay"] for p in model.parameters() if p.dim() >= 2}
    assert 0.0 not in decayed or case == "layer_decay"  # nanoGPT decays its embeddings; timm spares pos/cls


@pytest.mark.parametrize("case", CASES)
def test_building_the_optimizer_the_same_way_resumes_bit_identically(case):
    model, opt, layers = CASES[case]()
    sched = freezeout.FreezeOut(opt, layers, TOTAL)
    train(model, opt, sched, range(TOTAL))
    at = 15  # the first layer (t_0 = 0.512, step 12.3) is frozen by then
    model2, opt2, layers2 = CASES[case]()
    sched2 = freezeout.FreezeOut(opt2, layers2, TOTAL)
    train(model2, opt2, sched2, range(at))
    assert sched2.num_frozen >= 1
    saved = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved)
    model3, opt3, layers3 = CASES[case]()  # a fresh process: everything built as at the start
    sched3 = freezeout.FreezeOut(opt3, layers3, TOTAL)
    model3.load_state_dict(state["model"])
    opt3.load_state_dict(state["opt"])
    sched3.load_state_dict(state["sched"])
    train(model3, opt3, sched3, range(at, TOTAL))
    for (name, a), b in zip(model.state_dict().items(), model3.state_dict().values()):
        assert torch.equal(a, b), name
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt3.param_groups]
