"""DistributedDataParallel that stops all-reducing the gradients of frozen layers.

``DistributedDataParallel(model, find_unused_parameters=True)`` keeps ranks in sync under FreezeOut, but
DDP fixes its gradient buckets at construction: a frozen layer's slots stay in them and are all-reduced
(as zeros) every step to the end. DDP only registers parameters that require grad when it is built, so
rebuilding it over the same module when layers freeze shrinks the buckets to the still-trainable
parameters::

    ddp = DDP(model)
    opt = torch.optim.SGD(freezeout.param_groups(ddp, layers), lr=0.1)
    sched = freezeout.FreezeOut(opt, layers, total_steps)
    for x, y in loader:
        ...; opt.step(); sched.step()
        if sched.num_frozen != frozen:          # a layer froze: rebuild over what still trains
            frozen = sched.num_frozen
            ddp = freezeout.accel.ddp.rewrap_ddp(ddp)

The module, its parameters, the optimizer and FreezeOut are unchanged; only the wrapper is new. Since
frozen parameters no longer take part, ``find_unused_parameters`` is not needed for them. Rebuilding
broadcasts rank 0's parameters and buffers once (as DDP's constructor does), which costs one step's
worth of communication per freeze event. ``AllReduceCounter`` measures the bytes all-reduced per step.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

__all__ = ["AllReduceCounter", "counting_allreduce_hook", "rewrap_ddp", "trainable_bytes"]


@dataclass
class AllReduceCounter:
    """State of ``counting_allreduce_hook``: bytes and buckets all-reduced since the last ``reset``."""

    process_group: Any = None  # None: the default group
    bytes: int = 0
    buckets: int = 0

    def reset(self) -> None:
        self.bytes = 0
        self.buckets = 0


# No ``from __future__ import annotations`` here: DDP checks the hook's annotations at runtime.
def counting_allreduce_hook(state: AllReduceCounter, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce, counting the bytes of each bucket: ``ddp.register_comm_hook(state, this)``."""
    buf = bucket.buffer()
    state.bytes += buf.numel() * buf.element_size()
    state.buckets += 1
    return default_hooks.allreduce_hook(state.process_group, bucket)


def trainable_bytes(module: nn.Module) -> int:
    """Bytes of the parameters that still require grad: what DDP rebuilt by ``rewrap_ddp`` all-reduces."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def rewrap_ddp(
    ddp_model: DDP,
    comm_hook: tuple[Any, Callable[..., Any]] | None = None,
    **ddp_kwargs: Any,
) -> DDP:
    """A new ``DistributedDataParallel`` over ``ddp_model.module`` and its still-trainable parameters.

    Keeps the old wrapper's settings (device ids, process group, bucket size, buffer broadcast,
    ``find_unused_parameters``, ``gradient_as_bucket_view``, ``static_graph``) unless ``ddp_kwargs`` gives
    others. Comm hooks are not carried over: pass ``comm_hook=(state, hook)`` to register one. Drop every
    reference to the old wrapper: its gradient hooks live as long as it does. Call between steps (after
    ``optimizer.step()``), on every rank.
    """
    if not isinstance(ddp_model, DDP):
        raise ValueError(f"ddp_model must be a DistributedDataParallel, got {type(ddp_model).__name__}")
    module = ddp_model.module
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError("every parameter is frozen: there is nothing left for DistributedDataParallel to sync")
    settings: dict[str, Any] = {
        "device_ids": ddp_model.device_ids,
        "output_device": ddp_model.output_device,
        "process_group": ddp_model.process_group,
        "bucket_cap_mb": ddp_model.bucket_bytes_cap / 2**20,
        "find_unused_parameters": ddp_model.find_unused_parameters,
        "gradient_as_bucket_view": ddp_model.gradient_as_bucket_view,
        "static_graph": ddp_model.static_graph,
    }
    # torch 2.13 renamed broadcast_buffers (now warning) to forward_sync_buffers
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        settings["forward_sync_buffers"] = ddp_model.forward_sync_buffers
    else:  # pragma: no cover - older torch
        settings["broadcast_buffers"] = ddp_model.broadcast_buffers
    settings.update(ddp_kwargs)
    del ddp_model  # our reference: the caller drops theirs by rebinding the name
    new = DDP(module, **settings)
    if comm_hook is not None:
        new.register_comm_hook(*comm_hook)
    return new
