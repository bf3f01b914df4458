"""Frozen as a copy frozen by hand (``requires_grad_(False)`` + ``eval()``), whatever ordinary code does: a frozen
module called through ``.forward()``, a gradient asked of the input, a trainable tensor upstream, a fold proven on a
branch the call does not take, two controllers over one model, an optimizer that holds one group. Each case against
the hand-frozen copy or the unfolded run, in float64; each check, mutated off, makes its test fail."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import FoldWarning, FreezeOut, FrozenInputWarning, is_frozen, param_groups
from freezeout.freezing.folding import effect as fold_effect
from freezeout.freezing.folding import fold as fold_weights
from freezeout.freezing.folding import pairs as fold_pairs
from tests.helpers.models import randomise_batchnorm


@pytest.fixture(autouse=True)
def float64():  # this module's models and data: rounding must not blur a difference
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class DirectCalls(nn.Module):
    """A block that calls its children's ``forward`` directly: no ``__call__``, so no hook of theirs runs."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop.forward(F.relu(self.bn.forward(self.conv.forward(x)))) + x


class Shortcut(nn.Module):
    """``conv(x)`` is the shortcut when none is given: traced with a stand-in for ``shortcut``, the conv would seem to
    feed the BatchNorm alone, and a fold would change the sum."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv(x)
        if shortcut is None:
            shortcut = y
        return F.relu(self.bn(y) + shortcut)


class Net(nn.Module):
    """A stem, three blocks (the layers), a head; ``prompt``: a trainable plain tensor added after the stem."""

    def __init__(self, block: type[nn.Module], prompt: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList(block() for _ in range(3))
        self.head = nn.Linear(4, 3)
        self.prompt = torch.zeros(1, 4, 1, 1, requires_grad=True) if prompt else None

    @property
    def layers(self) -> list[nn.Module]:
        return [self.stem, *self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.prompt is not None:
            x = x + self.prompt
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)


def make(block: type[nn.Module], prompt: bool = False) -> Net:
    torch.manual_seed(0)
    model = Net(block, prompt)
    randomise_batchnorm(model)
    return model


def by_hand(model: Net, layers: list[nn.Module]) -> Net:
    """The oracle: a copy with ``layers`` frozen by hand."""
    twin = copy.deepcopy(model)
    for layer in (twin.layers[i] for i in range(len(layers))):
        layer.requires_grad_(False)
        layer.eval()
    return twin


def frozen(model: Net, layers: list[nn.Module] | None = None, **options) -> FreezeOut:
    """FreezeOut over ``layers`` (the model's own), every one frozen and the head still training."""
    layers = model.layers if layers is None else layers
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.1)
    sched = FreezeOut(opt, layers, 10, t0=0.3, schedule="linear", **options)
    sched.step_to(9)
    assert sched.num_frozen == len(layers)
    model.train()  # as a training loop does every epoch
    return sched


def test_a_frozen_module_called_through_forward_runs_in_inference_mode():
    model = make(DirectCalls)
    oracle = by_hand(model, model.layers)
    frozen(model)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    for s in range(3):
        x, y = batch(s)
        torch.manual_seed(s)  # the same dropout draws, were any drawn
        loss = F.cross_entropy(model(x), y)
        torch.manual_seed(s)
        want = F.cross_entropy(oracle(x), y)
        assert torch.equal(loss, want)  # BatchNorm on its statistics, dropout off: called directly, too
        loss.backward()
        want.backward()
        assert torch.equal(model.head.weight.grad, oracle.head.weight.grad)
        model.zero_grad()
        oracle.zero_grad()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())  # statistics fixed
    assert not any(m.training for layer in model.layers for m in layer.modules())  # read as a hand-frozen copy


