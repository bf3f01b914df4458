"""How the trainer's processes run: one process, or torchrun's N, behind one interface.

The trainer talks to a ``Launch`` and never asks which kind it has. ``SingleProcess`` does the obvious
(its collectives are identities); ``Torchrun`` is what ``torchrun --nproc_per_node N -m freezeout train ...``
gives (``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set):

- process group: gloo on CPU, NCCL on CUDA with device ``cuda:LOCAL_RANK`` (one already initialised by
  the caller is used as it is);
- ``--batch-size`` is the global batch (the paper's 50 is one), split evenly across the processes, so
  it must be divisible by the world size; each pass over the data is sharded like ``DistributedSampler``
  (``Batches(shard=...)``): step ``j`` of all ranks together covers the examples of step ``j`` of a
  single-process run, and the FreezeOut schedule has the same number of steps;
- the model runs in ``DistributedDataParallel``; whenever a layer freezes, ``rewrap_ddp`` rebuilds it
  over the still-trainable parameters, so frozen layers' gradients are no longer all-reduced. A comm
  hook counts the all-reduced bytes, reported per epoch in metrics.jsonl;
- at the end of every epoch rank 0's buffers (BatchNorm running statistics, which each rank updates
  from its own half-batches) are broadcast, and a checksum of every parameter and buffer is compared
  across ranks: a divergence raises instead of training on silently;
- rank 0 evaluates (the model the checkpoint holds) and writes every file; the others wait for its
  epoch record, which every rank returns.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..accel.ddp import AllReduceCounter, counting_allreduce_hook, rewrap_ddp, trainable_bytes
from ..checks import resolve_device

__all__ = ["Launch", "SingleProcess", "Torchrun", "launch_from_env", "state_checksums"]

log = logging.getLogger(__name__)


class Launch:
    """One process's place in a run: its rank among ``world_size`` processes, and what they do together."""

    rank, world_size, local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        """The process that evaluates and writes the files."""
        return self.rank == 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Launch) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def key(self) -> tuple[str, int, int, int]:
        return type(self).__name__, self.rank, self.world_size, self.local_rank

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    def batch_per_process(self, batch_size: int) -> int:
        """``batch_size`` is the global batch and must split evenly across the processes."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} is the global batch and must be divisible by the torchrun world size "
                f"{self.world_size} (e.g. {self.world_size * max(1, batch_size // self.world_size)})"
            )
        return batch_size // self.world_size

    def check_world_size(self, saved: dict[str, Any], where: Any) -> None:
        """A checkpoint or summary (``saved``) can only be resumed by as many processes as it was run with."""
        before = saved.get("world_size", 1)
        if before != self.world_size:
            raise ValueError(
                f"cannot resume {where}: torchrun launched with a mismatched world size "
                f"({self.world_size} process(es); the run in it was trained by {before})"
            )

    def device(self, name: str) -> torch.device:
        """The device this process trains on."""
        return resolve_device(name)

    # What the processes do together; for one process each is the obvious thing.
    def start(self, device: torch.device) -> None:
        """Join the other processes."""

    def agree(self, check: Callable[..., Any], *args: Any) -> None:
        """Run ``check(*args)`` on the main process and raise its ``ValueError`` on every process."""
        check(*args)

    def wrap(self, model: nn.Module, sched: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the training forward pass goes through."""
        return model

    def after_step(self) -> None:
        """Called after every optimizer step and ``sched.step()``."""

    def end_epoch(self, loss_sum: torch.Tensor) -> dict[str, Any]:
        """Make the processes agree at the end of an epoch; the numbers to add to the epoch's record."""
        return {}

    def share(self, obj: Any) -> Any:
        """The main process's ``obj``, on every process."""
        return obj

    def close(self, ok: bool) -> None:
        """Leave the other processes (``ok``: every one finished)."""


class SingleProcess(Launch):
    """One process: rank 0 of 1."""


