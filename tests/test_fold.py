"""BatchNorm folding of frozen layers (accel.fold): exact for each pattern, run only in training forwards, never
stale, invisible in the model's parameters, buffers and state_dict."""

from __future__ import annotations

import copy
import pickle
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import FreezeOut, freeze_layer
from freezeout.accel.fold import fold_layer, is_folded, unfold_layer
from freezeout.experiment.models import ResNet
from freezeout.freezing.folding import active_fold, find_fold
from tests.helpers.models import randomise_batchnorm


def frozen(layer: nn.Module) -> nn.Module:
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    freeze_layer(layer, opt.param_groups[0], opt)
    return layer


def batch_norm_calls():
    """Counts F.batch_norm calls: a folded BatchNorm makes none."""
    return mock.patch("torch.nn.functional.batch_norm", wraps=F.batch_norm)


class DataDependent(nn.Module):
    """fx cannot trace it (a branch on a tensor value): folds come from nn.Sequential order."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x) if x.sum() > -1e9 else x


class SharedOutput(nn.Module):
    """The conv's output feeds the BatchNorm *and* the sum: folding would change the sum, so it must not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


IMG = (2, 3, 6, 6)
PATTERNS = {  # name: (layer, input shape, folds expected)
    "conv-bn": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()), IMG, 1),
    "conv-bn no bias, BN without affine": (
        lambda: nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6, affine=False)),
        IMG,
        1,
    ),
    "conv1d-bn1d": (lambda: nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4)), (2, 3, 7), 1),
    "conv3d-bn3d": (lambda: nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4)), (2, 3, 3, 4, 4), 1),
    "linear-bn": (lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)), (4, 5), 1),
    "bn-conv1x1": (lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 6, 1, bias=False)), IMG, 1),
    "bn-conv unpadded, strided, grouped": (
        lambda: nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, stride=2, groups=2)),
        (2, 4, 7, 7),
        1,
    ),
    "bn-conv reflect-padded": (
        lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect")),
        IMG,
        1,
    ),
    "bn-conv zero-padded 3x3 (bias map)": (
        lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 5, 3, padding=1, bias=False)),
        IMG,
        1,
    ),
    "bn-conv zero-padded, strided, dilated, grouped, biased": (
        lambda: nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, stride=2, padding=(2, 1), dilation=2, groups=2)),
        (2, 4, 7, 8),
        1,
    ),
    "bn-conv1d zero-padded 'same'": (
        lambda: nn.Sequential(nn.BatchNorm1d(3), nn.Conv1d(3, 4, 3, padding="same", dilation=2)),
        (2, 3, 9),
        1,
    ),
    "conv-bn-conv: conv-bn wins": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1)),
        IMG,
        1,
    ),
    "basic block (fx)": (lambda: ResNet(8, 4).blocks[0], (2, 4, 6, 6), 2),
    "shared conv output (fx): not folded": (SharedOutput, IMG, 0),
    "untraceable: nn.Sequential order": (DataDependent, IMG, 1),
}


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_each_pattern_folds_exactly_and_skips_its_batchnorm(name, dtype, tol):
    make, shape, folds = PATTERNS[name]
    torch.manual_seed(0)
    layer = make().to(dtype)
    randomise_batchnorm(layer)
    oracle = copy.deepcopy(layer).eval()  # the plain frozen layer: real modules, running statistics
    assert fold_layer(frozen(layer)) == 1  # it holds a pair that could fold: its calls are proven
    x = torch.randn(shape, dtype=dtype)
    layer.train()  # a training forward: the model asked for training mode, autograd on
    with torch.no_grad():
        want = oracle(x)
    first = layer(x)  # proves this kind of call, confirms it on these tensors
    assert len(find_fold(layer).folds) == folds
    with batch_norm_calls() as calls:
        got = layer(x)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layer.modules())
    assert calls.call_count == n_bn - folds
    assert torch.equal(first, got)  # the first call returns what every later one does
    assert (got - want).abs().max() <= tol * want.abs().max()
    assert not got.requires_grad  # nothing of the frozen layer entered autograd