def test_the_gradient_of_the_input_flows_through_frozen_layers_as_by_hand():
    # adversarial training (FGSM): the loss's gradient with respect to the input, through every frozen layer
    model = make(DirectCalls)
    oracle = by_hand(model, model.layers)
    sched = frozen(model)
    x, y = batch(0)
    x.requires_grad_(True)
    (got,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    (want,) = torch.autograd.grad(F.cross_entropy(oracle(x), y), x)
    assert torch.equal(got, want) and got.abs().sum() > 0
    with pytest.warns(FrozenInputWarning, match=r"an input of the model that requires grad .*nothing is cut"):
        sched.step()  # said once, for what it is
    seen = []
    model.blocks[2].register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    model(batch(1)[0])  # a plain step after it: nothing flows in, nothing of the frozen layers is recorded
    assert seen == [False]


def test_a_trainable_tensor_that_is_not_a_parameter_keeps_its_gradient():
    # a learned prompt held as a plain tensor (the user's own optimizer trains it) feeds the frozen blocks
    model = make(DirectCalls, prompt=True)
    oracle = by_hand(model, model.layers)
    sched = frozen(model)
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(oracle(x), y).backward()
    assert model.prompt.grad is not None and torch.equal(model.prompt.grad, oracle.prompt.grad)
    assert torch.equal(model.head.weight.grad, oracle.head.weight.grad)
    with pytest.warns(FrozenInputWarning, match=r"a tensor held by the model that requires grad \('prompt'\)"):
        sched.step()


def test_a_fold_is_proven_on_the_branch_the_call_takes(monkeypatch):
    # traced with a stand-in for `shortcut`, conv -> bn would seem to fold; the call passes None, and then it cannot
    outs = []
    for fuse in (False, True):
        model = make(Shortcut)
        frozen(model, fuse=fuse)
        outs.append(model(batch(0)[0]))  # a FoldWarning here would fail the test: nothing wrong was folded
    assert torch.equal(outs[0], outs[1])
    # mutated: symbolic stand-ins for the call's None (the old proof) "prove" the fold; only the check on real
    # tensors stops it, and says so
    monkeypatch.setattr(fold_pairs, "_concrete", lambda module, args, kwargs: {})
    model = make(Shortcut)
    frozen(model, fuse=True)
    with pytest.warns(FoldWarning, match=r"frozen layers\[\d\] \(Shortcut\) changed its output"):
        assert torch.equal(model(batch(0)[0]), outs[0])


def test_a_wrong_fold_is_caught_on_real_tensors_and_runs_unfolded(monkeypatch):
    from freezeout.experiment.models import ResNet

    def run(fuse: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = ResNet(8, 4)
        randomise_batchnorm(model)
        frozen(model, fuse=fuse)
        return model(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)))

    plain = run(False)
    real = fold_weights.folded_weights
    monkeypatch.setattr(fold_weights, "folded_weights", lambda pair: tuple(1.01 * t for t in real(pair)))
    with pytest.warns(FoldWarning, match="runs unfolded"):
        assert torch.equal(run(True), plain)  # every block's fold refused: the real modules
    monkeypatch.setattr(fold_effect, "_close", lambda got, want: None)  # mutated: the check always agrees
    assert not torch.allclose(run(True), plain, rtol=1e-6)


def test_a_second_freezeout_over_layers_an_open_one_froze_is_refused_and_nothing_changes():
    model = make(DirectCalls)
    first = frozen(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # one group: FreezeOut would split it
    with pytest.raises(ValueError, match=r"layers\[0\] \(Conv2d\) is frozen by another FreezeOut that is still open"):
        FreezeOut(opt, model.layers, 10)
    assert len(opt.param_groups) == 1 and "initial_lr" not in opt.param_groups[0]  # untouched
    first.close()
    second = FreezeOut(opt, model.layers, 10, t0=0.3, schedule="linear")
    assert second.num_frozen == 0 and all(p.requires_grad for p in model.parameters())


def test_a_freezeout_dropped_unclosed_is_taken_over_cleanly():
    model = make(DirectCalls)
    sched = frozen(model)
    del sched
    gc.collect()  # nothing holds the first controller: its effects are left on the model
    assert all(is_frozen(m) for m in model.blocks[0].modules())
    opt = torch.optim.SGD(param_groups(model, model.layers), lr=0.1)
    FreezeOut(opt, model.layers, 10, t0=0.3, schedule="linear")
    assert all(p.requires_grad for p in model.parameters())  # not half frozen: trains again until its time
    assert not any(is_frozen(m) for m in model.modules())
    model.train()
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_an_optimizer_with_one_group_is_refused_by_name():
    model = make(DirectCalls)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer LBFGS holds one parameter group only"):
        FreezeOut(opt, model.layers, 10)
    assert len(opt.param_groups) == 1 and not any(is_frozen(m) for m in model.modules())
    x, y = batch(0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    before = model.head.weight.detach().clone()
    opt.step(closure)  # the optimizer still works as built
    assert not torch.equal(model.head.weight, before)


def test_only_the_cut_runs_per_call_one_hook_per_frozen_layer_and_one_at_the_end():
    model = make(DirectCalls)
    sched = frozen(model)
    tops = {id(m) for m in model.layers}
    for m in model.modules():  # a check of the inputs before each frozen layer; the last one ends the prefix
        want = (id(m) in tops, m is model.layers[-1])
        assert (len(m._forward_pre_hooks), len(m._forward_hooks)) == want, type(m).__name__
        assert "forward" not in m.__dict__  # no instance forward without folding or the cache
    sched.close()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_mode_writes_while_frozen_are_kept_and_given_back_at_close():
    model = make(DirectCalls)
    sched = frozen(model)
    model.eval()  # an evaluation: the user's request is eval
    assert not any(m.training for m in model.modules())
    model.train()  # and back
    assert not any(m.training for layer in model.layers for m in layer.modules()) and model.head.training
    model.blocks[0].eval()  # the last word on this one: eval
    sched.close()
    assert not any(m.training for m in model.blocks[0].modules())
    assert all(m.training for m in (*model.blocks[1].modules(), *model.blocks[2].modules(), model.stem))
