"""FreezeOut under FSDP2 (``torch.distributed.fsdp.fully_shard``): frozen layers gathered once, then kept whole.

FSDP2 shards each ``fully_shard``-ed module's parameters across ranks, all-gathers them before its forward (and
again before its backward) and reduce-scatters its gradients. Under FreezeOut a frozen layer gets no gradient, so
FSDP already skips its reduce-scatter, but it still all-gathers the layer at every step, only to free it again.
``gather_frozen`` stops that: every FSDP module whose parameters all belong to frozen layers stops resharding, so
its next forward gathers it one last time and it stays whole (unsharded) from then on::

    layers = fully_shard_layers(model, layers)      # fully_shard per layer, then on the root
    opt = torch.optim.AdamW(freezeout.param_groups(model, layers), lr=1e-3)
    sched = freezeout.FreezeOut(opt, layers, total_steps)
    for x, y in loader:
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
        gather_frozen(sched)                        # the one added line; a no-op unless a layer froze
        opt.zero_grad()

Why this is sound: FSDP's own switch (``set_reshard_after_forward(False)`` and ``set_reshard_after_backward(False)``
on the module), nothing patched. A frozen layer's sharded parameters (the ones the optimizer holds) never change
again, so the gathered copy cannot go stale; its registered parameters are then ordinary local tensors holding the
full weights, which a frozen-layer pass (BatchNorm folding) can read. When a layer freezes its buffers (BatchNorm
statistics, which FSDP leaves per rank) are broadcast from rank 0 once, so every rank runs the same frozen function
and a checkpoint, which stores one copy of them, resumes exactly. The cost: each rank holds the frozen layers'
full weights (in a CNN the early layers, frozen first, are the small ones), and ``state_dict()`` reshards
them (FSDP's hook), so the forward after a checkpoint gathers them once more.

``save_checkpoint`` / ``load_checkpoint``: ``torch.distributed.checkpoint`` (DCP) of model, optimizer and FreezeOut;
a resumed run continues bit for bit. ``CommCounter`` counts all-gather and reduce-scatter bytes per FSDP module.
See docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard

from ..compat import fsdp_collectives, fsdp_param_groups, fsdp_state
from ..controller import FreezeOut
from ..layers import LayerLike, as_layers

__all__ = ["CommCounter", "fully_shard_layers", "gather_frozen", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

# How many of a FreezeOut's layers gather_frozen has handled: a resumed run's new FreezeOut starts again at 0.
_handled: weakref.WeakKeyDictionary[FreezeOut, int] = weakref.WeakKeyDictionary()


def _managed(module: FSDPModule) -> list[nn.Parameter]:
    """The sharded parameters (what the optimizer holds) of every parameter group of ``module``'s FSDP state."""
    return [fp.sharded_param for group in fsdp_param_groups(module) for fp in group.fsdp_params]


