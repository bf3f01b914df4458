"""Tensors in the structures models take and return (nested tuples, lists, mappings: a tokenizer's
``BatchEncoding``, a ``ModelOutput``), the leaves of an autograd graph, calling a model on an example of any such
structure, and the one rule for which tensor operations read values and which only metadata."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "METADATA_METHODS",
    "VALUE_ATTRIBUTES",
    "first_tensor",
    "items",
    "leaves",
    "map_tensors",
    "reads_values",
    "run_model",
    "tensors",
]

# Attribute reads of a tensor that give its values (or another tensor of them); every other attribute is metadata
# (``dtype``, ``shape``, ``device``, ...: Hugging Face reads ``next(model.parameters()).dtype`` before any layer)
VALUE_ATTRIBUTES = frozenset({"T", "mT", "H", "mH", "data", "real", "imag", "grad"})
# Methods of a tensor that read only its metadata; every other operation reads values
METADATA_METHODS = frozenset(
    {
        "size", "dim", "ndimension", "stride", "numel", "nelement", "is_contiguous", "is_floating_point",
        "is_complex", "element_size", "get_device", "__len__", "storage_offset", "data_ptr", "has_names",
        "is_pinned", "untyped_storage", "is_inference",
    }
)  # fmt: skip


def reads_values(func: Any) -> bool:
    """Whether ``func``, as a ``TorchFunctionMode`` sees it (an op, a method, an attribute's ``__get__``), reads
    the values of the tensors it is given rather than only their metadata."""
    name = getattr(func, "__name__", None)
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", None) in VALUE_ATTRIBUTES
    return name not in METADATA_METHODS


def items(value: Any) -> Iterator[Any]:
    """Every leaf of a (nested) tuple, list or mapping (a tokenizer's ``BatchEncoding`` is one), tensor or not, in
    order."""
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from items(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from items(v)
    else:
        yield value


def tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) tuple, list or mapping (a tokenizer's ``BatchEncoding`` is one), in order."""
    return (v for v in items(value) if isinstance(v, torch.Tensor))


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


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a (nested) tuple, list or mapping (a tokenizer's ``BatchEncoding`` is one)."""
    return next(tensors(value), None)


def run_model(model: nn.Module, example_input: Any) -> Any:
    """``model(**x)`` for a mapping (a dict, a ``BatchEncoding``), ``model(*x)`` for a tuple, else ``model(x)``."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)
