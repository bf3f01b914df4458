"""The check that freezing really takes layers out of autograd: one instrumented forward pass after each freeze.

Frozen layers leave the backward pass only if nothing that requires grad flows into them. A trainable tensor
upstream (a ViT's root ``cls_token`` left out of the layers, a token embedding tied to the head, an activation
that a forward hook made require grad, as Hugging Face does for gradient checkpointing) makes autograd record
every frozen layer after it, and the saving is silently gone.

So at the first training forward after construction and after each freeze (never on other steps: nothing here
costs anything per step), hooks on the layers record the order they run in and, on the frozen ones, whether
an input requires grad, which leaf tensors it came from (walking the autograd graph) and what autograd saved
inside them. ``FreezeOut.step()`` then judges the pass:

- layers out of forward order: ``ValueError`` (they would save nothing until the last one froze);
- a layer that shares a parameter with the model outside it (tied weights): ``ValueError``;
- trainable tensors flowing into frozen layers, all of them tied weights (trained as the head) or activations
  with no parameter behind them: the graph is *cut*: from then on (and in the checked pass itself, input by
  input, so that no step keeps more than the one before it) frozen layers' inputs and outputs are detached,
  and the frozen prefix's output requires grad again as before (as a leaf), so the shared weight trains
  through the head alone and the frozen layers leave backward (an input-side gradient through frozen layers
  is what freezing drops). Later passes run with the cut on, and what it cuts is judged the same way;
- any other trainable parameter: a warning naming it and the bytes it costs per step (``strict``: ``ValueError``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .groups import check_ties, unwrap
from .hooks import Hook, Names, in_backward, leaves, map_tensors, outermost_module, tensors
from .layers import Layer

__all__ = ["FrozenInputWarning", "Probe"]

log = logging.getLogger(__name__)


class FrozenInputWarning(UserWarning):
    """A trainable tensor flows into a frozen layer, so autograd still records the frozen layers."""


def _plain(t: torch.Tensor, names: Names) -> bool:
    """A trainable parameter that is not tied: it must keep its gradient through frozen layers, so it is warned
    about, never cut. One the model does not name (a sharded module's gathered copy) counts as one too."""
    return not names.tied(t) if id(t) in names.params else isinstance(t, nn.Parameter)


def _regrad(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_() if t.is_floating_point() or t.is_complex() else t


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
        self.cutting = False  # the cut is on: what flows into frozen layers is tied weights or hooked activations
        self._cut_any = False  # this forward cut something (so the frozen prefix's output required grad)
        self._reset_pass()

    def _reset_pass(self) -> None:
        self.root: nn.Module | None = None
        self.opener: nn.Module | None = None  # the module the pass began with: entering it again is a new pass
        self.done = False  # one pass recorded: a second forward before step() is not looked at
        self.order: list[int] = []
        self.saved: dict[tuple[int, int], tuple[int, int]] = {}  # storage -> (layer, bytes): each counted once
        self.leaks: list[tuple[int, list[torch.Tensor]]] = []
        self.reentrant = False
        self._contexts: list[tuple[nn.Module, Any]] = []
        # The model's parameters as the recorded forward uses them: FSDP2 registers gathered copies during its
        # forward and the sharded ones again after backward, and autograd's leaves are the gathered copies.
        self._names: Names | None = None

    def arm(self, num_frozen: int) -> None:
        """Record the next forward pass with grad enabled, with ``num_frozen`` layers frozen. Once the cut is on,
        it covers the newly frozen layers too, and what it cuts in that pass is judged like a leak would be (so
        the pass after a freeze never holds the frozen layers' activations)."""
        self.frozen = num_frozen
        self._remove(self._handles)
        self._reset_pass()
        if self.cutting and num_frozen:
            self._install_cut()
        else:
            self._remove(self._cut)
        for layer in self.layers:
            for m in layer.modules:
                self._handles.append(m.register_forward_pre_hook(Hook(self._enter(layer.index)), with_kwargs=True))
                self._handles.append(m.register_forward_hook(Hook(self._exit(layer.index)), always_call=True))

    def close(self) -> None:
        """Take every hook off: the check's and the cut's (a model that outlives its FreezeOut, a measurement)."""
        self._remove(self._handles)
        self._remove(self._cut)
        self.cutting = False

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
        if self.done or torch.compiler.is_compiling() or in_backward():
            return False
        return self.root is not None or torch.is_grad_enabled()

    def _enter(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
            if not self._recording():
                return None
            if self.root is None:
                outer = outermost_module()
                self.root, self.opener = (module if outer is None else outer), module
            elif module is self.opener:
                self.done = True  # the first module again: a second pass (a group's other modules are not)
                return None
            if index not in self.order:
                self.order.append(index)
            if index >= self.frozen:
                return None
            leaking = [t for t in tensors((args, kwargs)) if t.requires_grad]
            sources = leaves(leaking) if leaking else []
            if leaking and not any(i == index for i, _ in self.leaks):
                self.leaks.append((index, sources))
                if self._names is None:
                    self._names = Names(unwrap(self.root))
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
            return self._cut_now(sources, args, kwargs)

        return hook

    def _cut_now(self, sources: list[torch.Tensor], args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        """In the checked pass itself, cut what the cut would (tied weights, hooked activations) before ``step()``
        judges it: under activation checkpointing a frozen block runs unchecked (frozen means eval mode), so
        that one step would keep more for backward than any before it. A trainable parameter is never cut."""
        if not sources or in_backward() or torch.compiler.is_compiling():
            return None
        if self._names is None:
            self._names = Names(unwrap(self.root))
        if any(_plain(t, self._names) for t in sources):
            return None
        return self._detach(-1, args), self._detach(-1, kwargs)

    def _exit(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if self._contexts and self._contexts[-1][0] is module:
                _, ctx = self._contexts.pop()
                if ctx is not None:
                    ctx.__exit__(None, None, None)
            if self._cut_any and module is self.layers[self.frozen - 1].modules[-1] and not in_backward():
                self._cut_any = False
                return map_tensors(output, _regrad)  # as the cut does (see _cut_out)
            return None

        return hook

    def finish(self) -> None:
        """Judge the recorded pass (if one ran) and take the hooks off; raise or warn as the module doc says."""
        if self.root is None:
            return  # no forward with grad since arm(): keep waiting
        root = unwrap(self.root)
        self._remove(self._handles)
        names = Names(root)
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

    def _judge(self, names: Names) -> None:
        first, _ = self.leaks[0]
        sources = {id(t): t for _, leaves in self.leaks for t in leaves}
        plain = [t for t in sources.values() if _plain(t, names)]
        if not plain:
            if not self.cutting:
                log.info("tied weights or hooked activations flow into frozen layers: the graph is cut at their input")
                self.cutting = True
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
        if self.cutting:  # a plain parameter must keep its gradient through the frozen layers: no cut then
            self.cutting = False
            self._remove(self._cut)
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
        self._remove(self._cut)
        last = self.layers[self.frozen - 1].modules[-1]
        for layer in self.layers[: self.frozen]:
            for m in layer.modules:
                self._cut.append(m.register_forward_pre_hook(Hook(self._cut_in(layer.index)), with_kwargs=True))
                self._cut.append(m.register_forward_hook(Hook(self._cut_out(layer.index, m is last))))

    def _detach(self, index: int, value: Any) -> Any:
        cut = [t for t in tensors(value) if t.requires_grad]
        if not cut:
            return value
        self._cut_any = True
        if index >= 0 and self._handles and not self.done and not any(i == index for i, _ in self.leaks):
            self.leaks.append((index, leaves(cut)))  # a check is armed: judge what the cut stops as a leak
            if self._names is None:
                outer = outermost_module()
                if outer is not None:
                    self._names = Names(unwrap(outer))
        return map_tensors(value, lambda t: t.detach() if t.requires_grad else t)

    def _cut_in(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
            if in_backward():
                return None  # a reentrant checkpoint recomputing a frozen layer: it needs its graph as recorded
            return self._detach(index, args), self._detach(index, kwargs)

        return hook

    def _cut_out(self, index: int, last: bool) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if in_backward():
                return None
            output = self._detach(index, output)
            if last and self._cut_any:
                # What was cut required grad, so the frozen prefix's output did: it does again, as a leaf. A
                # checkpointed block after it (reentrant) computes its parameters' gradients only so.
                self._cut_any = False
                output = map_tensors(output, _regrad)
            return output

        return hook
