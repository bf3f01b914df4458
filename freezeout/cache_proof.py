"""What ``PrefixCache`` proves about a model before it serves a single row: one forward watched end to end.

The cache keeps only the frontier, the outputs of the last frozen layer; the earlier frozen layers' outputs are not
kept, and when an example is served their calls return poisoned placeholders (NaN). That is exact only if nothing
but the next frozen layer ever reads them, and if what flows into the frozen layers is a function of the model's
input alone. So the first forward at each depth (and for each input structure) runs in full under a
``TorchFunctionMode`` that tags every tensor a frozen layer returns with the layer's index, carries the tags
through every op outside the frozen layers (the glue: residual sums, selections, concatenations) and checks:

- frozen ``layers[i]`` reads only what ``layers[i-1]`` or its own modules produced, and nothing that requires grad
  (a trainable tensor upstream changes its input at every step);
- everything else (the layers still training, the head, the ops after the frozen layers, the model's output, any
  Python value read from a tensor) reads only the frontier's outputs;
- between the model's entry and the last frozen call no random number is drawn (dropout outside the frozen layers,
  in training mode) and no buffer outside them changes (a BatchNorm in training mode): the frozen layers' inputs
  depend on the example and nothing else;
- each frozen module runs once, takes and returns tensors whose first dimension is the batch (or shared ones) and
  plain values (no cache objects), and carries no hook but FreezeOut's own.

Anything else: the cache takes the plain path at that depth and says why, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .cache_store import LeafSpec
from .compat import forward_hooks, global_hooks, tensor_version
from .freezing import OwnedHook
from .hooks import tensors

__all__ = ["CallRecord", "Proof", "Recorder", "call_signature", "hooked_by_others"]

_METADATA = frozenset(
    {
        "size", "dim", "ndimension", "stride", "numel", "nelement", "is_contiguous", "is_floating_point",
        "is_complex", "element_size", "get_device", "__len__", "storage_offset", "data_ptr", "has_names",
        "is_pinned", "untyped_storage", "is_inference",
    }
)  # fmt: skip
_VALUE_GETTERS = frozenset({"T", "mT", "H", "mH", "data", "real", "imag", "grad"})
_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _metadata(func: Any) -> bool:
    name = getattr(func, "__name__", None)
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", None) not in _VALUE_GETTERS
    return name in _METADATA


def _others(value: Any) -> Iterable[Any]:
    """The non-tensor leaves of a nested structure."""
    if isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _others(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _others(v)
    else:
        yield value


def call_signature(value: Any, batch: int) -> int:
    """The structure of a frozen call's inputs: types, plain values, tensor dtypes and shapes (batch left out)."""
    parts: list[Any] = []
    for t in tensors(value):
        per_row = t.dim() > 0 and t.shape[0] == batch
        parts.append((t.dtype, tuple(t.shape[1:]) if per_row else ("shared", *t.shape)))
    parts.extend((type(v).__name__, v if isinstance(v, _PLAIN) else id(type(v))) for v in _others(value))
    return hash(tuple(parts))


def hooked_by_others(modules: Iterable[nn.Module]) -> str | None:
    """The first module with a hook that is not FreezeOut's own (it would not run for a served example)."""
    if global_hooks():
        return "a global module hook is registered"
    for m in modules:
        for hooks in forward_hooks(m):
            if any(not isinstance(h, OwnedHook) for h in hooks.values()):
                return f"{type(m).__name__} carries a forward hook of another library or the user"
    return None


@dataclass(eq=False)
class CallRecord:
    """One frozen module's call in the recorded forward: what it returns, per example."""

    module: nn.Module
    layer: int
    signature: int
    specs: list[LeafSpec]
    template: Any
    offset: int = 0  # its first leaf among the leaves of its layer's slab
    always: bool = False  # batch-free: runs in every forward, nothing stored


@dataclass(eq=False)
class Proof:
    """A forward at ``depth`` frozen layers passed every check: the frozen calls in order."""

    depth: int
    calls: list[CallRecord] = field(default_factory=list)

    def frontier(self) -> list[LeafSpec]:
        return [s for c in self.calls if c.layer == self.depth - 1 and not c.always for s in c.specs]


def _rng(device: torch.device | None) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device is not None and device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


