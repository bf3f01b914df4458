"""The check that freezing really takes layers out of autograd: one instrumented forward pass after each freeze.

Frozen layers leave the backward pass only if nothing that requires grad flows into them. A trainable tensor
upstream (a ViT's root ``cls_token`` left out of the layers, a token embedding tied to the head, an activation
that a forward hook made require grad, as Hugging Face does for gradient checkpointing) makes autograd record
every frozen layer after it, and the saving is silently gone.

So at the first training forward after construction and after each freeze (never on other steps: nothing here
costs anything per step), hooks on the layers record the order they run in, and on the frozen ones whether
their output requires grad, what autograd saved inside them, and, walking the graph, which leaf tensors it came
from. Then:

- layers out of forward order: ``ValueError`` (they would save nothing until the last one froze);
- a layer that shares a parameter with the model outside it (tied weights): ``ValueError``;
- trainable tensors flowing into frozen layers, all of them tied weights (trained as the head) or activations
  with no parameter behind them: the graph is *cut*: from then on frozen layers' inputs are detached, and the
  first trainable layer's input requires grad again as before, so the shared weight trains through the head
  alone and the frozen layers leave backward (an input-side gradient through frozen layers is what freezing
  drops);
- any other trainable parameter: a warning naming it and the bytes it costs per step (``strict``: ``ValueError``).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .groups import check_ties, unwrap
from .layers import Layer

__all__ = ["FrozenInputWarning", "Probe"]

log = logging.getLogger(__name__)


class FrozenInputWarning(UserWarning):
    """A trainable tensor flows into a frozen layer, so autograd still records the frozen layers."""


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_map(v, fn) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        out = {k: _map(v, fn) for k, v in value.items()}
        try:
            return type(value)(out)  # keeps a BatchEncoding or a ModelOutput a mapping of its own class
        except TypeError:
            return out
    return value


def _leaves(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
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


class _Hook:
    """A hook that a pickled or deep-copied model keeps as a no-op: it belongs to this process's FreezeOut, not
    to the model (``torch.save(model)`` and ``copy.deepcopy`` must work while FreezeOut watches it)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        return _Hook, (_inert,)


def _inert(*args: Any) -> None:
    return None


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


_CALL_CODES = {getattr(nn.Module, n).__code__ for n in ("_call_impl", "_wrapped_call_impl") if hasattr(nn.Module, n)}


def _outermost_module() -> nn.Module | None:
    """The module whose call encloses this point outermost (the model the training loop called), from the stack."""
    frame, found = sys._getframe(1), None
    while frame is not None:
        if frame.f_code in _CALL_CODES and isinstance(frame.f_locals.get("self"), nn.Module):
            found = frame.f_locals["self"]
        frame = frame.f_back
    return found


