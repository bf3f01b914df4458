"""Folding exact or absent: each way real code can make a fold wrong gets the function ``fuse=False`` computes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import FreezeOut, param_groups
from freezeout.experiment.models import DenseNetBC
from freezeout.freezing.folding import find_fold
from tests.helpers.models import randomise_batchnorm


class Untraceable(nn.Module):
    """Data-dependent control flow (fx cannot trace it) around a Conv -> BN Sequential it calls its own way."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:  # always true, but fx cannot know
            conv, bn = self.seq
            if self.how == "reversed":
                return conv(bn(x))
            if self.how == "reused":
                return conv(bn(conv(x)))
            if self.how == "conv alone":
                return conv(x)
            return self.seq(x)
        return x


class Plain(nn.Module):
    """A traceable Conv -> BN -> ReLU layer with named children (so a submodule can be replaced)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.ModuleList(layers)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.body:
            x = layer(x)
        return self.fc(x.mean((2, 3)))


def frozen_net(make, fuse: bool, steps: int = 4):
    """``Net`` over ``make()`` layers, trained until the first two body layers froze (the stem stays trainable)."""
    torch.manual_seed(0)
    model = Net([make() for _ in range(3)])
    randomise_batchnorm(model)
    layers = list(model.body)
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.01)
    sched = FreezeOut(opt, layers, 6, t0=0.3, schedule="linear", fuse=fuse)
    for s in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(s))
        model.train()
        with warnings.catch_warnings():  # the trainable stem feeds the frozen layers: warned, not the point here
            warnings.simplefilter("ignore")
            F.cross_entropy(model(x), torch.arange(4) % 3).backward()
            opt.step()
            opt.zero_grad()
            sched.step()
    assert sched.num_frozen == 2
    return model, sched


X = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(99))


def both(make, edit=lambda model: None, fn=lambda model: model(X)):
    """``fn`` on the trained model with folding off and on, after ``edit``: the two must agree."""
    out = []
    for fuse in (False, True):
        model, _ = frozen_net(make, fuse)
        edit(model)
        model.train()
        out.append(fn(model))
    return out


@pytest.mark.parametrize("how", ["sequential", "reversed", "reused", "conv alone"])
def test_a_layer_fx_cannot_trace_folds_only_inside_the_children_it_can(how):
    plain, fused = both(lambda: Untraceable(how))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    model, _ = frozen_net(lambda: Untraceable(how), True)
    effect = find_fold(model.body[0])
    assert list(effect.scopes) == [model.body[0], model.body[0].seq]  # the layer could not prove: its child proves
    want = [model.body[0].seq] if how == "sequential" else []  # only where the Sequential's own forward runs
    assert [f.scope for f in effect.folds.values()] == want


def test_a_user_hook_on_a_folded_conv_sees_the_real_conv_output_and_acts_on_it():
    seen = {}

    def edit(model):
        conv = model.body[0].conv

        def hook(module, args, output):
            seen.setdefault(len(seen), output.detach().clone())
            return output * 2.0  # a modifying hook: before the BatchNorm, as written

        conv.register_forward_hook(hook)

    plain, fused = both(Plain, edit)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-5, atol=1e-6)  # the conv's own output, both times


def test_a_frozen_conv_that_requires_grad_again_gets_its_gradient():
    def grad_of(model):
        conv = model.body[0].conv
        conv.weight.requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(X).sum().backward()
        return conv.weight.grad

    plain, fused = both(Plain, fn=grad_of)
    assert fused is not None
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_a_replaced_submodule_runs_as_replaced():
    def edit(model):
        model.body[0].bn = nn.Identity()

    plain, fused = both(Plain, edit)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_an_in_place_edit_under_no_grad_is_seen():
    def edit(model):
        model(X)  # folds built
        with torch.no_grad():
            model.body[0].bn.running_var.mul_(4.0)
            model.body[1].conv.weight.mul_(0.5)

    plain, fused = both(Plain, edit)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_fx_symbolic_trace_and_export_in_training_mode_while_layers_are_frozen():
    model, _ = frozen_net(Plain, True)
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    want = model(X)
    graph = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(graph(X), want, rtol=1e-5, atol=1e-6)
    exported = torch.export.export(model, (X,))
    torch.testing.assert_close(exported.module()(X), want, rtol=1e-5, atol=1e-6)
    for k in ("body.0.bn.running_mean", "body.1.bn.running_var"):  # the frozen layers' statistics
        assert torch.equal(model.state_dict()[k], stats[k])


def test_jit_trace_records_the_real_batchnorm_not_the_folded_weights():
    model, _ = frozen_net(Plain, True)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in torch 2.13; a trace warns about its inputs
        traced = torch.jit.trace(model, (X,), check_trace=False)
    with torch.no_grad():
        model.body[0].bn.running_var.mul_(4.0)  # a fold baked in as a constant would not see this
    reference = copy.deepcopy(model)
    torch.testing.assert_close(traced(X), reference(X), rtol=1e-5, atol=1e-6)


def test_densenet_fast_path_falls_back_when_its_input_requires_grad():
    torch.manual_seed(0)
    outs = []
    for fuse in (False, True):
        torch.manual_seed(0)
        model = DenseNetBC(16, 4).to(memory_format=torch.channels_last)
        layers = model.layers[1:]  # the stem left out: it trains, its output requires grad
        opt = torch.optim.SGD(param_groups(model, layers), lr=0.01)
        sched = FreezeOut(opt, layers, 6, t0=0.2, schedule="linear", fuse=fuse)
        x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        for _ in range(4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
                opt.step()
                opt.zero_grad()
                sched.step()
        assert sched.num_frozen > 2
        outs.append(model(x))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)


def test_the_border_map_cache_is_bounded():
    model, _ = frozen_net(lambda: nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)), True)
    model.train()
    for size in range(4, 20):
        model(torch.randn(1, 3, size, size))
    (fold,) = find_fold(model.body[0]).folds.values()
    assert fold.border and 0 < len(fold._maps) <= 8
