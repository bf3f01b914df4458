"""One traced forward pass: the call tree of a model's modules, and when each parameter was first used.

What ``find_layers`` reads a model's structure from. The pass runs in eval mode under ``torch.no_grad`` (no
BatchNorm statistics move; every module's mode is restored after). Each module call gets a start and an end
on one clock; a ``TorchFunctionMode`` stamps each parameter with the clock at its first use by any op, so a
parameter held by the root (a ViT's ``cls_token``) is placed in the data's path between the calls around it, and
with its last use, so a weight that a later module also uses (a token embedding tied to the head) shows as such.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..freezing.mode import eval_mode
from ..tensors import first_tensor, reads_values, run_model

__all__ = ["Call", "Trace", "trace"]


@dataclass(eq=False)
class Call:
    module: nn.Module
    name: str
    index: int  # orders the calls by their start
    start: int = 0  # the clock at the call's start and end
    end: int = 0
    children: list[Call] = field(default_factory=list)
    first_in: Any = None
    first_out: Any = None

    def descendants(self) -> Iterator[Call]:
        for child in self.children:
            yield child
            yield from child.descendants()


@dataclass
class Trace:
    root: Call
    counts: dict[int, int]  # how many times each module (by id) ran
    first_use: dict[int, int]  # parameter id -> the clock at its first use
    last_use: dict[int, int]  # ... and at its last


class _Uses(TorchFunctionMode):
    def __init__(self, clock: list[int], first_use: dict[int, int], last_use: dict[int, int]) -> None:
        super().__init__()
        self.clock, self.first_use, self.last_use = clock, first_use, last_use

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if reads_values(func):
            for a in (*args, *(kwargs or {}).values()):
                for t in a if isinstance(a, (list, tuple)) else (a,):  # torch.cat([model.cls_token, x])
                    if isinstance(t, nn.Parameter):
                        self.clock[0] += 1  # every use has its own time: one right after a call is after its end
                        self.first_use.setdefault(id(t), self.clock[0])
                        self.last_use[id(t)] = self.clock[0]
        return func(*args, **(kwargs or {}))


def trace(model: nn.Module, example_input: Any) -> Trace:
    """Run ``model`` once on ``example_input`` and record its call tree; ``ValueError`` naming the innermost
    module if the pass fails."""
    names = {id(m): n for n, m in model.named_modules()}
    clock = [0]
    root = Call(model, "", 0)
    stack = [root]
    counts: dict[int, int] = {}
    first_use: dict[int, int] = {}
    last_use: dict[int, int] = {}

    def pre(module: nn.Module, args: Any, kwargs: Any) -> None:
        clock[0] += 1
        call = Call(module, names[id(module)], clock[0], start=clock[0])
        call.first_in = first_tensor((args, kwargs))
        counts[id(module)] = counts.get(id(module), 0) + 1
        stack[-1].children.append(call)
        stack.append(call)

    def post(module: nn.Module, args: Any, output: Any) -> None:
        clock[0] += 1
        call = stack.pop()
        call.end, call.first_out = clock[0], first_tensor(output)

    handles = []
    try:
        for m in model.modules():
            if m is not model:
                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(m.register_forward_hook(post))
        with eval_mode(model), torch.no_grad(), _Uses(clock, first_use, last_use):
            try:
                run_model(model, example_input)
            except Exception as exc:
                # A failing module never reaches its post hook: the top of the stack is the innermost one.
                where = stack[-1]
                label = f"module '{where.name}' ({type(where.module).__name__})" if where.name else "the model itself"
                why = str(exc) or type(exc).__name__  # some errors have no message: name at least their kind
                raise ValueError(f"forward pass on example_input failed in {label}: {why}") from exc
    finally:
        for h in handles:
            h.remove()
    root.end = clock[0] + 1
    return Trace(root, counts, first_use, last_use)
