"""The forward that proves a depth: run in full under ``Recorder``, a ``TorchFunctionMode`` (docs/CACHE.md,
"How it knows it may skip a layer").

The cache keeps only the frontier; the earlier frozen layers' calls return NaN placeholders for a served example.
That is exact only if nothing but the next frozen layer reads their outputs and if the frozen layers' input is a
function of the example alone. ``Recorder`` tags every tensor a frozen layer returns with the layer's index,
carries the tags through the ops between frozen calls (the glue) and fails the proof, saying why, when

- frozen ``layers[i]`` reads what another than ``layers[i-1]`` or its own modules produced (a skip connection),
  or anything that requires grad;
- anything else (the head, the model's output, a Python value read from a tensor) reads another frozen layer's
  output than the frontier's;
- before the frontier ends, a random number is drawn, a buffer outside the frozen layers changes, rows of the batch
  are selected or reordered by a tensor (``x[mask]``, ``x[order]``), or a tensor that trains is read;
- a frozen module runs more than once, with or into odd values, or carries a hook that is not FreezeOut's.

It also notes every tensor read before the frontier that the forward did not make (``state.Read``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..compat import tensor_version
from ..tensors import reads_values, tensors
from .proof import PLAIN, others
from .state import Holder, Read, stamp

__all__ = ["Recorder", "trained_read"]

# ops that pick rows of their first argument by a tensor of indices or a mask, along the dimension given (None:
# they flatten it): a row of the result may be another example's, which example depending on the values
_ROW_PICKERS = {
    "__getitem__": None, "__setitem__": None, "index_select": 1, "gather": 1, "take_along_dim": 2,
    "index_copy": 1, "index_copy_": 1, "index_add": 1, "index_add_": 1, "index_put": None, "index_put_": None,
    "scatter": 1, "scatter_": 1, "masked_select": None, "take": None,
}  # fmt: skip


def _picks_rows(name: str, args: Any, kwargs: Mapping[str, Any], batch: int, data: Callable[[Any], bool]) -> bool:
    """Whether op ``name`` picks rows of a per-example first argument by an index or mask that ``data`` says
    depends on the values of the input (``arange(batch)`` built from a shape picks each row's own)."""
    if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() == 0 or args[0].shape[0] != batch:
        return False
    where = _ROW_PICKERS[name]
    if name in ("__getitem__", "__setitem__", "index_put", "index_put_"):
        index = args[1] if len(args) > 1 else kwargs.get("indices")
        first = index[0] if isinstance(index, (tuple, list)) and index else index
        return isinstance(first, torch.Tensor) and first.dim() > 0 and data(first)
    if where is None:
        return data((args[1:], kwargs))
    dim = args[where] if len(args) > where else kwargs.get("dim", 0)
    return isinstance(dim, int) and dim % args[0].dim() == 0 and data((args[1:], kwargs))


def trained_read(reads: list[Read]) -> Read | None:
    """The first read tensor that requires grad: the optimizer changes it at every step."""
    return next((r for r in reads if r.trains), None)


def _rng(device: torch.device | None) -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if device is not None and device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


class Recorder(TorchFunctionMode):
    """The checks of one proving forward at ``depth`` (see the module doc); ``failure`` says the first one that
    failed. ``held``: the model's tensors and where it holds them; ``inputs``: the model's input."""

    def __init__(self, depth: int, root: nn.Module, frozen: Iterable[nn.Module], held: dict[int, Holder],
                 inputs: Any, batch: int, device: torch.device | None) -> None:  # fmt: skip
        super().__init__()
        self.depth, self.batch, self.device, self.held = depth, batch, device, held
        self.inside = 0  # inside a frozen call: its own ops are not glue
        self.quiet = 0  # the cache's own ops (rows served from its tables, these checks): no reads of the model's
        self.done = 0  # frozen calls finished
        self.layer = 0  # the frozen layer running, or the last one that ran
        self.frontier_done = 0  # ``done`` after the last call of layers[depth - 1]
        self.tags: dict[int, tuple[torch.Tensor, frozenset[int]]] = {}
        self.late: list[tuple[int, frozenset[int], str]] = []  # (calls done, tag, what) of every op reading a tag
        self.early: list[tuple[int, str]] = []  # (calls done, failure) of checks that count before the frontier
        self.made: dict[int, weakref.ref] = {id(t): weakref.ref(t) for t in tensors(inputs)}
        self.data = dict(self.made)  # tensors whose values depend on the input's (the glue's results from it)
        self.reads: dict[int, tuple[torch.Tensor, int, int]] = {}  # id -> (tensor, layer, calls done) of first read
        self.failure: str | None = None
        self.counts: dict[int, int] = {}
        mine = {id(b) for m in frozen for b in m.buffers()}
        self.buffers = [(b, tensor_version(b)) for b in root.buffers() if id(b) not in mine]
        self.rng = _rng(device)

    def fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why

    def from_data(self, value: Any) -> bool:
        """Whether a tensor in ``value`` depends on the values of the input."""
        for t in tensors(value):
            ref = self.data.get(id(t))
            if ref is not None and ref() is t:
                return True
        return False

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
        if not reads_values(func):
            return out
        self._note_reads((args, kwargs), out)
        if self.inside:
            return out
        name = getattr(func, "__name__", "")
        if name in _ROW_PICKERS and _picks_rows(name, args, kwargs, self.batch, self.from_data):
            self.early.append((self.done, f"rows of the batch are picked by values of the input ({name}: x[mask], "
                                          "x[order])"))  # fmt: skip
        if self.from_data((args, kwargs)):
            self.data.update((id(t), weakref.ref(t)) for t in tensors(out))
        tag = self.tag_of((args, kwargs)) if self.tags else frozenset()
        if tag:
            found = next(tensors(out), None) is not None
            if found:
                self.mark(out, tag)
            self.late.append((self.done, tag, "op" if found else f"a Python value ({name or func})"))
        return out

    def _note_reads(self, inputs: Any, out: Any) -> None:
        for t in tensors(inputs) if not self.quiet else ():
            made = self.made.get(id(t))
            if (made is None or made() is not t) and id(t) not in self.reads:
                self.reads[id(t)] = (t, self.layer, self.done)
        for t in tensors(out):
            if id(t) not in self.reads:
                self.made[id(t)] = weakref.ref(t)

    # -- a frozen call ------------------------------------------------------------------------------------------
    def enter(self, layer: int, module: nn.Module, args: Any) -> None:
        self.layer = layer
        self.counts[id(module)] = self.counts.get(id(module), 0) + 1
        extra = self.tag_of(args) - {layer - 1, layer}
        if extra:
            self.fail(f"frozen layers[{layer}] reads the output of layers[{min(extra)}] directly (a skip connection)")
        if any(t.requires_grad for t in tensors(args)):
            self.fail(f"a tensor that requires grad flows into frozen layers[{layer}] (a trainable tensor upstream)")
        odd = [v for v in others(args) if not isinstance(v, PLAIN)]
        if odd:
            what = type(odd[0]).__name__
            self.fail(
                f"frozen layers[{layer}] is called with a {what} (state it may change; Hugging Face: use_cache=False)"
            )

    def leave(self, layer: int, args: Any, output: Any) -> bool:
        """After frozen ``layers[layer]``'s call; True if it is batch-free (no tensor in or out is per example or
        made from the input, a position embedding): such a call always runs, on whatever it is given."""
        self.done += 1
        if layer == self.depth - 1:
            self.frontier_done = self.done
        self.mark(output, frozenset({layer}))
        self.data.update((id(t), weakref.ref(t)) for t in tensors(output))
        batch = self.batch
        per_row = [t.dim() > 0 and t.shape[0] == batch for t in tensors((args, output))]
        if not any(per_row) and not self.tag_of(args) and not self.from_data(args):
            self._state()
            return True
        if any(t.dim() == 0 or t.shape[0] != batch for t in tensors(output)):
            self.fail(f"frozen layers[{layer}] returns a tensor whose first dimension is not the batch")
        if next(tensors(output), None) is None:
            self.fail(f"frozen layers[{layer}] returns no tensor")
        odd = [v for v in others(output) if not isinstance(v, PLAIN)]
        if odd:
            self.fail(f"frozen layers[{layer}] returns a {type(odd[0]).__name__}")
        self._state()
        return False

    def _state(self) -> None:
        self.quiet += 1
        try:
            if any(not torch.equal(a, b) for a, b in zip(_rng(self.device), self.rng)):
                self.fail("random numbers are drawn before the frozen layers end (dropout outside them, training)")
        finally:
            self.quiet -= 1
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
        for done, why in self.early:
            if done < self.frontier_done:
                self.fail(why)
        for m in modules:
            if self.counts.get(id(m), 0) != 1:
                self.fail(f"frozen {type(m).__name__} ran {self.counts.get(id(m), 0)} times in one forward, not once")
        trained = trained_read(self.read_list())
        if trained is not None:
            self.fail(f"{trained.name} flows into frozen layers[{trained.layer}] and trains (a tied weight?)")
        self.tags.clear()
        return self.failure

    def read_list(self) -> list[Read]:
        """The tensors read before the frontier ended that this forward did not make."""
        return [
            Read(t, layer, stamp(t), self.held.get(id(t)), t.requires_grad)
            for t, layer, done in self.reads.values()
            if done < self.frontier_done
        ]
