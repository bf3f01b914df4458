"""Each private torch API behind ``freezeout.compat`` still means what the package relies on: a torch release that
moves or changes one fails here, by name, before it silently breaks freezing."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from freezeout import compat


def test_batchnorm_bases():
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
        assert issubclass(cls, compat.BatchNormBase) and issubclass(cls, compat.NormBase)
    assert issubclass(nn.InstanceNorm2d, compat.NormBase) and not issubclass(nn.InstanceNorm2d, compat.BatchNormBase)
    assert not issubclass(nn.LayerNorm, compat.NormBase)


def test_in_backward_is_true_only_inside_a_backward_pass():
    seen = []
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: seen.append(compat.in_backward()))
    assert not compat.in_backward()
    y.sum().backward()
    assert seen == [True] and not compat.in_backward()


def test_outermost_module_is_the_model_the_loop_called():
    found = []

    class Inner(nn.Module):
        def forward(self, x):
            found.append(compat.outermost_module())
            return x

    inner = Inner()
    outer = nn.Sequential(nn.Sequential(inner))
    outer(torch.ones(1))
    inner(torch.ones(1))
    assert found == [outer, inner] and compat.outermost_module() is None


def test_outermost_call_gives_the_models_own_arguments():
    found = []

    class Inner(nn.Module):
        def forward(self, x, scale=1.0):
            found.append(compat.outermost_call())
            return x * scale

    inner = Inner()
    outer = nn.Sequential(inner)
    x = torch.ones(2)
    outer(x)
    inner(x, scale=2.0)
    (root, args, kwargs), (root2, args2, kwargs2) = found
    assert root is outer and args[0] is x and kwargs == {}
    assert root2 is inner and args2[0] is x and kwargs2 == {"scale": 2.0}
    assert compat.outermost_call() is None


def test_saved_tensors_hooks_outer_are_the_active_pair():
    pack, unpack = compat.saved_tensors_hooks_outer()
    t = torch.ones(1)
    assert pack(t) is t and unpack(t) is t

    def mine(x):
        return x

    with torch.autograd.graph.saved_tensors_hooks(mine, mine):
        assert compat.saved_tensors_hooks_outer() == (mine, mine)


def test_is_tracing_sees_fx_export_and_jit_but_not_eager_or_compile():
    seen, now = {}, []

    class Probe(nn.Module):
        def forward(self, x):
            seen.setdefault(now[-1], compat.is_tracing())
            return x + 1

    model = nn.Sequential(Probe())
    x = torch.ones(2)
    for key, run in [
        ("eager", lambda: model(x)),
        ("fx", lambda: torch.fx.symbolic_trace(model)),
        ("export", lambda: torch.export.export(model, (x,))),
        ("jit", lambda: torch.jit.trace(model, (x,))),
    ]:
        now.append(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch 2.13
            run()
    assert seen == {"eager": False, "fx": True, "export": True, "jit": True}


def test_module_hook_dicts_and_children():
    m = nn.Sequential(nn.Linear(2, 2))
    pre, post = compat.forward_hooks(m)
    assert not pre and not post
    h1 = m.register_forward_pre_hook(lambda *a: None)
    h2 = m.register_forward_hook(lambda *a: None)
    assert len(compat.forward_hooks(m)[0]) == len(compat.forward_hooks(m)[1]) == 1
    h1.remove(), h2.remove()
    assert compat.child_modules(m) == {"0": m[0]}
    before = compat.global_hooks()
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    assert compat.global_hooks() == before + 1
    handle.remove()
    assert compat.global_hooks() == before


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_conv_forward_and_padding(padding_mode):
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode)
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(compat.conv_forward(conv, x, conv.weight, conv.bias), conv(x))
    w = torch.randn_like(conv.weight)
    assert not torch.equal(compat.conv_forward(conv, x, w, None), conv(x))
    assert compat.conv_pads(conv) and not compat.conv_pads(nn.Conv2d(2, 3, 1))
    assert compat.stock_conv(conv, nn.Conv2d)

    class Other(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    assert not compat.stock_conv(Other(2, 3, 1), nn.Conv2d)


def test_foreach_copy():
    dst, src = [torch.zeros(2), torch.zeros(3)], [torch.ones(2), torch.full((3,), 2.0)]
    compat.foreach_copy_(dst, src)
    assert all(torch.equal(a, b) for a, b in zip(dst, src))


def test_fsdp_privates_exist_where_they_are_read():
    all_gather, reduce_scatter = compat.fsdp_collectives()
    assert callable(all_gather.__call__) and callable(reduce_scatter.__call__)
    from torch.distributed.fsdp import fully_shard

    assert callable(fully_shard.state)  # fsdp_state / fsdp_param_groups read it (exercised in test_fsdp.py)


def test_tensor_version_counts_in_place_writes():
    t = torch.zeros(3)
    v = compat.tensor_version(t)
    t.add_(1)
    assert compat.tensor_version(t) == v + 1
    _ = t + 1  # an out-of-place op writes nothing
    assert compat.tensor_version(t) == v + 1


def test_has_hooks_and_own_parameters():
    m = nn.Linear(2, 2)
    assert not compat.has_hooks(m)
    for register in (
        lambda: m.register_forward_hook(lambda *a: None),
        lambda: m.register_forward_pre_hook(lambda *a: None),
        lambda: m.register_full_backward_hook(lambda *a: None),
        lambda: m.register_full_backward_pre_hook(lambda *a: None),
    ):
        handle = register()
        assert compat.has_hooks(m)
        handle.remove()
        assert not compat.has_hooks(m)
    assert list(compat.own_parameters(m)) == [m.weight, m.bias]
    m.bias = None
    assert [p for p in compat.own_parameters(m) if p is not None] == [m.weight]
    assert list(compat.own_parameters(nn.Sequential(m))) == []  # its own, not its children's


def test_tensor_slot_reads_what_getattr_reads():
    bn = nn.BatchNorm2d(3)
    for name in ("weight", "bias", "running_mean", "running_var"):
        holder, key = compat.tensor_slot(bn, name)
        assert holder.get(key) is getattr(bn, name)
    holder, key = compat.tensor_slot(bn, "running_mean")
    bn.running_mean = torch.zeros(3)  # replaced: the slot reads the new tensor
    assert holder.get(key) is bn.running_mean
    linear = nn.Linear(2, 2, bias=False)
    holder, key = compat.tensor_slot(linear, "bias")
    assert holder.get(key) is None and linear.bias is None


def test_lr_scheduler_attached_sees_torchs_scheduler_mark_on_the_optimizer():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    assert not compat.lr_scheduler_attached(opt)
    torch.optim.lr_scheduler.StepLR(opt, 1)  # LRScheduler.__init__ wraps opt.step and marks the wrapper
    assert compat.lr_scheduler_attached(opt)
    assert not compat.lr_scheduler_attached(object())


def test_raise_recompile_limit_lets_dynamo_compile_past_its_limit():
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    def graphs(raise_by: int) -> tuple[int, tuple[int, int] | None]:
        torch._dynamo.reset()
        cnt = CompileCounter()
        f = torch.compile(lambda x: x * 2, backend=cnt)
        with torch._dynamo.config.patch(recompile_limit=2, accumulated_recompile_limit=256):
            raised = compat.raise_recompile_limit(raise_by) if raise_by else None
            for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32):
                f(torch.ones(2, dtype=dtype))  # a guard on the dtype fails: one recompile each
        torch._dynamo.reset()
        return cnt.frame_count, raised

    assert graphs(0) == (2, None)  # dynamo's limit: eager after 2 graphs
    assert graphs(3) == (5, (2, 5))  # raised by 3: all 5 compiled
    assert isinstance(torch._dynamo.config.recompile_limit, int)
    assert isinstance(torch._dynamo.config.accumulated_recompile_limit, int)


def test_raise_recompile_limit_is_a_no_op_without_dynamo(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "torch._dynamo")
    assert compat.raise_recompile_limit(4) is None
