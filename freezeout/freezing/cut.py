"""What flows into the frozen layers: checked before each frozen layer's call, cut where it is a tied weight or an
activation made to require grad inside the forward, kept (and named) where it is anything else: a trainable
parameter, an input whose gradient is asked for, a tensor a module holds (docs/METHOD.md, "What frozen means").
Nothing is cut inside a backward pass or while the model is traced as a program; under ``torch.compile`` a layer
cuts as its last eager forward decided."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..compat import in_backward, is_tracing, outermost_call, saved_tensors_hooks_outer
from ..groups import ParameterNames, unwrap
from ..layers import Layer
from ..tensors import leaves, map_tensors, tensors
from .effect import Effect, OwnedHook
from .saved import SavedStorages

__all__ = ["CutState", "GraphCut", "Leak"]

PARAMETER, INPUT, HELD = "parameter", "input", "held"  # what a kept source is (``Leak.kind``)


@dataclass
class Leak:
    """Tensors found flowing into frozen ``layers[index]`` that keep their gradient (``kind``: trainable
    parameters, inputs of the model, tensors held by a module), and what autograd saved for backward in the frozen
    layers from there on in that forward (each storage counted once)."""

    index: int
    params: list[torch.Tensor]
    names: list[str]
    kind: str = PARAMETER
    saved: SavedStorages = field(default_factory=SavedStorages)
    reentrant: bool = False

    @property
    def nbytes(self) -> int:
        return self.saved.nbytes


@dataclass
class _Forward:
    """The cut's state within one forward of the model."""

    leaking: bool = False  # something keeps its gradient: later layers need not look again
    measuring: Leak | None = None
    outside: tuple[set[int], dict[int, str]] | None = None  # the model's inputs' leaves and module-held tensors


