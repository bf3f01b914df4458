"""The frozen layers kept out of autograd in every forward: the graph cut at their inputs.

Frozen layers leave the backward pass only if nothing that requires grad flows into them. A trainable tensor
upstream (a ViT's root ``cls_token`` left out of the layers, a token embedding tied to the head, an activation a
forward hook made require grad, as Hugging Face does for gradient checkpointing) makes autograd record every frozen
layer after it, and the saving is silently gone.

So in every forward (each micro-batch of an accumulated step, the first after a resume, a deep copy's) each frozen
layer looks at its inputs as it is called. If some require grad, the leaf tensors they came from decide (walking the
autograd graph, which upstream of the frozen prefix is short):

- all of them tied weights (trained as the head) or activations with no parameter behind them: the inputs are
  *cut* (detached), and the frozen prefix's output requires grad again, as a leaf, so the shared weight trains
  through the head alone and the frozen layers leave backward (an input-side gradient through frozen layers is
  what freezing drops); a checkpointed block after the prefix computes its parameters' gradients only so;
- any other trainable parameter must keep its gradient through the frozen layers: nothing is cut, and the
  controller is told (``Prefix.reports``): a warning naming it and the bytes it costs per step, or with ``strict``
  a ``ValueError``.

Nothing is cut inside a backward pass (a reentrant checkpoint recomputing a frozen layer needs its graph as
recorded) nor while the model is traced as a program (fx, export, jit). Under ``torch.compile`` the walk cannot be
traced: a layer cuts there as its last eager forward decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..compat import in_backward, is_tracing, outermost_module, saved_tensors_hooks_outer
from ..groups import unwrap
from ..hooks import Names, leaves, map_tensors, tensors
from ..layers import Layer
from ..measure import SavedStorages
from .base import Effect, OwnedHook

__all__ = ["GraphCut", "Leak", "Prefix"]


@dataclass
class Leak:
    """Trainable parameters found flowing into frozen ``layers[index]``, and what autograd saved for backward in the
    frozen layers from there on in that forward (each storage counted once)."""

    index: int
    params: list[torch.Tensor]
    names: list[str]
    saved: SavedStorages = field(default_factory=SavedStorages)
    reentrant: bool = False

    @property
    def nbytes(self) -> int:
        return self.saved.nbytes


class Prefix:
    """What a model's frozen layers share: how many are frozen, the cut's state within one forward, what it found."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        self.frozen = 0
        self.decision: dict[int, bool] = {}  # layer -> cut (True) or leave (False), as its last eager forward found
        self.reports: list[Leak] = []  # read and cleared by the controller's step()
        self.reported: set[int] = set()  # parameters reported once already (and -1: reentrant checkpointing)
        self._names: Names | None = None
        self.new_forward()

    def new_forward(self) -> None:
        self.cut_any = False  # this forward cut something, so the prefix's output required grad
        self.leaking = False  # this forward found a plain parameter upstream: later layers need not look again
        self.measuring: Leak | None = None
        self._contexts: list[tuple[nn.Module, Any]] = []

    def __getstate__(self) -> dict[str, Any]:
        # a copy (deepcopy, pickle) starts clean: ids in the name cache and open contexts belong to the original
        state = dict(self.__dict__)
        state.update(reports=[], cut_any=False, leaking=False, measuring=None, _names=None, _contexts=[])
        return state

    def is_last(self, module: nn.Module) -> bool:
        return self.frozen > 0 and module is self.layers[self.frozen - 1].modules[-1]

    def names(self, sources: Sequence[torch.Tensor]) -> Names:
        """The model's parameter names, read again when a source is a parameter they miss (FSDP2 registers
        gathered copies during its forward; a deep copy has parameters of its own)."""
        if self._names is None or any(isinstance(t, nn.Parameter) and id(t) not in self._names.params for t in sources):
            outer = outermost_module()
            self._names = Names(unwrap(outer)) if outer is not None else Names(nn.Module())
        return self._names

    def plain(self, sources: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The trainable parameters among ``sources`` that are not tied: they keep their gradient, so never cut.
        One the model does not name (a sharded module's gathered copy) counts as one too."""
        names = self.names(sources)
        return [t for t in sources if (not names.tied(t) if id(t) in names.params else isinstance(t, nn.Parameter))]

    def report(self, index: int, plain: list[torch.Tensor], reentrant: bool = False) -> None:
        """Tell the controller, once per set of parameters (and once about reentrant checkpointing)."""
        self.leaking = True
        keys = {id(t) for t in plain} if plain else {-1}
        if keys <= self.reported:
            return
        self.reported |= keys
        names = self.names(plain)
        label = [names.params.get(id(t), f"a parameter of shape {tuple(t.shape)}") for t in plain]
        leak = Leak(index, plain, label, reentrant=reentrant)
        self.reports.append(leak)
        self.measuring = None if reentrant else leak

    # -- saved-tensor accounting while a leak is measured ------------------------------------------------------
    def open(self, module: nn.Module, index: int) -> None:
        leak = self.measuring
        if leak is None or index < leak.index or not torch.is_grad_enabled():
            return
        outer_pack, outer_unpack = saved_tensors_hooks_outer()

        ctx = torch.autograd.graph.saved_tensors_hooks(lambda t: outer_pack(leak.saved.add(t)), outer_unpack)
        try:
            ctx.__enter__()
        except RuntimeError:  # saved-tensor hooks are disabled here
            return
        self._contexts.append((module, ctx))

    def close(self, module: nn.Module) -> None:
        if self._contexts and self._contexts[-1][0] is module:
            self._contexts.pop()[1].__exit__(None, None, None)
        if self.measuring is not None and self.is_last(module):
            self.measuring = None  # one forward measured


def _graded(value: Any) -> list[torch.Tensor]:
    return [t for t in tensors(value) if t.requires_grad]


def _detach(value: Any) -> Any:
    return map_tensors(value, lambda t: t.detach() if t.requires_grad else t)


def _regrad(t: torch.Tensor) -> torch.Tensor:
    if t.requires_grad or not (t.is_floating_point() or t.is_complex()):
        return t
    return t.detach().requires_grad_()


class _CutIn(OwnedHook):
    def __init__(self, prefix: Prefix, index: int) -> None:
        self.prefix, self.index = prefix, index

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        p, i = self.prefix, self.index
        if torch.compiler.is_compiling():  # the walk cannot be traced: cut as the last eager forward decided
            cut = p.decision.get(i, False) and not torch.compiler.is_exporting()
        elif in_backward() or is_tracing():
            return None
        else:
            if i == 0 and module is p.layers[0].modules[0]:
                p.new_forward()
            cut = False if p.leaking else self._decide(args, kwargs)
            p.open(module, i)
        if not cut:
            return None
        p.cut_any = True
        return _detach(args), _detach(kwargs)

    def _decide(self, args: Any, kwargs: Any) -> bool:
        p, graded = self.prefix, _graded((args, kwargs))
        if not graded:
            return False
        plain = p.plain(leaves(graded))
        grad = torch.is_grad_enabled()  # off: a reentrant checkpoint's forward, its backward recomputes this layer
        if plain or not grad:
            p.report(self.index, plain, reentrant=not grad)
        if grad:
            p.decision[self.index] = not plain
        return grad and not plain


class _CutOut(OwnedHook):
    def __init__(self, prefix: Prefix) -> None:
        self.prefix = prefix

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        p = self.prefix
        if not torch.compiler.is_compiling():
            if in_backward() or is_tracing():
                return None
            p.close(module)
        if not p.cut_any or not p.is_last(module):
            return None
        p.cut_any = False
        return map_tensors(output, _regrad)


class GraphCut(Effect):
    """Frozen ``layer`` cuts what flows into it in every forward (see the module doc); ``prefix`` is shared by all
    of a model's frozen layers."""

    name = "graph cut"

    def __init__(self, prefix: Prefix, layer: Layer) -> None:
        super().__init__()
        self.prefix, self.layer = prefix, layer

    def install(self) -> None:
        for m in self.layer.modules:
            self.hook(m, _CutIn(self.prefix, self.layer.index), _CutOut(self.prefix), kwargs=True, first=False)
