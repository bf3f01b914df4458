"""DistributedDataParallel with 2 gloo ranks on loopback: ranks in sync, frozen layers unmoved."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from freezeout import FreezeOut, param_groups

TOTAL = 10


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from tests.helpers.models import TinyNet, batch, leave_process_group

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = TinyNet()
    ddp = DDP(model, find_unused_parameters=True)
    opt = torch.optim.SGD(param_groups(ddp, model.layers), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = FreezeOut(opt, model.layers, total_steps=TOTAL, t0=0.5, schedule="linear")
    frozen_at = {}
    for step in range(TOTAL):
        ddp.train()
        x, y = batch(step * world + rank)  # each rank sees its own data
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
        sched.step()
        for i in range(sched.num_frozen):
            assert all(p.grad is None and not p.requires_grad for p in model.layers[i].parameters())
            frozen_at.setdefault(i, {k: v.clone() for k, v in model.layers[i].state_dict().items()})
    params = [name for name, _ in model.named_parameters()]
    torch.save(
        {"state": model.state_dict(), "params": params, "frozen_at": frozen_at}, os.path.join(out_dir, f"rank{rank}.pt")
    )
    del ddp
    leave_process_group()


def test_two_gloo_ranks_stay_in_sync_with_frozen_layers_unmoved(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world))
    names = r0["params"]
    for k in names:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ in {k}"
    # Buffers of trainable BatchNorms are per rank in DDP (rank 0's are broadcast before each forward);
    # those of frozen layers are fixed, so they match too, and are checked below.
    assert sorted(r0["frozen_at"]) == [0, 1, 2, 3]
    prefixes = {0: "stem.", 1: "blocks.0.", 2: "blocks.1.", 3: "blocks.2."}
    for i, snap in r0["frozen_at"].items():
        for k, v in snap.items():
            for r in (r0, r1):
                assert torch.equal(v, r["state"][prefixes[i] + k]), f"layer {i} moved after freezing ({k})"
