"""Frozen layers really leave autograd on models as people build them: tied heads, parameters held by the root,
gradient checkpointing, layers listed out of order; and the one-pass check after each freeze says so otherwise."""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import FreezeOut, FrozenInputWarning, find_layers, param_groups, saved_tensor_bytes
from freezeout.layers import as_layers
from tests.helpers.lookalikes import TinyGPT, VisionTransformer
from tests.helpers.models import TinyNet, batch


def tokens(step: int, n: int = 4) -> torch.Tensor:
    return torch.randint(0, 13, (n, 8), generator=torch.Generator().manual_seed(step))


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())


def train(model, layers, data, loss, total, **kwargs):
    """FreezeOut to the end of ``total`` steps; saved-for-backward bytes of each step's forward, and how many layers
    were frozen in it."""
    opt = torch.optim.AdamW(param_groups(model, layers, weight_decay=0.01), lr=1e-2)
    sched = FreezeOut(opt, layers, total, t0=0.3, schedule="linear", **kwargs)
    saved, frozen = [], []
    for s in range(total):
        frozen.append(sched.num_frozen)
        model.train()
        opt.zero_grad()
        value, nbytes = saved_tensor_bytes(lambda s=s: loss(model, data(s)))
        value.backward()
        opt.step()
        sched.step()
        saved.append(nbytes)
    return sched, saved, frozen


def head_only_bytes(model: TinyGPT, ids: torch.Tensor) -> int:
    """The oracle: what autograd must keep when only the head trains (the blocks run without grad)."""
    with torch.no_grad():
        pos = torch.arange(ids.shape[1])
        x = model.wte(ids) + model.wpe(pos)
        for block in model.h:
            x = block(x)
    return saved_tensor_bytes(lambda: F.cross_entropy(model.lm_head(model.ln_f(x)).flatten(0, 1), ids.flatten()))[1]


def test_tied_head_trains_to_the_end_and_frozen_blocks_leave_backward():
    torch.manual_seed(0)
    model = TinyGPT()
    layers = find_layers(model, tokens(0)[:1])
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(m)] for m in layers] == ["wpe", "h.0", "h.1", "h.2", "h.3"]  # wte is the head's weight too
    head = []
    _sched, saved, frozen = train(
        model, layers, tokens, lambda m, ids: (head.append(m.lm_head.weight.detach().clone()), lm_loss(m, ids))[1], 20
    )
    assert frozen[-2:] == [5, 5] and not torch.equal(head[-1], model.lm_head.weight)  # the head still trains
    assert model.lm_head.weight is model.wte.weight and model.wte.weight.requires_grad
    oracle = head_only_bytes(model, tokens(19))
    assert saved[0] > 10 * oracle and saved[-1] == pytest.approx(oracle, rel=0.05)


def test_a_tied_layer_given_explicitly_is_refused_naming_both():
    model = TinyGPT()
    layers = [model.wte, *model.h]
    with pytest.raises(ValueError, match=r"layers\[0\] shares its parameter 'wte.weight' with 'lm_head.weight'"):
        param_groups(model, layers)
    # without param_groups (groups built by hand): refused at the first step, before anything freezes
    groups = [{"params": list(as_layers([x])[0].parameters())} for x in layers]
    groups.append({"params": [*model.wpe.parameters(), *model.ln_f.parameters()]})
    opt = torch.optim.SGD(groups, lr=0.1)
    sched = FreezeOut(opt, layers, 10)
    lm_loss(model, tokens(0)).backward()
    with pytest.raises(ValueError, match=r"tied weights.* Leave the shared module out"):
        sched.step()


def test_root_parameters_left_out_are_named_with_their_cost_and_find_layers_attaches_them():
    def vit():
        torch.manual_seed(0)
        return VisionTransformer(depth=4, dim=16)

    x = torch.randn(4, 3, 8, 8)
    data, loss = (lambda s: x), (lambda m, x: F.cross_entropy(m(x), torch.zeros(4, dtype=torch.long)))
    model = vit()
    with pytest.warns(FrozenInputWarning, match=r"'pos_embed', 'cls_token' flow into frozen layers\[1\].* MiB saved"):
        _, leaky, _ = train(model, [model.patch_embed, *model.blocks], data, loss, 10)
    with pytest.raises(ValueError, match="'pos_embed', 'cls_token' flow into frozen"):
        model = vit()
        train(model, [model.patch_embed, *model.blocks], data, loss, 10, strict=True)
    model = vit()
    _, saved, frozen = train(model, find_layers(model, x[:1]), data, loss, 10)
    for p in model.parameters():  # the oracle: everything but the final norm and the head frozen by hand
        p.requires_grad_(False)
    for p in (*model.norm.parameters(), *model.head.parameters()):
        p.requires_grad_(True)
    oracle = saved_tensor_bytes(lambda: model(x))[1]
    assert frozen[-1] == 5 and saved[-1] == pytest.approx(oracle, rel=0.05) and leaky[-1] > 10 * oracle


