"""One owner of a module's instance ``forward`` (``freezeout.freezing.forwards``): folds, the cache's stand-in and
``compile_blocks`` stack theirs and take them off in any order; after ``close()`` none of the freeze's is left."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from freezeout import FreezeOut, compile_blocks, param_groups, remove_effects, uncompile_blocks
from freezeout.experiment.models import ResNet
from freezeout.freezing.forwards import OwnedForward, forwards_of, pop_forward, push_forward


class AddOne(OwnedForward):
    """Adds ``step`` to what the forward below returns: the order of a stack shows in the result."""

    def __init__(self, module: nn.Module, step: float) -> None:
        super().__init__(module)
        self.step = step

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.below(x) * 10 + self.step


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_any_forward_comes_off_in_any_order_and_the_rest_keep_running(order):
    m = nn.Identity()
    stack = [push_forward(AddOne(m, step)) for step in (1.0, 2.0, 3.0)]
    x = torch.zeros(1)
    assert m(x).item() == 123.0  # 3 on top of 2 on top of 1 on top of the class's forward
    left = list(stack)
    for i in order:
        pop_forward(stack[i])
        left.remove(stack[i])
        want = 0.0
        for f in left:
            want = want * 10 + f.step
        assert m(x).item() == want
        assert forwards_of(m) == left[::-1]
    assert "forward" not in m.__dict__
    pop_forward(stack[0])  # idempotent


def test_under_a_foreign_forward_ours_steps_aside_and_strip_takes_only_the_freezes():
    m = nn.Identity()
    ours = push_forward(AddOne(m, 1.0))
    below = m.forward
    m.forward = lambda x: below(x) + 0.5  # the user's patch, on top of ours: we cannot unlink under it
    pop_forward(ours)
    assert ours.inert and m(torch.zeros(1)).item() == 0.5  # ours passes calls through; theirs still runs

    class Kept(AddOne):
        part_of_freeze = False  # like compile_blocks': the user's, not the freeze's

    k = nn.Identity()
    kept, freeze = push_forward(Kept(k, 1.0)), push_forward(AddOne(k, 2.0))
    assert remove_effects(k) == 1 and forwards_of(k) == [kept] and freeze.module is k


@pytest.mark.parametrize("uncompile_first", [False, True])
def test_folds_and_compiled_layers_stack_and_close_leaves_only_what_the_user_put(uncompile_first):
    model = ResNet(8, 4)
    compile_blocks(model.layers, backend="eager")  # lazy: nothing compiles until a call
    sched = FreezeOut(torch.optim.SGD(param_groups(model, model.layers), lr=0.1), model.layers, 10, fuse=True)
    sched.step_to(10)
    block = model.layers[1]
    assert [type(f).__name__ for f in forwards_of(block)] == ["_Scope", "_Compiled"]  # the fold's on top
    if uncompile_first:
        uncompile_blocks(model.layers)  # from under the fold's forward: relinked
        assert [type(f).__name__ for f in forwards_of(block)] == ["_Scope"]
    sched.close()
    left = {type(f).__name__ for m in model.modules() for f in forwards_of(m)}
    assert left == (set() if uncompile_first else {"_Compiled"})
    uncompile_blocks(model.layers)
    assert not any("forward" in m.__dict__ for m in model.modules())