class Recorder(TorchFunctionMode):
    """The checks of one recorded forward at ``depth`` (see the module doc); ``failure`` says the first one failed."""

    def __init__(self, depth: int, root: nn.Module, frozen: Iterable[nn.Module], device: torch.device | None) -> None:
        super().__init__()
        self.depth, self.device = depth, device
        self.inside = 0  # inside a frozen call: its own ops are not glue
        self.done = 0  # frozen calls finished
        self.tags: dict[int, tuple[torch.Tensor, frozenset[int]]] = {}
        self.late: list[tuple[int, frozenset[int], str]] = []  # (calls done, tag, what) of every op reading a tag
        self.failure: str | None = None
        self.counts: dict[int, int] = {}
        mine = {id(b) for m in frozen for b in m.buffers()}
        self.buffers = [(b, tensor_version(b)) for b in root.buffers() if id(b) not in mine]
        self.rng = _rng(device)

    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why

    def tag_of(self, value: Any) -> frozenset[int]:
        out: frozenset[int] = frozenset()
        for t in tensors(value):
            hit = self.tags.get(id(t))
            if hit is not None and hit[0] is t:
                out |= hit[1]
        return out

    def mark(self, value: Any, tag: frozenset[int]) -> None:
        for t in tensors(value):
            old = self.tags.get(id(t))
            self.tags[id(t)] = (t, tag | (old[1] if old is not None and old[0] is t else frozenset()))

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside or not self.tags or _metadata(func):
            return out
        tag = self.tag_of((args, kwargs))
        if tag:
            found = next(tensors(out), None) is not None
            if found:
                self.mark(out, tag)
            self.late.append((self.done, tag, "op" if found else f"a Python value ({getattr(func, '__name__', func)})"))
        return out

    # -- a frozen call ------------------------------------------------------------------------------------------
    def enter(self, layer: int, module: nn.Module, args: Any) -> None:
        self.counts[id(module)] = self.counts.get(id(module), 0) + 1
        extra = self.tag_of(args) - {layer - 1, layer}
        if extra:
            self.fail(f"frozen layers[{layer}] reads the output of layers[{min(extra)}] directly (a skip connection)")
        if any(t.requires_grad for t in tensors(args)):
            self.fail(f"a tensor that requires grad flows into frozen layers[{layer}] (a trainable tensor upstream)")
        odd = [v for v in _others(args) if not isinstance(v, _PLAIN)]
        if odd:
            what = type(odd[0]).__name__
            self.fail(
                f"frozen layers[{layer}] is called with a {what} (state it may change; Hugging Face: use_cache=False)"
            )

    def leave(self, layer: int, args: Any, output: Any, batch: int) -> bool:
        """After frozen ``layers[layer]``'s call; True if it is batch-free (no tensor in or out is per example, a
        position embedding): such a call always runs, it costs next to nothing and is the same for every batch."""
        self.done += 1
        self.mark(output, frozenset({layer}))
        per_row = [t.dim() > 0 and t.shape[0] == batch for t in tensors((args, output))]
        if not any(per_row) and not self.tag_of(args):
            self._state(layer)
            return True
        if any(t.dim() == 0 or t.shape[0] != batch for t in tensors(output)):
            self.fail(f"frozen layers[{layer}] returns a tensor whose first dimension is not the batch")
        if next(tensors(output), None) is None:
            self.fail(f"frozen layers[{layer}] returns no tensor")
        odd = [v for v in _others(output) if not isinstance(v, _PLAIN)]
        if odd:
            self.fail(f"frozen layers[{layer}] returns a {type(odd[0]).__name__}")
        self._state(layer)
        return False

    def _state(self, layer: int) -> None:
        if any(not torch.equal(a, b) for a, b in zip(_rng(self.device), self.rng)):
            self.fail("random numbers are drawn before the frozen layers end (dropout outside them, training)")
        if any(tensor_version(b) != v for b, v in self.buffers):
            self.fail("a buffer outside the frozen layers changes before they end (a BatchNorm training)")

    def finish(self, output: Any, modules: Iterable[nn.Module]) -> str | None:
        """After the forward: the first check that failed, or None."""
        frontier = frozenset({self.depth - 1})
        if self.tag_of(output) - frontier:
            self.fail("the model returns the output of a frozen layer before the last (hidden states?)")
        for done, tag, what in self.late:
            if done == self.done and tag - frontier:
                self.fail(f"{what} after the frozen layers reads the output of layers[{min(tag - frontier)}]")
            elif what != "op" and tag - frontier:
                self.fail(f"{what} read from the output of frozen layers[{min(tag - frontier)}] decides what runs")
        for m in modules:
            if self.counts.get(id(m), 0) != 1:
                self.fail(f"frozen {type(m).__name__} ran {self.counts.get(id(m), 0)} times in one forward, not once")
        self.tags.clear()
        return self.failure
