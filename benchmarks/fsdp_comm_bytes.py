"""Bytes communicated per step by 2 gloo ranks under FreezeOut: FSDP2 (as is, and with gather_frozen) next to DDP
(as is, and with rewrap_ddp).

Run: PYTHONPATH=. .venv/bin/python benchmarks/fsdp_comm_bytes.py [--model densenet-bc --depth 22 --growth 12
     --steps 20]
FSDP: ``fully_shard`` per freezable layer and on the root (``accel.fsdp.fully_shard_layers``); all-gather and
reduce-scatter bytes counted per FSDP module by ``accel.fsdp.CommCounter``. DDP: all-reduce bytes counted by
``accel.ddp.counting_allreduce_hook``. A count is the size of the collective's whole flat buffer (gathered
parameters, unsharded gradients, the all-reduced bucket); on a ring each rank sends (w-1)/w of an all-gather's or a
reduce-scatter's buffer and 2(w-1)/w of an all-reduce's, which the "wire" columns apply. Linear schedule, t0 = 0.3.
Writes benchmarks/results/fsdp_comm_bytes_<model>.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from freezeout import FreezeOut, param_groups
from freezeout.accel.ddp import AllReduceCounter, counting_allreduce_hook, rewrap_ddp
from freezeout.accel.fsdp import CommCounter, fully_shard_layers, gather_frozen
from freezeout.experiment.models import build_model
from freezeout.experiment.runfiles import atomic_json, read_json

MODES = ("ddp", "ddp_rewrap", "fsdp", "fsdp_gather")


def run_mode(rank: int, world: int, args: argparse.Namespace, mode: str) -> dict:
    torch.manual_seed(0)
    model = build_model(args.model, args.depth, args.growth)
    layers = model.layers
    if mode.startswith("ddp"):
        counter = AllReduceCounter()
        net = DDP(model, find_unused_parameters=mode == "ddp")
        net.register_comm_hook(counter, counting_allreduce_hook)
    else:
        layers = fully_shard_layers(model, layers)
        counter, net = CommCounter().attach(model), model
    opt = torch.optim.SGD(param_groups(net, layers), lr=0.1, momentum=0.9)
    sched = FreezeOut(opt, layers, total_steps=args.steps, t0=0.3, schedule="linear")
    rows, frozen = [], 0
    for step in range(args.steps):
        g = torch.Generator().manual_seed(step)  # the global batch of this step; each rank takes its half
        x, y = torch.randn(2 * args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (2 * args.batch,), generator=g)
        net.train()
        counter.reset()
        loss = F.cross_entropy(net(x[rank::world]), y[rank::world])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        row = {"step": step, "frozen": sched.num_frozen}
        if mode.startswith("ddp"):
            row |= {"all_reduce": counter.bytes, "wire": counter.bytes * 2 * (world - 1) // world}
        else:
            gathered, scattered = sum(counter.all_gather.values()), sum(counter.reduce_scatter.values())
            row |= {"all_gather": gathered, "reduce_scatter": scattered,
                    "wire": (gathered + scattered) * (world - 1) // world}  # fmt: skip
        loss = loss.detach()
        dist.all_reduce(loss)
        rows.append(row | {"loss": loss.item() / world})
        if mode == "fsdp_gather":
            gather_frozen(sched)
        elif mode == "ddp_rewrap" and sched.num_frozen != frozen and step < args.steps - 1:
            frozen = sched.num_frozen
            net = rewrap_ddp(net, comm_hook=(counter, counting_allreduce_hook))
    whole = sum(p.numel() * p.element_size() for p in model.parameters() if not isinstance(p, DTensor))
    return {"rows": rows, "bytes_held_whole_per_rank": whole if mode == "fsdp_gather" else None}


def worker(rank: int, world: int, tmp: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    out = {mode: run_mode(rank, world, args, mode) for mode in MODES}
    if rank == 0:
        atomic_json(Path(tmp, "modes.json"), out)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="densenet-bc")
    ap.add_argument("--depth", type=int, default=22)
    ap.add_argument("--growth", type=int, default=12)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="per rank")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or Path(f"benchmarks/results/fsdp_comm_bytes_{args.model}.json")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, tmp, args), nprocs=2, join=True)
        modes = read_json(Path(tmp, "modes.json"))
    model = build_model(args.model, args.depth, args.growth)
    result = {"model": args.model, "depth": args.depth, "growth": args.growth, "steps": args.steps, "world": 2,
              "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
              "layer_buffer_bytes": sum(b.numel() * b.element_size() for m in model.layers for b in m.buffers()),
              **modes}  # fmt: skip
    rows = {mode: modes[mode]["rows"] for mode in MODES}
    print(f"{'step':>4} {'frozen':>6} | {'DDP':>8} {'rewrap':>8} | {'FSDP AG':>8} {'RS':>8} | {'gather AG':>9} "
          f"{'RS':>8}   (KiB per step; wire KiB: DDP, rewrap, FSDP, gather)")  # fmt: skip
    for d, r, f, g in zip(*(rows[m] for m in MODES)):
        print(f"{d['step']:>4} {g['frozen']:>6} | {d['all_reduce'] / 1024:>8.1f} {r['all_reduce'] / 1024:>8.1f} | "
              f"{f['all_gather'] / 1024:>8.1f} {f['reduce_scatter'] / 1024:>8.1f} | {g['all_gather'] / 1024:>9.1f} "
              f"{g['reduce_scatter'] / 1024:>8.1f}   "
              + " ".join(f"{x['wire'] / 1024:.1f}" for x in (d, r, f, g)))  # fmt: skip
    totals = {mode: sum(row["wire"] for row in rows[mode]) for mode in MODES}
    result["run_wire_bytes"] = totals
    result["max_loss_difference_vs_ddp"] = {
        mode: max(abs(a["loss"] - b["loss"]) for a, b in zip(rows["ddp"], rows[mode])) for mode in MODES
    }
    print("whole run, wire bytes relative to DDP as is: "
          + ", ".join(f"{m} {totals[m] / totals['ddp']:.2f}" for m in MODES))  # fmt: skip
    differences = result["max_loss_difference_vs_ddp"].items()
    print("max |loss - loss(DDP)|: " + ", ".join(f"{m} {d:.1e}" for m, d in differences)
          + f"; held whole per rank at the end: {modes['fsdp_gather']['bytes_held_whole_per_rank']} of "
          f"{result['param_bytes']} parameter bytes")  # fmt: skip
    atomic_json(out, result)


if __name__ == "__main__":
    main()