@pytest.mark.parametrize("depth", [2, 4])
def test_gradient_checkpointing_memory_falls_as_layers_freeze(depth):
    # As Hugging Face runs it: checkpointed blocks and a hook that makes the embedding's output require grad
    torch.manual_seed(0)
    model = TinyGPT(checkpoint="forward", depth=depth)
    layers = find_layers(model, tokens(0)[:1])
    grads = []

    def loss(m, ids):
        grads.append([p.detach().clone() for p in m.h[-1].parameters()])
        return lm_loss(m, ids)

    _, saved, frozen = train(model, layers, tokens, loss, 20)
    half = max(i for i, k in enumerate(frozen) if k == len(layers) // 2 + 1)  # the last step at half frozen
    assert frozen[-1] == len(layers) and saved[-1] < saved[half] < saved[0]  # falls: none > half > all frozen
    # Not even the pass that first finds the hook's output flowing into a frozen block keeps more (frozen, a block
    # is in eval mode, so not checkpointed: uncut, it would keep all its activations): no step above the one before.
    assert all(b <= a for a, b in itertools.pairwise(saved))
    last = frozen.index(len(layers))  # the last block trained, checkpointed, until it froze
    assert not torch.equal(grads[last][0], grads[last - 1][0])


def test_reentrant_checkpointing_is_named_as_what_keeps_frozen_layers_in_backward():
    torch.manual_seed(0)
    model = TinyGPT(checkpoint="reentrant")
    with pytest.warns(FrozenInputWarning, match="reentrant activation checkpointing"):
        train(model, find_layers(model, tokens(0)[:1]), tokens, lm_loss, 12)


@pytest.mark.parametrize("order", [[3, 2, 1, 0], [0, 2, 1, 3]])
def test_layers_out_of_forward_order_are_refused_before_the_first_freeze(order):
    model = TinyNet()
    layers = [model.layers[i] for i in order]
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.1)
    sched = FreezeOut(opt, layers, 10, t0=0.5)
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    ran = [order.index(k) for k in range(4)]  # list positions in the order the layers run
    a, b = next((a, b) for a, b in itertools.pairwise(ran) if b < a)
    with pytest.raises(ValueError, match=rf"layers\[{a}\] runs before layers\[{b}\]"):
        sched.step()
    assert sched.num_frozen == 0


def test_a_trainable_module_before_the_layers_is_named():
    model = TinyNet()
    layers = list(model.blocks)  # the stem is left to the rest: it feeds the frozen blocks
    with pytest.warns(FrozenInputWarning, match=r"'stem.weight' flow into frozen layers\[0\]"):
        train(model, layers, batch, lambda m, xy: F.cross_entropy(m(xy[0]), xy[1]), 8)


def test_the_check_and_the_freezes_leave_no_hook_behind_close_and_a_watched_model_still_copies():
    model = TinyNet()
    hooked = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())  # noqa: E731
    opt = torch.optim.SGD(param_groups(model, model.layers), lr=0.1)
    sched = FreezeOut(opt, model.layers, 6, t0=0.5)
    assert hooked() > 0  # armed: waits for the first training forward
    pickle.dumps(model)
    copy.deepcopy(model)(batch(0)[0])
    counts = []
    for s in range(6):
        x, y = batch(s)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
        counts.append(hooked())
        pickle.dumps(model)
        copy.deepcopy(model)(batch(0)[0])
    assert counts[-1] == len(model.layers) + 1  # each frozen layer its cut, the last one the hook ending the prefix
    sched.close()
    assert hooked() == 0 and not any("forward" in m.__dict__ or "train" in m.__dict__ for m in model.modules())


def test_a_trainable_parameter_upstream_is_never_cut_at_the_check_step():
    torch.manual_seed(0)
    model = VisionTransformer(depth=3)
    layers = list(model.blocks)  # the root cls_token and pos_embed left in the rest: they feed frozen blocks
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.1)
    sched = FreezeOut(opt, layers, 4, t0=0.3, schedule="linear")
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
