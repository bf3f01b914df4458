"""timm's CNNs as their users see them (look-alikes written here): the layers found, what freezes, what folds, and
training with folds the same as without."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import FreezeOut, find_layers, param_groups
from freezeout.compat import BatchNormBase
from freezeout.freezing.folding.tail import find_tail
from freezeout.layers import as_layers
from tests.helpers.models import randomise_batchnorm
from tests.helpers.timm_lookalikes import (
    BatchNormAct2d,
    CountsCalls,
    EfficientNet,
    RegNet,
    ReusesInput,
    StemReused,
    TimmResNet,
)

IMG = torch.randn(1, 3, 16, 16, dtype=torch.float64)


def names(model: nn.Module, layers: list) -> list[str]:
    by_id = {id(m): n for n, m in model.named_modules()} | {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(x)] if isinstance(x, nn.Module) else "+".join(by_id[id(m)] for m in x) for x in layers]


def build(make):
    torch.manual_seed(0)
    model = make().double()
    randomise_batchnorm(model)
    return model


def head_params(model: nn.Module, layers: list) -> set[int]:
    inside = {id(p) for layer in as_layers(layers) for p in layer.parameters()}
    return {id(p) for p in model.parameters()} - inside


STAGES = ["blocks.1.0", "blocks.1.1", "blocks.2.0", "blocks.2.1", "blocks.2.2"]
MODELS = {
    # a trailing stage of one block (EfficientNet's blocks.6, MobileNetV3's blocks.5) is a layer, not the head's
    "efficientnet": (
        lambda: EfficientNet("ir"),
        ["conv_stem+bn1", "blocks.0.0", *STAGES, "blocks.3.0"],
        ("conv_head", "bn2", "classifier"),
    ),
    "mobilenetv3": (
        lambda: EfficientNet("cna"),
        ["conv_stem+bn1", "blocks.0.0", *STAGES, "blocks.3.0"],
        ("conv_head", "classifier"),
    ),
    # each residual block of conv-norm-act units is one layer, not one per unit; stages of one block too
    "regnet": (RegNet, ["stem", "s1.b1", "s2.b1", "s3.b1", "s3.b2", "s4.b1", "s4.b2", "s4.b3"], ("head",)),
    "resnet": (TimmResNet, ["conv1+bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1"], ("fc",)),
}


@pytest.mark.parametrize("name", MODELS)
def test_the_layers_found_and_everything_but_the_head_freezes(name):
    make, want, head = MODELS[name]
    model = build(make)
    layers = find_layers(model, IMG)
    assert names(model, layers) == want
    # what never freezes is exactly the head's parameters
    assert head_params(model, layers) == {id(p) for n in head for p in model.get_submodule(n).parameters()}


def test_a_batchnorm_subclass_folds_only_when_its_forward_is_the_batch_norm_then_a_tail():
    assert find_tail(BatchNormAct2d(4).eval()) is not None
    assert find_tail(ReusesInput(4).eval()) is None  # reads its input again after normalising
    assert find_tail(CountsCalls(4).eval()) is None  # an in-place update the fold would skip


def train(make, fuse: bool, steps: int = 6):
    """Train a look-alike with FreezeOut (every layer frozen by the end); losses, weights, folds that ran."""
    model = build(make)
    layers = find_layers(model, IMG)
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.05, momentum=0.9)
    sched = FreezeOut(opt, layers, steps, t0=0.2, schedule="linear", fuse=fuse)
    losses = []
    for s in range(steps):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nothing trainable feeds the frozen layers; a warning is not the point
            loss = F.cross_entropy(model(x), torch.arange(4) % 5)
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(loss.detach())
    model.train()
    out = model(IMG)  # every layer frozen: the folds run in this training forward
    folds = [f for r in sched._frozen.records for e in r.effects for f in getattr(e, "folds", {}).values()]
    ran = {id(f.pair.bn) for f in folds if f.weight is not None}
    bns = [m for layer in as_layers(layers) for m in layer.all_modules() if isinstance(m, BatchNormBase)]
    held = next((layer.modules for layer in as_layers(layers) if len(layer.modules) > 1), ())  # a root-held stem
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()], out.detach(), ran, bns, held


@pytest.mark.parametrize("name", ["efficientnet", "regnet", "resnet"])
def test_every_batchnorm_of_the_layers_folds_and_training_matches_fuse_false(name):
    make = MODELS[name][0]
    plain, fused = train(make, False), train(make, True)
    _, _, _, ran, bns, _ = fused
    assert plain[3] == set()
    # every BatchNormAct2d included; a stem the root holds (conv1, bn1 as one layer) has no forward to prove a fold
    assert ran == {id(m) for m in bns if all(m is not h for h in fused[5])} and ran
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(fused[1], plain[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused[2], plain[2], rtol=1e-10, atol=1e-12)


def test_a_stem_whose_conv_output_feeds_a_second_branch_does_not_fold():
    plain, fused = train(StemReused, False), train(StemReused, True)
    stem_bn = fused[4][0]  # the input group's BatchNorm, bn1
    assert id(stem_bn) not in fused[3] and len(fused[3]) == len(fused[4]) - 1
    torch.testing.assert_close(fused[2], plain[2], rtol=1e-10, atol=1e-12)
