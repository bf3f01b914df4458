"""Small tools for looking at a forward pass from hooks: tensors in nested outputs, the leaves of an autograd
graph, a model's parameter names, hooks that a copied model keeps as no-ops."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Hook", "Names", "leaves", "map_tensors", "tensors"]


def tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or mapping (a tokenizer's ``BatchEncoding`` is one), in order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from tensors(v)


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(map_tensors(v, fn) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, Mapping):
        out = {k: map_tensors(v, fn) for k, v in value.items()}
        try:
            return type(value)(out)  # a BatchEncoding or a ModelOutput stays a mapping of its own class
        except TypeError:
            return out
    return value


def leaves(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The leaf tensors requiring grad that ``tensors`` were computed from (walking the autograd graph)."""
    found: dict[int, torch.Tensor] = {}
    seen: set[Any] = set()
    stack = []
    for t in tensors:
        if t.grad_fn is None:
            found[id(t)] = t
        else:
            stack.append(t.grad_fn)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: its leaf
        if isinstance(variable, torch.Tensor):
            found[id(variable)] = variable
        stack.extend(fn for fn, _ in node.next_functions)
    return list(found.values())


class Hook:
    """A hook that a pickled or deep-copied model keeps as a no-op: it belongs to this process's FreezeOut, not
    to the model (``torch.save(model)`` and ``copy.deepcopy`` must work while FreezeOut watches it)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return Hook, (_inert,)


def _inert(*args: Any) -> None:
    return None


class Names:
    def __init__(self, model: nn.Module) -> None:
        self.params: dict[int, str] = {}
        self.count: dict[int, int] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.params.setdefault(id(p), name)
            self.count[id(p)] = self.count.get(id(p), 0) + 1
        self.modules = {id(m) for m in model.modules()}

    def tied(self, p: torch.Tensor) -> bool:
        return self.count.get(id(p), 0) > 1