def fully_shard_layers(model: nn.Module, layers: Sequence[LayerLike], **fully_shard_kwargs: Any) -> list[LayerLike]:
    """``fully_shard`` each layer (a group layer's modules as one FSDP group), then ``model`` (the root).

    Returns the layers to build the optimizer and FreezeOut from: ``fully_shard`` replaces parameter objects, so a
    layer's loose parameters (a ViT's ``cls_token`` held by the root, as ``find_layers`` attaches them) are looked
    up again by name. Modules stay the same objects. ``fully_shard_kwargs`` (``mesh``, ``mp_policy``,
    ``reshard_after_forward``, ...) go to every call.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    items = as_layers(layers)
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    loose = [[names.get(id(p)) for p in layer.loose] for layer in items]
    for layer, holders in zip(items, loose):
        if None in holders:
            raise ValueError(f"layers[{layer.index}] holds a parameter that is not the model's")
        if layer.modules:
            modules = list(layer.modules)
            fully_shard(modules[0] if len(modules) == 1 else modules, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    out: list[LayerLike] = []
    for layer, holders in zip(items, loose):
        members = [*layer.modules, *(model.get_parameter(n) for n in holders)]
        out.append(members[0] if len(members) == 1 else members)
    return out


def gather_frozen(sched: FreezeOut, process_group: dist.ProcessGroup | None = None) -> list[nn.Module]:
    """Keep whole every FSDP module within ``sched``'s frozen layers whose parameters are all frozen.

    Call on every rank after ``sched.step()`` (every step, or when ``num_frozen`` changed): it does work only for
    layers frozen since the last call. For each, broadcasts its buffers from rank 0 of ``process_group`` (default:
    the default group) and turns off resharding after forward and backward for its FSDP modules: the next forward
    gathers them for the last time. Returns those modules. A frozen parameter held by a module that still trains
    (a loose parameter on the root) is gathered with it, as before.
    """
    if not isinstance(sched, FreezeOut):
        raise ValueError(f"sched must be a freezeout.FreezeOut, got {type(sched).__name__}")
    done = _handled.get(sched, 0)
    if sched.num_frozen <= done:
        return []
    frozen = {
        id(p)
        for group, owner in zip(sched.optimizer.param_groups, sched.group_layers)
        if owner < sched.num_frozen
        for p in group["params"]
    }
    items = as_layers(sched.layers)
    kept: list[nn.Module] = []
    for layer in items[done : sched.num_frozen]:
        _broadcast_buffers(layer.all_modules(), process_group)
        for m in layer.all_modules():
            if not isinstance(m, FSDPModule) or m in kept:
                continue
            managed = _managed(m)
            if managed and all(id(p) in frozen for p in managed):
                m.set_reshard_after_forward(False, recurse=False)
                m.set_reshard_after_backward(False, recurse=False)
                kept.append(m)
    log.debug("layers[%d:%d] frozen: %d FSDP module(s) kept whole from their next forward", done, sched.num_frozen,
              len(kept))  # fmt: skip
    _handled[sched] = sched.num_frozen
    return kept


def _broadcast_buffers(modules: Iterable[nn.Module], process_group: dist.ProcessGroup | None) -> None:
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(process_group) == 1:
        return
    seen: set[int] = set()
    for m in modules:
        for b in m.buffers(recurse=False):
            if id(b) not in seen:
                seen.add(id(b))
                dist.broadcast(b, group=process_group, group_src=0)


def _schedule_of(sched: FreezeOut) -> dict[str, Any]:
    return {"freezeout": sched.state_dict()}


def save_checkpoint(
    checkpoint_id: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sched: FreezeOut,
    process_group: dist.ProcessGroup | None = None,
    **dcp_kwargs: Any,
) -> None:
    """Save model, optimizer and FreezeOut with ``torch.distributed.checkpoint.save``, on every rank.

    The model's and the optimizer's state dicts are the sharded ones (``get_state_dict``); frozen layers kept whole
    are saved sharded too (FSDP's ``state_dict`` hook reshards them; their next forward gathers them again).
    Buffers, which FSDP does not shard, are saved once, rank 0's copy: rank 0's are the statistics ``gather_frozen``
    hands every rank when their layer freezes, so a resumed run freezes the same values. ``dcp_kwargs``
    (``storage_writer``, ``planner``, ...) go to ``dcp.save``.
    """
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state, **_schedule_of(sched)}
    # DCP's default keeps each replicated tensor from whichever rank has planned the fewest bytes so far
    dcp_kwargs.setdefault("planner", DefaultSavePlanner(dedup_save_to_lowest_rank=True))
    dcp.save(state, checkpoint_id=checkpoint_id, process_group=process_group, **dcp_kwargs)


def load_checkpoint(
    checkpoint_id: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sched: FreezeOut,
    process_group: dist.ProcessGroup | None = None,
    **dcp_kwargs: Any,
) -> None:
    """Resume from ``save_checkpoint``: model, optimizer and FreezeOut built exactly as at the start, on every rank.

    FreezeOut's state comes first here (unlike a single process's order): DCP loads into the state dict it is
    given, and the optimizer holds state only for the parameters still training at the save, so the layers frozen
    by then must be frozen before the optimizer's state dict is taken (else DCP fails: "Missing key in checkpoint
    state_dict: optim.state.<a frozen parameter>..."). Then model and optimizer, then FreezeOut again (it sets every
    LR), and ``gather_frozen``.
    """
    schedule = _schedule_of(sched)
    dcp.load(schedule, checkpoint_id=checkpoint_id, planner=DefaultLoadPlanner(allow_partial_load=True),
             process_group=process_group, **dcp_kwargs)  # fmt: skip
    sched.load_state_dict(schedule["freezeout"])
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=checkpoint_id, process_group=process_group, **dcp_kwargs)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    sched.load_state_dict(schedule["freezeout"])
    gather_frozen(sched, process_group)


_AllGather, _ReduceScatter = fsdp_collectives()


class _CountingAllGather(_AllGather):
    def __init__(self, counter: CommCounter, name: str) -> None:
        self.counter, self.name = counter, name

    def __call__(
        self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any, async_op: bool = False
    ) -> dist.Work | None:
        self.counter._add(self.counter.all_gather, self.name, output_tensor)
        return super().__call__(output_tensor=output_tensor, input_tensor=input_tensor, group=group, async_op=async_op)


class _CountingReduceScatter(_ReduceScatter):
    def __init__(self, counter: CommCounter, name: str) -> None:
        self.counter, self.name = counter, name

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any, op: Any,
                 async_op: bool = False) -> dist.Work | None:  # fmt: skip
        self.counter._add(self.counter.reduce_scatter, self.name, input_tensor)
        return super().__call__(output_tensor=output_tensor, input_tensor=input_tensor, group=group, op=op,
                                async_op=async_op)  # fmt: skip


@dataclass
class CommCounter:
    """Bytes FSDP all-gathers and reduce-scatters, per FSDP module (by its name in the model; ``""``: the root).

    ``CommCounter().attach(model)`` installs FSDP's default collectives with a count in front, through
    ``FSDPModule.set_custom_all_gather`` / ``set_custom_reduce_scatter``. A count is the size of the whole flat
    buffer: the gathered parameters (padded to a multiple of the world size) for an all-gather, the unsharded
    gradients for a reduce-scatter, as DDP's all-reduce counts its bucket (``accel.ddp.AllReduceCounter``).
    """

    all_gather: dict[str, int] = field(default_factory=dict)
    reduce_scatter: dict[str, int] = field(default_factory=dict)

    def attach(self, model: nn.Module) -> CommCounter:
        seen: set[int] = set()
        for name, m in model.named_modules():
            if isinstance(m, FSDPModule) and id(fsdp_state(m)) not in seen and any(True for _ in fsdp_param_groups(m)):
                seen.add(id(fsdp_state(m)))
                m.set_custom_all_gather(_CountingAllGather(self, name))
                m.set_custom_reduce_scatter(_CountingReduceScatter(self, name))
        if not seen:
            raise ValueError("model has no fully_shard-ed module with parameters: nothing to count")
        return self

    def reset(self) -> None:
        self.all_gather.clear()
        self.reduce_scatter.clear()

    @property
    def bytes(self) -> int:
        return sum(self.all_gather.values()) + sum(self.reduce_scatter.values())

    @staticmethod
    def _add(table: dict[str, int], name: str, t: torch.Tensor) -> None:
        table[name] = table.get(name, 0) + t.numel() * t.element_size()
