"""Per-layer forward FLOPs, and the check that a model's ``layers`` really are its forward path.

FreezeOut's saving rests on the listed layers running one after another, input side first, with the
rest (the head) after them: then freezing a prefix cuts the backward pass short. Both the FLOP count
and the check come from one hooked forward pass on an example input.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..freezing.mode import eval_mode
from ..layers import Layer, LayerLike, as_layers
from ..tensors import first_tensor, map_tensors, run_model, tensors
from .workload import copy_model

__all__ = ["batch_size_of", "check_forward_path", "layer_flops", "layer_flops_meta"]


def _sdpa(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# PyTorch counts scaled_dot_product_attention on GPU kernels only; on CPU (Hugging Face's default "sdpa"
# attention) the two attention matmuls would go uncounted. The same formula as on GPU: 2 b h s_q s_k (d_q + d_v).
_CPU_ATTENTION = {
    getattr(torch.ops.aten, name): _sdpa
    for name in ("_scaled_dot_product_flash_attention_for_cpu",)
    if hasattr(torch.ops.aten, name)
}


def batch_size_of(example_input: Any) -> int:
    """The batch size of an example input: the first dimension of its (first) tensor. A tensor is passed to the
    model as ``model(x)``, a tuple as ``model(*x)``, a mapping (a dict, a ``BatchEncoding``) as ``model(**x)``."""
    first = first_tensor(example_input)
    if first is None or first.dim() < 1:
        raise ValueError(
            "example_input must be a tensor whose first dimension is the batch, or a tuple or mapping (a dict, a "
            f"tokenizer's BatchEncoding) of such tensors; got {type(example_input).__name__}"
        )
    if first.shape[0] < 1:
        raise ValueError(f"batch size must be >= 1, got {first.shape[0]}")
    return int(first.shape[0])


def _name(layers: Sequence[Layer], i: int) -> str:
    modules = layers[i].modules
    return f"layers[{i}] ({type(modules[0]).__name__ if len(modules) == 1 else 'group'})"


def _trace(
    model: nn.Module, layers: Sequence[Layer], run: Callable[[], Any], on_enter=None, on_exit=None
) -> tuple[Any, list[tuple[str, Any]], list[Any]]:
    """Run ``run()`` with hooks on the layers' modules; return its result, the event log and each layer's
    output (its last module's). Events: ``("enter"/"exit", (layer, module))`` and ``("other", name)``."""
    events: list[tuple[str, Any]] = []
    outputs: list[Any] = [None] * len(layers)
    done: dict[int, int] = {}

    def pre(i: int, j: int):
        def hook(module, args):
            if on_enter and not any(k == "enter" and key[0] == i for k, key in events):
                on_enter(i)  # the layer starts with its first module
            events.append(("enter", (i, j)))

        return hook

    def post(i: int, j: int):
        def hook(module, args, out):
            events.append(("exit", (i, j)))
            outputs[i] = out
            done[i] = done.get(i, 0) + 1
            if on_exit and done[i] == len(layers[i].modules):
                on_exit(i)  # ... and ends with its last

        return hook

    def other(name: str):
        def hook(module, args):
            events.append(("other", name))

        return hook

    handles = []
    for layer in layers:
        for j, m in enumerate(layer.modules):
            handles.append(m.register_forward_pre_hook(pre(layer.index, j)))
            handles.append(m.register_forward_hook(post(layer.index, j)))
    # Modules with parameters of their own outside every listed layer: they must not run between layers.
    inside = {id(m) for layer in layers for m in layer.all_modules()}
    for name, m in model.named_modules():
        if id(m) not in inside and any(True for _ in m.parameters(recurse=False)):
            handles.append(m.register_forward_pre_hook(other(name or type(m).__name__)))
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    return result, events, outputs


def _check_events(layers: Sequence[Layer], events: list[tuple[str, Any]]) -> None:
    """Every layer's modules entered exactly once each, layers in list order, each module finishing before the
    next starts, and no unlisted module with parameters running between the first and the last layer."""
    entered = [key for kind, key in events if kind == "enter"]
    for layer in layers:
        for j in range(len(layer.modules)):
            count = entered.count((layer.index, j))
            if count == 0:
                raise ValueError(
                    f"{_name(layers, layer.index)} never ran in the forward pass: layers must cover the forward path"
                )
            if count > 1:
                raise ValueError(
                    f"{_name(layers, layer.index)} ran {count} times in the forward pass; each layer must run once"
                )
    order = [i for i, _ in entered]
    for a, b in itertools.pairwise(order):
        if b < a:
            raise ValueError(f"{_name(layers, a)} ran before layers[{b}]: list layers in forward order")
    first = next(k for k, e in enumerate(events) if e[0] == "enter")
    last = max(k for k, e in enumerate(events) if e[0] == "exit")
    for k in range(first, last):
        if events[k][0] == "other":
            before = max((key[0] for kind, key in events[:k] if kind == "exit"), default=0)
            raise ValueError(
                f"module {events[k][1]!r} has parameters, is not in layers and runs between layers[{before}] and "
                f"layers[{before + 1}]: layers must cover the forward path (list it, or move it to the head)"
            )
    events = [e for e in events if e[0] != "other"]
    expected = [
        (kind, (layer.index, j)) for layer in layers for j in range(len(layer.modules)) for kind in ("enter", "exit")
    ]
    if events != expected:
        inner = next(a for a, b in zip(events, expected) if a != b)[1][0]
        raise ValueError(
            f"{_name(layers, inner)} runs inside another listed layer: freezable layers must run one after another"
        )


def _check_reaches_output(layers: Sequence[Layer], outputs: list[Any], result: Any) -> None:
    """Each layer's output must feed the model's output (any of its tensors: a ``ModelOutput``'s logits, hidden
    states, ...), or freezing it saves nothing (a side branch)."""
    results = [t for t in tensors(result) if t.requires_grad]
    if not results:
        return
    firsts = [first_tensor(o) for o in outputs]
    found = [t if t is not None and t.requires_grad else None for t in firsts]
    present = [t for t in found if t is not None]
    if not present:
        return
    total = sum(t.float().sum() for t in results)
    grads = iter(torch.autograd.grad(total, present, allow_unused=True))
    for i, t in enumerate(found):
        if t is not None and next(grads) is None:
            raise ValueError(f"the output of {_name(layers, i)} does not reach the model's output")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    # a floating input requires grad, so every layer on the path yields a tensor that reaches the output
    return t.detach().clone().requires_grad_(t.is_floating_point())


def _forward(model: nn.Module, layers: Sequence[Layer], example_input: Any, on_enter=None, on_exit=None):
    """One checked forward in eval mode (no BatchNorm statistics change); modes are restored after."""
    batch_size_of(example_input)
    x = map_tensors(example_input, _leaf)
    with eval_mode(model):
        result, events, outputs = _trace(model, layers, lambda: run_model(model, x), on_enter, on_exit)
    _check_events(layers, events)
    return result, outputs


def check_forward_path(model: nn.Module, layers: Sequence[LayerLike], example_input: Any) -> None:
    """Raise ``ValueError`` unless each of ``layers`` runs exactly once, in list order, one after another,
    and feeds the model's output, when the model runs on ``example_input`` (a tensor, tuple or mapping: see
    ``batch_size_of``)."""
    layers = as_layers(layers)
    result, outputs = _forward(model, layers, example_input)
    _check_reaches_output(layers, outputs, result)


def layer_flops(model: nn.Module, layers: Sequence[LayerLike], example_input: Any) -> tuple[list[int], int]:
    """Forward FLOPs of each layer on ``example_input`` (PyTorch's FlopCounterMode), and of the rest.

    One forward runs under the counter; hooks read the running total as each layer starts and ends.
    The counter counts matmuls and convolutions only (not BatchNorm, ReLU, concatenation), as the
    paper's ``c_i`` does. Also checks the forward path like ``check_forward_path``.
    """
    layers = as_layers(layers)
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    marks: dict[tuple[str, int], int] = {}
    with counter:
        result, outputs = _forward(
            model,
            layers,
            example_input,
            on_enter=lambda i: marks.__setitem__(("enter", i), counter.get_total_flops()),
            on_exit=lambda i: marks.__setitem__(("exit", i), counter.get_total_flops()),
        )
        total = counter.get_total_flops()
    _check_reaches_output(layers, outputs, result)
    per_layer = [int(marks[("exit", i)] - marks[("enter", i)]) for i in range(len(layers))]
    return per_layer, int(total - sum(per_layer))


def layer_flops_meta(
    model: nn.Module, layers: Sequence[nn.Module], example_input: torch.Tensor
) -> tuple[list[int], int]:
    """``layer_flops`` on a copy of the model on the meta device, where ops compute shapes only: no memory for
    activations (a batch of any size counts at once; the input itself may be a meta tensor). For models whose
    forward does not depend on the values in its tensors, like the command line's."""
    clone, clone_layers = copy_model(model, layers, "meta")
    return layer_flops(clone, clone_layers, example_input.to("meta"))