class Probe:
    """Arms the one-pass check; ``finish()`` (called by ``FreezeOut.step()``) judges what the pass recorded.
    ``strict``: a leak is a ``ValueError``, not a warning. See the module doc."""

    def __init__(self, layers: Sequence[Layer], strict: bool = False) -> None:
        self.layers, self.strict = list(layers), strict
        self.frozen = 0
        self.first = True  # the first pass also checks the order and the ties
        self.warned: set[int] = set()
        self.warned_kinds: set[str] = set()
        self._handles: list[RemovableHandle] = []
        self._cut: list[RemovableHandle] = []
        self._reset_pass()

    def _reset_pass(self) -> None:
        self.root: nn.Module | None = None
        self.done = False  # one pass recorded: a second forward before step() is not looked at
        self.order: list[int] = []
        self.saved: dict[tuple[int, int], tuple[int, int]] = {}  # storage -> (layer, bytes): each counted once
        self.leaks: list[tuple[int, list[torch.Tensor]]] = []
        self.reentrant = False
        self._contexts: list[tuple[nn.Module, Any]] = []
        # The model's parameters as the recorded forward used them: FSDP2 registers gathered copies during its
        # forward and the sharded ones again after backward, and autograd's leaves are the gathered copies.
        self._names: _Names | None = None

    def arm(self, num_frozen: int) -> None:
        """Record the next forward pass with grad enabled, with ``num_frozen`` layers frozen (and no cut)."""
        self.frozen = num_frozen
        self._remove(self._cut)
        self._remove(self._handles)
        self._reset_pass()
        for layer in self.layers:
            for m in layer.modules:
                self._handles.append(m.register_forward_pre_hook(_Hook(self._enter(layer.index)), with_kwargs=True))
                self._handles.append(m.register_forward_hook(_Hook(self._exit(layer.index)), always_call=True))

    def close(self) -> None:
        self._remove(self._handles)
        self._remove(self._cut)

    @staticmethod
    def _remove(handles: list[RemovableHandle]) -> None:
        for h in handles:
            h.remove()
        handles.clear()

    # -- one pass ------------------------------------------------------------------------------------------
    def _recording(self) -> bool:
        """Inside the pass being recorded: it starts at a layer's call with grad enabled (a training forward, not
        an evaluation) and takes in calls under no_grad too (a checkpointed block runs so), but none made by the
        backward pass (a checkpoint's recomputation) nor by dynamo tracing the model."""
        if self.done or torch.compiler.is_compiling() or _in_backward():
            return False
        return self.root is not None or torch.is_grad_enabled()

    def _enter(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            if not self._recording():
                return
            if self.root is None:
                outer = _outermost_module()
                self.root = module if outer is None else outer
            elif index in self.order and index == self.order[0]:
                self.done = True  # the first layer again: a second pass
                return
            if index not in self.order:
                self.order.append(index)
            if index >= self.frozen:
                return
            leaking = [t for t in _tensors((args, kwargs)) if t.requires_grad]
            if leaking and not any(i == index for i, _ in self.leaks):
                self.leaks.append((index, _leaves(leaking)))
                if self._names is None:
                    self._names = _Names(unwrap(self.root))
                # a frozen layer fed by a tensor that requires grad, run under no_grad: reentrant checkpointing
                self.reentrant = self.reentrant or not torch.is_grad_enabled()
            saved = self.saved
            top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", lambda _: None)
            outer = top(False)  # the hooks already active (a checkpoint's, an offload's): ours must pass through
            outer_pack, outer_unpack = outer if outer is not None else (lambda t: t, lambda t: t)

            def pack(t: torch.Tensor) -> Any:
                storage = t.untyped_storage()
                saved.setdefault((storage.data_ptr(), storage.nbytes()), (index, storage.nbytes()))
                return outer_pack(t)

            ctx = torch.autograd.graph.saved_tensors_hooks(pack, outer_unpack)
            try:
                ctx.__enter__()
            except RuntimeError:  # saved-tensor hooks are disabled here
                ctx = None
            self._contexts.append((module, ctx))

        return hook

    def _exit(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._contexts and self._contexts[-1][0] is module:
                _, ctx = self._contexts.pop()
                if ctx is not None:
                    ctx.__exit__(None, None, None)

        return hook

    def finish(self) -> None:
        """Judge the recorded pass (if one ran) and take the hooks off; raise or warn as the module doc says."""
        if self.root is None:
            return  # no forward with grad since arm(): keep waiting
        root = unwrap(self.root)
        self._remove(self._handles)
        names = _Names(root)
        try:
            if self.first:
                self.first = False
                self._check_order()
                if all(id(m) in names.modules for layer in self.layers for m in layer.modules):
                    check_ties(root, self.layers)
            if self.leaks:
                self._judge(self._names or names)
        finally:
            self._reset_pass()

    def _check_order(self) -> None:
        for a, b in zip(self.order, self.order[1:]):
            if b < a:
                raise ValueError(
                    f"layers[{a}] runs before layers[{b}] in the forward pass: list the layers in forward order "
                    "(input side first), or nothing is saved until the last of them freezes"
                )
        missing = sorted(set(range(len(self.layers))) - set(self.order))
        if missing:
            warnings.warn(f"layers{missing} never ran in the training forward pass: freezing them saves nothing",
                          FrozenInputWarning, stacklevel=3)  # fmt: skip

    def _judge(self, names: _Names) -> None:
        first, _ = self.leaks[0]
        sources = {id(t): t for _, leaves in self.leaks for t in leaves}
        # a parameter not named even as the forward saw the model (a sharded module's gathered copy) is no tie and no
        # activation: warned about, never cut
        plain = [
            t for t in sources.values() if (not names.tied(t) if id(t) in names.params else isinstance(t, nn.Parameter))
        ]
        if not plain:
            log.info("tied weights or hooked activations flow into frozen layers: cutting the graph at their input")
            self._install_cut()
            if self.reentrant and "reentrant" not in self.warned_kinds:
                self.warned_kinds.add("reentrant")
                warnings.warn(
                    f"frozen layers[{first}] runs under reentrant activation checkpointing (torch.utils.checkpoint "
                    "with use_reentrant=True around the layer's call) with an input that requires grad: the backward "
                    "pass still recomputes the frozen layers, whatever FreezeOut does. Checkpoint with "
                    "use_reentrant=False (Hugging Face's default) to get the saving",
                    FrozenInputWarning,
                    stacklevel=3,
                )
            return
        if all(id(t) in self.warned for t in plain) and not self.strict:
            return
        self.warned.update(id(t) for t in plain)
        cost = sum(b for i, b in self.saved.values() if i >= first)
        label = ", ".join(repr(names.params.get(id(t), f"a parameter of shape {tuple(t.shape)}")) for t in plain)
        message = (
            f"trainable parameter(s) {label} flow into frozen layers[{first}], so autograd still records the frozen "
            f"layers from there on ({cost / 2**20:.2f} MiB saved for backward per step) and they stay in the "
            "backward pass: freeze them with the layer they feed (list them in it, e.g. [module, param], or use "
            "find_layers, which attaches them), or move them after the last layer"
        )
        if self.strict:
            raise ValueError(message)
        warnings.warn(message, FrozenInputWarning, stacklevel=3)

    # -- the cut -------------------------------------------------------------------------------------------
    def _install_cut(self) -> None:
        state = {"cut": False}
        last = self.layers[self.frozen - 1].modules[-1]

        def detach(t: torch.Tensor) -> torch.Tensor:
            if t.requires_grad:
                state["cut"] = True
                return t.detach()
            return t

        def regrad(t: torch.Tensor) -> torch.Tensor:
            return t.detach().requires_grad_() if t.is_floating_point() or t.is_complex() else t

        def cut_in(module: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
            if _in_backward():
                return None  # a reentrant checkpoint recomputing a frozen layer: it needs its graph as recorded
            return _map(args, detach), _map(kwargs, detach)

        def cut_out(module: nn.Module, args: Any, output: Any) -> Any:
            if _in_backward():
                return None
            output = _map(output, detach)
            if module is last and state["cut"]:
                # What was cut required grad, so the frozen prefix's output did: it does again, as a leaf. A
                # checkpointed block after it (reentrant) computes its parameters' gradients only so.
                state["cut"] = False
                output = _map(output, regrad)
            return output

        for layer in self.layers[: self.frozen]:
            for m in layer.modules:
                self._cut.append(m.register_forward_pre_hook(_Hook(cut_in), with_kwargs=True))
                self._cut.append(m.register_forward_hook(_Hook(cut_out)))


class _Names:
    def __init__(self, model: nn.Module) -> None:
        self.params: dict[int, str] = {}
        self.count: dict[int, int] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.params.setdefault(id(p), name)
            self.count[id(p)] = self.count.get(id(p), 0) + 1
        self.modules = {id(m) for m in model.modules()}

    def tied(self, p: torch.Tensor) -> bool:
        return self.count.get(id(p), 0) > 1
