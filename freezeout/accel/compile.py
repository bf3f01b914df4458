"""torch.compile with FreezeOut: compile each freezable layer on its own, so freezing cannot exhaust dynamo.

Why: dynamo guards on every parameter's ``requires_grad`` and every module's ``training`` flag. With the
whole model compiled, each freeze event fails a guard and recompiles the whole graph; after
``torch._dynamo.config.recompile_limit`` (8) recompiles it gives up and runs the model eagerly for the
rest of training, with only a log line to say so. A 40-layer model freezes 40 times.

Compiled per layer, a layer's guards only see its own parameters and input, which change at most twice:
when the layer before it freezes (its input stops requiring grad) and when it freezes itself. So each
layer compiles at most 3 times, however many layers the model has. Each layer gets its own code object,
because dynamo keeps its cache and its recompile limit per code object: layers of one class (every
``DenseLayer``) would otherwise share one budget of 8 between them, spent before training starts when
their shapes differ.

Recipe::

    layers = freezeout.find_layers(model, x[:1])      # or your own list
    freezeout.compile_blocks(layers)                  # torch.compile(**kwargs) per layer; the head stays eager
    opt = torch.optim.SGD(freezeout.param_groups(model, layers), lr=0.1, momentum=0.9)
    sched = freezeout.FreezeOut(opt, layers, total_steps)

Don't also ``torch.compile(model)``: dynamo would trace through the layers into one graph again. The
head and the glue code in ``model.forward`` run eagerly; compile the head modules separately if they
matter (``compile_blocks([model.head])``). ``uncompile_blocks(layers)`` restores the eager forwards
(say before ``torch.save(model)`` or ``copy.deepcopy``, which cannot handle compiled functions).

While tracing a layer whose input is another layer's output, dynamo reads that input's ``.grad`` and
torch warns "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed": harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..freezing.forwards import OwnedForward, forwards_of, pop_forward, push_forward
from ..layers import LayerLike, as_layers, check_layers

__all__ = ["compile_blocks", "uncompile_blocks"]


class _Compiled(OwnedForward):
    """A layer's compiled ``forward``: the forward below it (its eager one) under ``torch.compile``."""

    part_of_freeze = False  # the user's choice: ``remove_effects`` leaves it, ``uncompile_blocks`` removes it

    def __init__(self, module: nn.Module, name: str, compile_kwargs: dict[str, Any]) -> None:
        super().__init__(module)
        self.compiled = torch.compile(_own_code(self.below, name), **compile_kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(*args, **kwargs)


def _own_code(forward: Any, name: str) -> Any:
    def block_forward(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    # A fresh code object per layer: a cache and a recompile budget of its own.
    block_forward.__code__ = block_forward.__code__.replace(co_name=name)
    block_forward.__name__ = block_forward.__qualname__ = name
    return block_forward


def _modules(layers: Sequence[LayerLike]) -> list[tuple[int, nn.Module]]:
    return [(layer.index, m) for layer in as_layers(layers) for m in layer.modules]


def _compiled(module: nn.Module) -> _Compiled | None:
    return next((f for f in forwards_of(module) if isinstance(f, _Compiled)), None)


def compile_blocks(layers: Sequence[LayerLike], **compile_kwargs: Any) -> list[LayerLike]:
    """Compile each layer's ``forward`` separately with ``torch.compile(**compile_kwargs)``; see the module doc.

    A layer that is a group compiles each of its modules. Returns ``layers`` (unchanged module objects:
    ``param_groups``, ``FreezeOut`` and state dicts see the same parameters). Raises ``ValueError`` for a
    layer compiled already.
    """
    layers = check_layers(layers)
    modules = _modules(layers)
    for i, layer in modules:
        if _compiled(layer) is not None:
            raise ValueError(f"layers[{i}] ({type(layer).__name__}) is compiled already")
    for i, layer in modules:
        push_forward(_Compiled(layer, f"freezeout_block_{i}_{type(layer).__name__}", compile_kwargs))
    return layers


def uncompile_blocks(layers: Sequence[LayerLike]) -> None:
    """Undo ``compile_blocks``: every layer runs its eager ``forward`` again."""
    for _, layer in _modules(layers):
        compiled = _compiled(layer)
        if compiled is not None:
            pop_forward(compiled)