def test_a_border_fold_serves_every_input_size_and_follows_new_statistics():
    # the bias map depends on the input's size: each size gets its own, and a change of statistics rebuilds them
    torch.manual_seed(0)
    layer = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1)).double()
    randomise_batchnorm(layer)
    assert fold_layer(frozen(layer)) == 1
    layer.train()
    for _ in range(2):
        oracle = copy.deepcopy(layer).eval()
        for shape in [(2, 3, 5, 5), (1, 3, 4, 9), (2, 3, 5, 5)]:
            x = torch.randn(shape, dtype=torch.float64)
            with torch.no_grad():
                want = oracle(x)
            assert (layer(x) - want).abs().max() <= 1e-12 * want.abs().max()
        with torch.no_grad():  # as a load_state_dict would
            layer[0].running_mean.add_(1.0)


def test_a_border_fold_runs_its_real_modules_inside_a_compiled_graph():
    # its per-size map cache is Python state: under dynamo the pair runs unfolded, in one graph, with the same result
    from freezeout import compile_blocks

    torch.manual_seed(0)
    layer = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1)).double()
    randomise_batchnorm(layer)
    oracle = copy.deepcopy(layer).eval()
    assert fold_layer(frozen(layer)) == 1
    layer.train()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    graphs = []

    def recording(gm: torch.fx.GraphModule, inputs):  # runs the captured graph as it is
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    try:
        compile_blocks([layer], backend=recording, fullgraph=True)
        got = layer(x)
    finally:
        torch._dynamo.reset()
    assert [sum("batch_norm" in str(n.target) for n in gm.graph.nodes) for gm in graphs] == [1]
    torch.testing.assert_close(got, oracle(x), rtol=1e-12, atol=1e-12)


def test_linear_bn_fold_only_holds_for_2d_input():
    # BatchNorm1d on (N, C, L) normalises dim 1, not the linear's output features: no fold there
    layer = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    randomise_batchnorm(layer)
    oracle = copy.deepcopy(layer).eval()
    assert fold_layer(frozen(layer)) == 1
    x = torch.randn(2, 3, 4)
    layer.train()
    assert torch.equal(layer(x), oracle(x))