class CutState:
    """What a model's frozen layers share for the cut: how many are frozen, the state of the running forward, the
    decisions kept, what was found (``reports``, handed to the controller)."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        self.frozen = 0
        self.decision: dict[int, bool] = {}  # layer -> cut (True) or leave (False), as its last eager forward found
        self.reports: list[Leak] = []  # read and cleared by the controller's step()
        self.reported: set[Any] = set()  # what was reported already (parameter ids, kinds per layer, reentrancy)
        self.now: _Forward | None = None  # made when something requiring grad flows in; gone at the prefix's end
        self.cut_any = False  # this forward cut something, so the prefix's output requires grad again
        self._exit_handle: Any = None
        self._exit_at: nn.Module | None = None
        self.root: nn.Module | None = None  # the model the training loop calls (known after its first training pass)
        self._names: ParameterNames | None = None

    def __getstate__(self) -> dict[str, Any]:
        # a copy (deepcopy, pickle) starts clean: ids in the name cache and open contexts belong to the original
        return {**self.__dict__, "reports": [], "now": None, "cut_any": False, "_names": None, "_exit_handle": None}

    @property
    def exit(self) -> nn.Module | None:
        """The module whose call ends the frozen prefix (the last frozen layer's last)."""
        return self.layers[self.frozen - 1].modules[-1] if self.frozen else None

    @property
    def exit_module(self) -> nn.Module | None:
        """The module that carries the hook ending the prefix now (``set_exit``)."""
        return self._exit_at

    def names(self, sources: Sequence[torch.Tensor]) -> ParameterNames:
        """The model's parameter names, read again when a source is a parameter they miss (FSDP2 registers
        gathered copies during its forward; a deep copy has parameters of its own)."""
        if self._names is None or any(isinstance(t, nn.Parameter) and id(t) not in self._names.params for t in sources):
            call = outermost_call()
            self._names = ParameterNames(unwrap(call[0])) if call is not None else ParameterNames(nn.Module())
        return self._names

    def kept(self, sources: Sequence[torch.Tensor]) -> tuple[str, list[torch.Tensor]]:
        """The sources among ``sources`` that keep their gradient, and what they are; a tied weight and an
        activation made to require grad inside the forward are cut. A parameter the model does not name (a sharded
        module's gathered copy) keeps its gradient too."""
        names = self.names(sources)
        params = [t for t in sources if (not names.tied(t) if id(t) in names.params else isinstance(t, nn.Parameter))]
        if params:
            return PARAMETER, params
        others = [t for t in sources if not isinstance(t, nn.Parameter)]
        if not others:
            return PARAMETER, []
        inputs, held = self._outside()
        found = [t for t in others if id(t) in inputs]
        if found:
            return INPUT, found
        return HELD, [t for t in others if id(t) in held]

    def _outside(self) -> tuple[set[int], dict[int, str]]:
        """The leaves behind the model's inputs, and the tensors its modules hold as attributes (by id, with a
        name): sources that are not the forward's own making."""
        if self.now.outside is None:
            call = outermost_call()
            inputs: set[int] = set()
            held: dict[int, str] = {}
            if call is not None:
                inputs = {id(t) for t in leaves([t for t in tensors((call[1], call[2])) if t.requires_grad])}
                for name, m in unwrap(call[0]).named_modules():
                    for key, value in (*vars(m).items(), *m.named_buffers(recurse=False)):
                        if isinstance(value, torch.Tensor) and value.requires_grad:
                            held.setdefault(id(value), f"{name}.{key}" if name else key)
            self.now.outside = (inputs, held)
        return self.now.outside

    def report(self, index: int, kind: str, kept: list[torch.Tensor], reentrant: bool = False) -> None:
        """Tell the controller, once per set of parameters or kind of source (and once about reentrancy)."""
        self.now.leaking = True
        keys = {id(t) for t in kept} if kind == PARAMETER and kept else {(kind, index, reentrant)}
        if keys <= self.reported:
            return
        self.reported |= keys
        leak = Leak(index, kept, self._label(kind, kept), kind, reentrant=reentrant)
        self.reports.append(leak)
        self.now.measuring = None if reentrant else leak

    def _label(self, kind: str, kept: list[torch.Tensor]) -> list[str]:
        if kind == PARAMETER:
            names = self.names(kept)
            return [names.params.get(id(t), f"a parameter of shape {tuple(t.shape)}") for t in kept]
        if kind == HELD:
            held = self._outside()[1]
            return [held.get(id(t), f"a tensor of shape {tuple(t.shape)}") for t in kept]
        return [f"an input of shape {tuple(t.shape)}" for t in kept]

    # -- saved-tensor accounting while a leak is measured ------------------------------------------------------
    def open(self, module: nn.Module, index: int) -> None:
        """Count what autograd saves inside this call of ``module`` (a frozen layer at or after the leak's): a
        saved-tensor context for the call, closed by a hook of the call's own that goes with it."""
        leak = self.now.measuring
        if leak is None or index < leak.index or not torch.is_grad_enabled():
            return
        outer_pack, outer_unpack = saved_tensors_hooks_outer()
        ctx = torch.autograd.graph.saved_tensors_hooks(lambda t: outer_pack(leak.saved.add(t)), outer_unpack)
        try:
            ctx.__enter__()
        except RuntimeError:  # saved-tensor hooks are disabled here
            return
        closer = _Close(ctx)
        closer.handle = module.register_forward_hook(closer, always_call=True)

    def set_exit(self, module: nn.Module | None) -> None:
        """The module whose call ends the frozen prefix gets the hook that ends a forward there."""
        if self._exit_handle is not None:
            self._exit_handle.remove()
        self._exit_at = module
        self._exit_handle = None if module is None else module.register_forward_hook(_CutOut(self), always_call=True)


class _Close(OwnedHook):
    """Ends one measured call: the saved-tensor context it opened, then itself."""

    def __init__(self, ctx: Any) -> None:
        self.ctx, self.handle = ctx, None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        self.ctx.__exit__(None, None, None)
        self.handle.remove()


def _graded(value: Any) -> list[torch.Tensor]:
    return [t for t in tensors(value) if t.requires_grad]


def _any_graded(value: Any) -> bool:
    """Whether a tensor in ``value`` requires grad (the check every frozen call makes: loops, not generators)."""
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        for v in value:
            if _any_graded(v):
                return True
    elif isinstance(value, Mapping):
        for v in value.values():
            if _any_graded(v):
                return True
    return False


def _detach(value: Any) -> Any:
    return map_tensors(value, lambda t: t.detach() if t.requires_grad else t)


def _regrad(t: torch.Tensor) -> torch.Tensor:
    if t.requires_grad or not (t.is_floating_point() or t.is_complex()):
        return t
    return t.detach().requires_grad_()


class _CutIn(OwnedHook):
    def __init__(self, state: CutState, index: int) -> None:
        self.state, self.index = state, index

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        if not (_any_graded(args) or (kwargs and _any_graded(kwargs))):
            return None  # nothing flows in that autograd would record: the frozen layer leaves it by itself
        p = self.state
        if torch.compiler.is_compiling():
            if torch.compiler.is_exporting():
                return None
            known = p.decision.get(self.index)  # once decided, a compiled graph reads the decision
            cut = known if known is not None else _decide(self, args, kwargs)
        elif in_backward() or is_tracing():
            return None
        else:
            cut = _decide(self, args, kwargs)
            _open(p, module, self.index)
        if not cut:
            return None
        p.cut_any = True
        return _detach(args), _detach(kwargs)


# The walk over the autograd graph reads real tensors and the Python stack, which torch.compile cannot trace: these
# run eagerly wherever they are called from (under compile, a graph break, once per layer: the decision is kept).
@torch.compiler.disable
def _decide(hook: _CutIn, args: Any, kwargs: Any) -> bool:
    p, index = hook.state, hook.index
    if p.now is None:
        p.now = _Forward()
    if p.now.leaking:
        return False
    kind, kept = p.kept(leaves(_graded((args, kwargs))))
    grad = torch.is_grad_enabled()  # off: a reentrant checkpoint's forward, its backward recomputes this layer
    if kept or not grad:
        p.report(index, kind, kept, reentrant=not grad)
    if grad:
        p.decision[index] = not kept
    return grad and not kept


@torch.compiler.disable
def _open(p: CutState, module: nn.Module, index: int) -> None:
    p.open(module, index)


class _CutOut(OwnedHook):
    def __init__(self, state: CutState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        p = self.state
        if not torch.compiler.is_compiling() and (p.now is None or in_backward() or is_tracing()):
            return None
        if module is not p.exit:
            return None
        p.now = None  # the frozen prefix ends: the next forward starts clean
        if not p.cut_any:
            return None
        p.cut_any = False
        return map_tensors(output, _regrad)


class GraphCut(Effect):
    """Frozen ``layer`` cuts what flows into it in every forward (see the module doc); ``state`` is shared by all
    of a model's frozen layers. The newest frozen layer's last module also ends the prefix (``CutState.set_exit``)."""

    name = "graph cut"

    def __init__(self, state: CutState, layer: Layer) -> None:
        super().__init__()
        self.state, self.layer = state, layer
        self.exit_before: nn.Module | None = None

    def install(self) -> None:
        for m in self.layer.modules:
            self.hook(m, _CutIn(self.state, self.layer.index), kwargs=True)
        self.exit_before = self.state.exit_module
        self.state.set_exit(self.layer.modules[-1])

    def remove(self) -> None:
        super().remove()
        if self.state.exit_module is self.layer.modules[-1]:
            self.state.set_exit(self.exit_before)  # the layer frozen before it ends the prefix again
