"""rewrap_ddp with 2 gloo ranks: all-reduced bytes shrink to the trainable parameters as layers freeze."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from freezeout import FreezeOut, param_groups
from freezeout.accel.ddp import AllReduceCounter, counting_allreduce_hook, rewrap_ddp, trainable_bytes
from freezeout.accel.fold import is_folded

TOTAL = 10


def _worker(rank: int, world: int, init_file: str, out_dir: str, rewrap: bool, resnet: bool) -> None:
    from freezeout.experiment.models import ResNet
    from tests.helpers.models import TinyNet, batch, leave_process_group

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    # ResNet-8 for the rewrap: every frozen layer folds its BatchNorms, and each rewrap's broadcast rewrites the
    # frozen tensors in place, so the folds are rebuilt from them
    model = ResNet(8, 4) if resnet else TinyNet()
    counter = AllReduceCounter()
    ddp = DDP(model, find_unused_parameters=not rewrap)
    ddp.register_comm_hook(counter, counting_allreduce_hook)
    opt = torch.optim.SGD(param_groups(ddp, model.layers), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = FreezeOut(opt, model.layers, total_steps=TOTAL, t0=0.3, schedule="linear", fuse=True)
    rows, frozen_at, frozen = [], {}, 0
    for step in range(TOTAL):
        ddp.train()
        x, y = batch(step * world + rank)
        opt.zero_grad()
        counter.reset()
        F.cross_entropy(ddp(x), y).backward()
        rows.append({"bytes": counter.bytes, "trainable": trainable_bytes(model), "frozen": sched.num_frozen})
        opt.step()
        sched.step()
        for i in range(sched.num_frozen):
            frozen_at.setdefault(i, {k: v.clone() for k, v in model.layers[i].state_dict().items()})
        if rewrap and sched.num_frozen != frozen and step < TOTAL - 1:
            frozen = sched.num_frozen
            ddp = rewrap_ddp(ddp, comm_hook=(counter, counting_allreduce_hook))
    state = dict(model.state_dict())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    params = [name for name, _ in model.named_parameters()]
    out = {"state": state, "params": params, "rows": rows, "frozen_at": frozen_at, "total": total}
    out["fused"] = [is_folded(layer) for layer in model.layers]
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    del ddp
    leave_process_group()


def spawn(tmp_path, rewrap: bool, resnet: bool = False):
    world = 2
    args = (world, str(tmp_path / "init"), str(tmp_path), rewrap, resnet)
    mp.spawn(_worker, args=args, nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def check_sync_and_frozen(r0, r1):
    # parameters only: trainable BatchNorms' running stats are per rank (rank 0's broadcast each forward)
    for k in r0["params"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ in {k}"
    prefixes = {0: "stem.", 1: "blocks.0.", 2: "blocks.1.", 3: "blocks.2."}
    assert sorted(r0["frozen_at"]) == [0, 1, 2, 3]
    for i, snap in r0["frozen_at"].items():
        for k, v in snap.items():
            for r in (r0, r1):
                assert torch.equal(v, r["state"][prefixes[i] + k]), f"layer {i} moved after freezing ({k})"


def test_rewrapped_ddp_all_reduces_only_trainable_parameters(tmp_path):
    r0, r1 = spawn(tmp_path, rewrap=True, resnet=True)
    check_sync_and_frozen(r0, r1)
    assert r0["fused"] == r1["fused"] == [True] * 4  # the frozen blocks ran folded
    rows = r0["rows"]
    assert rows == r1["rows"]
    for row in rows:
        assert row["bytes"] == row["trainable"], row  # exactly the still-trainable parameters
    assert rows[0]["bytes"] == r0["total"]
    frozen_counts = [row["frozen"] for row in rows]
    assert frozen_counts[-1] == 4 and rows[-1]["bytes"] < rows[0]["bytes"]
    for a, b in itertools.pairwise(rows):  # bytes fall exactly when a layer has frozen
        assert (b["bytes"] < a["bytes"]) == (b["frozen"] > a["frozen"])


def test_without_rewrap_frozen_gradients_are_still_all_reduced(tmp_path):
    r0, r1 = spawn(tmp_path, rewrap=False)
    check_sync_and_frozen(r0, r1)
    assert {row["bytes"] for row in r0["rows"]} == {r0["total"]}
    assert r0["rows"][-1]["trainable"] < r0["total"]


def test_rewrap_errors():
    with pytest.raises(ValueError, match="ddp_model must be a DistributedDataParallel"):
        rewrap_ddp(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(("bucket_view", "static"), [(True, True), (False, False)])
def test_rewrap_keeps_the_wrappers_settings(tmp_path, bucket_view, static):
    from tests.helpers.models import TinyNet, leave_process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        model = TinyNet()
        ddp = DDP(model, gradient_as_bucket_view=bucket_view, static_graph=static, bucket_cap_mb=1)
        model.stem.requires_grad_(False)
        new = rewrap_ddp(ddp)
        assert new.module is model and (new.gradient_as_bucket_view, new.static_graph) == (bucket_view, static)
        assert new.bucket_bytes_cap == ddp.bucket_bytes_cap and new.find_unused_parameters == ddp.find_unused_parameters
        del ddp, new
    finally:
        leave_process_group()