def small_resnet(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet(8, 4)
    randomise_batchnorm(model, seed)
    return model


def fused_model(seed: int = 0) -> tuple[ResNet, ResNet]:
    """A ResNet-8 with every layer frozen and fused, and its plain copy in eval mode (the oracle)."""
    model = small_resnet(seed)
    oracle = copy.deepcopy(model).eval()
    for layer in model.layers:
        fold_layer(frozen(layer))
    return model, oracle


def test_the_fold_runs_in_training_forwards_only():
    model, oracle = fused_model()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = oracle(x)

    def forward(**expect) -> torch.Tensor:
        with batch_norm_calls() as calls:
            out = model(x)
        assert calls.call_count == expect["bn_calls"]
        return out

    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.train()
    model(x)  # the first call of each layer proves and confirms its folds
    assert forward(bn_calls=0).sub(want).abs().max() < 1e-5 * want.abs().max()
    with torch.no_grad():  # no autograd: the real modules, bit for bit
        assert torch.equal(forward(bn_calls=n_bn), want)
    with torch.inference_mode():
        assert torch.equal(forward(bn_calls=n_bn), want)
    model.eval()  # evaluation and export: the real modules, with autograd on too
    assert torch.equal(forward(bn_calls=n_bn), want)
    model.train()
    forward(bn_calls=0)
    bn = model.blocks[0].bn1  # called on its own, outside its layer's forward: the real BatchNorm
    h = torch.randn(2, 4, 8, 8)
    assert torch.equal(bn(h), oracle.blocks[0].bn1(h))


def test_active_fold_gives_the_folded_weights_inside_a_training_forward_only():
    bn, conv = nn.BatchNorm2d(6), nn.Conv2d(6, 5, 1, bias=False)
    layer = frozen(nn.Sequential(nn.ReLU(), bn, conv, nn.BatchNorm2d(5), nn.Conv2d(5, 3, 3, padding=1)))
    randomise_batchnorm(layer)
    fold_layer(layer)
    x = torch.randn(2, 6, 4, 4)
    layer.train()
    layer(x)  # proves and confirms the folds
    seen = []
    # while the layer's forward runs (a hook on the last conv, inside it)
    layer[4].register_forward_hook(lambda m, a, o: seen.append((active_fold(conv), active_fold(layer[4]))))
    layer(x)
    ((got, border),) = seen
    assert border is None  # a zero-padding fold needs its bias map: run through the module, not by hand
    folded_bn, weight, bias = got
    # the folded conv is the conv of the BatchNorm's output: w * s per input channel, bias = sum of w * t
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias - bn.running_mean * s
    assert folded_bn is bn and not weight.requires_grad
    torch.testing.assert_close(weight, conv.weight * s.view(1, -1, 1, 1))
    torch.testing.assert_close(bias, (conv.weight[:, :, 0, 0] * t).sum(1))
    assert active_fold(conv) is None  # outside the layer's forward
    layer.eval()
    layer(x)
    assert seen[-1] == (None, None) and active_fold(nn.Conv2d(2, 2, 1)) is None


def test_export_after_eval_sees_the_real_batchnorms():
    model, oracle = fused_model()
    x = torch.randn(2, 3, 8, 8)
    model.train()
    model(x)  # the folds are built
    program = torch.export.export(model.eval(), (x,))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("batch_norm" in op for op in ops) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not program.constants  # no folded tensor was lifted into the program
    assert torch.equal(program.module()(x), oracle(x))


def test_folds_follow_the_live_tensors_load_state_dict_edits_dtype_layout():
    model, _ = fused_model()
    x = torch.randn(2, 3, 8, 8)

    def check(oracle: nn.Module, inp: torch.Tensor, tol: float) -> None:
        model.train()
        got = model(inp)
        with torch.no_grad():
            want = copy.deepcopy(oracle).eval()(inp)
        assert (got - want).abs().max() <= tol * want.abs().max()

    check(model, x, 1e-5)  # builds the folds
    other = small_resnet(seed=1)  # other weights and statistics, loaded in place
    model.load_state_dict(other.state_dict())
    check(other, x, 1e-5)
    with torch.no_grad():  # an in-place edit of a BatchNorm statistic
        model.blocks[0].bn1.running_var.mul_(3.0)
    check(model, x, 1e-5)
    model.to(torch.float64)  # dtype follows
    check(model, x.double(), 1e-12)
    model.to(torch.float32, memory_format=torch.channels_last)  # layout follows
    check(model, x.contiguous(memory_format=torch.channels_last), 1e-5)
    folds = find_fold(model.blocks[0]).folds.values()
    assert folds
    for fold in folds:
        assert fold.weight.is_contiguous(memory_format=torch.channels_last) and fold.weight.dtype == torch.float32
        assert not fold.weight.requires_grad and fold.weight.grad_fn is None and fold.bias.grad_fn is None


def test_the_model_sees_no_change_parameters_buffers_state_dict_pickle():
    plain = small_resnet()
    model = copy.deepcopy(plain)
    params = list(model.parameters())
    for layer in model.layers:
        fold_layer(frozen(layer))
    model.train()
    model(torch.randn(2, 3, 8, 8))  # folds built and run
    assert [p for p in model.parameters()] == params and all(a is b for a, b in zip(model.parameters(), params))
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in plain.named_buffers()]
    sd, want = model.state_dict(), plain.state_dict()
    assert list(sd) == list(want) and all(torch.equal(sd[k], want[k]) for k in want)
    clone = pickle.loads(pickle.dumps(model))  # folds are dropped and rebuilt from the clone's own tensors
    assert all(is_folded(layer) for layer in clone.layers)
    x = torch.randn(2, 3, 8, 8)
    clone.train()
    assert torch.equal(clone(x), model(x))


def test_unfold_and_the_arguments():
    layer = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"must be frozen before folding"):
        fold_layer(layer)
    with pytest.raises(ValueError, match=r"layer must be an nn\.Module"):
        fold_layer([layer])
    fold_layer(frozen(layer))
    assert is_folded(layer) and fold_layer(layer) == 1  # a second call changes nothing
    unfold_layer(layer)
    assert not is_folded(layer) and all("forward" not in m.__dict__ for m in layer.modules())
    assert not layer._forward_pre_hooks and not layer._forward_hooks  # a freeze of its own puts no hook on it
    model = small_resnet()
    with pytest.raises(ValueError, match="fuse must be True or False"):
        FreezeOut(torch.optim.SGD(model.parameters(), lr=0.1), [model.stem], 10, fuse="yes")