def _env_int(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name)
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"torchrun launched with a bad environment: {name}={text!r} is not an integer") from None


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch:
    """The launch this process belongs to: ``Torchrun`` when ``WORLD_SIZE`` > 1, else ``SingleProcess``.

    Raises ``ValueError`` for an environment that cannot describe a launch (``RANK`` outside the world,
    ``LOCAL_WORLD_SIZE`` larger than ``WORLD_SIZE``, ...), in one line.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return SingleProcess()
    world = _env_int(env, "WORLD_SIZE")
    if world < 1:
        raise ValueError(f"torchrun launched with a mismatched world size: WORLD_SIZE={world} (must be >= 1)")
    if world == 1:
        return SingleProcess()
    rank, local = _env_int(env, "RANK"), _env_int(env, "LOCAL_RANK")
    local_world = _env_int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
    if not 0 <= rank < world or not 0 <= local < local_world or local_world > world:
        raise ValueError(
            f"torchrun launched with a mismatched world size: RANK={rank}, LOCAL_RANK={local}, "
            f"LOCAL_WORLD_SIZE={local_world}, WORLD_SIZE={world}"
        )
    return Torchrun(rank, world, local)


def state_checksums(module: nn.Module) -> tuple[list[str], torch.Tensor]:
    """Names and an int64 checksum per state tensor that changes with any bit of it (a position-weighted byte sum)."""
    names, sums = [], []
    for name, t in module.state_dict().items():
        raw = t.detach().reshape(-1).contiguous().view(torch.uint8).long()
        weights = torch.arange(1, len(raw) + 1, device=raw.device) % 65521 + 1  # never 0: every byte counts
        names.append(name)
        sums.append((raw * weights).sum())
    return names, torch.stack(sums)


class Torchrun(Launch):
    """One of torchrun's processes: the process group, the DDP wrapper and the all-reduce counter of its run."""

    def __init__(self, rank: int, world_size: int, local_rank: int) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.torch_device: torch.device | None = None  # set by start()
        self.owns_group = False  # we initialised the process group, so we destroy it
        self.counter = AllReduceCounter()
        self.ddp: DDP | None = None
        self.sched: Any = None
        self.frozen = self.steps = 0
        self.agreed_failure = False  # every rank raised the same error at the same point: safe to leave the group

    def device(self, name: str) -> torch.device:
        """``cuda:LOCAL_RANK`` where the config asks for CUDA (auto with a GPU, or cuda); cpu stays cpu."""
        resolved = resolve_device(name)
        if resolved.type != "cuda":
            return resolved
        if name.startswith("cuda:"):
            raise ValueError(
                f"device {name!r} names one GPU; under torchrun each process uses cuda:LOCAL_RANK: use cuda"
            )
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, NCCL on CUDA), or use the one the caller initialised."""
        self.torch_device = device
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise ValueError(
                f"torchrun launched with a mismatched world size: the process group has rank {dist.get_rank()} "
                f"of {dist.get_world_size()}, the environment rank {self.rank} of {self.world_size}"
            )

    def close(self, ok: bool) -> None:
        """Leave the process group we joined: after a barrier if every rank finished (``ok``).

        A failed rank only drops its references: destroying a group while the others are still in a
        collective can hang them, and torchrun ends them anyway once one process fails.
        """
        self.ddp = self.sched = None
        gc.collect()  # old DDP wrappers (one per freeze) hold gloo work: free it while the group is alive
        if (ok or self.agreed_failure) and self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def wrap(self, model: nn.Module, sched: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """DDP over ``model``'s trainable parameters (those not frozen yet: a resumed run has some)."""
        device = self.torch_device
        ids = [device.index] if device is not None and device.type == "cuda" else None
        self.sched, self.frozen = sched, sched.num_frozen
        self.ddp = DDP(model, device_ids=ids)
        self.ddp.register_comm_hook(self.counter, counting_allreduce_hook)
        return lambda x: self.ddp(x)  # the wrapper is rebuilt as layers freeze: always the current one

    def after_step(self) -> None:
        """Count the step; after a freeze, rebuild DDP so the frozen layers leave its buckets."""
        self.steps += 1
        if self.sched.num_frozen != self.frozen:
            self.frozen = self.sched.num_frozen
            self.ddp = rewrap_ddp(self.ddp, comm_hook=(self.counter, counting_allreduce_hook))
            log.debug("%d layers frozen: DDP rebuilt over %d trainable bytes", self.frozen, trainable_bytes(self.ddp))

    def end_epoch(self, loss_sum: torch.Tensor) -> dict[str, Any]:
        """Sum the loss over ranks, sync buffers from rank 0, check the ranks agree; return the epoch's DDP numbers."""
        dist.all_reduce(loss_sum)
        module = self.ddp.module
        for b in module.buffers():
            dist.broadcast(b, 0)
        self.check_in_sync(module)
        record = {
            "world_size": self.world_size,
            "allreduce_bytes_per_step": self.counter.bytes / max(self.steps, 1),
            "trainable_bytes": trainable_bytes(module),
        }
        self.counter.reset()
        self.steps = 0
        return record

    def check_in_sync(self, module: nn.Module) -> None:
        names, local = state_checksums(module)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        for rank, other in enumerate(gathered):
            differ = (other != gathered[0]).nonzero()
            if len(differ):
                raise RuntimeError(f"ranks diverged: rank {rank}'s {names[int(differ[0])]} differs from rank 0's")

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a barrier too: the others wait until rank 0 has it)."""
        box = [obj if self.is_main else None]
        device = self.torch_device if self.torch_device is not None and self.torch_device.type == "cuda" else None
        dist.broadcast_object_list(box, 0, device=device)
        return box[0]

    def agree(self, check: Callable[..., Any], *args: Any) -> None:
        """Raise rank 0's ``ValueError`` from ``check(*args)`` (a check only rank 0 makes) on every rank."""
        error = None
        if self.is_main:
            try:
                check(*args)
            except ValueError as exc:
                error = str(exc)
        error = self.share(error)
        if error is not None:
            self.agreed_failure = True
            raise ValueError(error if self.is_main else f"on rank 0: {error}")
