"""compile_blocks: recompiles bounded per layer while FreezeOut freezes, results equal eager."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend
from torch._dynamo.utils import counters

from freezeout import FreezeOut, compile_blocks, param_groups, uncompile_blocks
from freezeout.experiment.models import DenseNetBC
from tests.helpers.dynamo import DYNAMO_GRAD_PROBE

STEPS = 12
pytestmark = DYNAMO_GRAD_PROBE


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def run(model, layers, steps=STEPS, t0=0.2, fuse=False):
    """FreezeOut (linear, t0=0.2) to the end: layers freeze one by one, on distinct steps."""
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = FreezeOut(opt, layers, total_steps=steps, t0=t0, schedule="linear", fuse=fuse)
    frozen_per_step = []
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
        frozen_per_step.append(sched.num_frozen)
    return frozen_per_step


def densenet():
    torch.manual_seed(0)
    return DenseNetBC(depth=16, growth=4)  # 9 freezable layers: more freeze events than the limit of 8


def recompile_limit_hit() -> bool:
    return any("recompile limit" in k.lower() for k in counters["unimplemented"])


@pytest.mark.slow  # dynamo compiles twice: 20-40 s
def test_whole_model_compile_recompiles_at_every_freeze(monkeypatch):
    # What compile_blocks avoids: one graph, a whole recompile per freeze. Under torch's default limit dynamo runs
    # eagerly after 8 graphs; FreezeOut raises the limit at its first freeze, so the model stays compiled. Without
    # fusion, whose per-layer hooks (eager under compile_blocks) would break a whole-model graph into pieces.
    from freezeout import compat

    for allowance in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model = densenet()
        cnt = CompileCounter()
        compiled = torch.compile(model, backend=cnt)
        with monkeypatch.context() as patch, torch._dynamo.config.patch(recompile_limit=8):
            if not allowance:
                patch.setattr(compat, "raise_recompile_limit", lambda by: None)
            assert run(compiled, model.layers, fuse=False)[-1] == 9
        assert (cnt.frame_count, recompile_limit_hit()) == ((1 + 9, False) if allowance else (8, True))


def test_per_block_compile_recompiles_at_most_three_times_per_layer():
    model = densenet()
    layers = model.layers
    cnt = CompileCounter()
    compile_blocks(layers, backend=cnt)
    frozen = run(model, layers)
    n = len(layers)
    assert frozen[-1] == n and len(set(frozen)) == n + 1  # one freeze per step: the worst case
    # stem: trainable, frozen; every later layer: also once when its input stops requiring grad
    assert cnt.frame_count == 2 + 3 * (n - 1)
    assert not recompile_limit_hit()


@pytest.mark.slow  # dynamo compiles: 5 s
def test_with_folding_each_layer_compiles_once_more_for_its_unfolded_check():
    # fuse=True: a frozen layer's first call runs unfolded once, beside the folded run it confirms
    model = densenet()
    cnt = CompileCounter()
    compile_blocks(model.layers, backend=cnt)
    frozen = run(model, model.layers, fuse=True)
    n = len(model.layers)
    assert frozen[-1] == n and cnt.frame_count == 2 + 4 * (n - 1) and not recompile_limit_hit()


@pytest.mark.slow  # dynamo compiles: 7-9 s
def test_per_block_compile_equals_eager_training():
    eager = densenet()
    run(eager, eager.layers)
    model = densenet()
    cnt = CompileCounterWithBackend("aot_eager")  # through AOTAutograd, without inductor's codegen
    compile_blocks(model.layers, backend=cnt)
    run(model, model.layers)
    assert cnt.frame_count >= len(model.layers)  # every layer ran compiled: eager would match trivially
    for (k, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)


def test_uncompile_restores_eager_forward_and_errors():
    model = densenet()
    compile_blocks(model.layers, backend=CompileCounter())
    with pytest.raises(ValueError, match=r"layers\[0\] \(Conv2d\) is compiled already"):
        compile_blocks(model.layers)
    uncompile_blocks(model.layers)
    assert all("forward" not in layer.__dict__ for layer in model.layers)
    import copy

    copy.deepcopy(model)  # compiled functions are gone
    with pytest.raises(ValueError, match="layers must be a non-empty list"):
        compile_blocks([])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's import
def test_inductor_per_block_matches_eager():
    eager = densenet()
    run(eager, eager.layers, steps=6, t0=0.5)
    model = densenet()
    compile_blocks(model.layers)  # the default inductor backend: generated C++ on CPU
    run(model, model.layers, steps=6, t0=0.5)
    for (k, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=k)


def test_under_a_whole_model_compile_a_tied_embedding_is_cut_as_in_eager():
    # nanoGPT's compile = True with its tied head: the graph cut decides once, outside the compiled graph, and the
    # frozen blocks leave the compiled backward as they leave the eager one
    from freezeout import find_layers, saved_tensor_bytes
    from tests.helpers.lookalikes import TinyGPT

    def all_frozen_bytes(compiled: bool) -> int:
        torch.manual_seed(0)
        model = TinyGPT(depth=3)
        ids = torch.randint(0, 13, (4, 8), generator=torch.Generator().manual_seed(1))
        layers = find_layers(model, ids)
        sched = FreezeOut(torch.optim.SGD(param_groups(model, layers), lr=0.1), layers, 10, t0=0.3, schedule="linear")
        sched.step_to(9)
        run = torch.compile(model, backend="eager") if compiled else model
        loss, saved = saved_tensor_bytes(lambda: F.cross_entropy(run(ids).flatten(0, 1), ids.flatten()))
        loss.backward()
        assert model.wte.weight.grad is not None  # the tied weight trains, through the head
        return saved

    eager = all_frozen_bytes(False)
    assert all_frozen_bytes(True) == eager
