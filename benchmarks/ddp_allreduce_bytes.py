"""Bytes all-reduced per step by 2 gloo ranks training DenseNet-BC under FreezeOut: rewrap_ddp vs. DDP as is.

Run: .venv/bin/python benchmarks/ddp_allreduce_bytes.py [--depth 22 --growth 12 --steps 20]
"as is" = DDP(model, find_unused_parameters=True) built once; "rewrap" = freezeout.accel.ddp.rewrap_ddp after
every freeze event. Writes benchmarks/results/ddp_allreduce_bytes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from freezeout import FreezeOut, param_groups
from freezeout.accel.ddp import AllReduceCounter, counting_allreduce_hook, rewrap_ddp
from freezeout.experiment.models import DenseNetBC


def worker(rank: int, world: int, tmp: str, args: argparse.Namespace, rewrap: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DenseNetBC(depth=args.depth, growth=args.growth)
    counter = AllReduceCounter()
    ddp = DDP(model, find_unused_parameters=not rewrap)
    ddp.register_comm_hook(counter, counting_allreduce_hook)
    opt = torch.optim.SGD(param_groups(ddp, model.layers), lr=0.1, momentum=0.9)
    sched = FreezeOut(opt, model.layers, total_steps=args.steps, t0=0.3, schedule="linear")
    rows, frozen = [], 0
    for step in range(args.steps):
        g = torch.Generator().manual_seed(step * world + rank)
        x, y = torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g)
        opt.zero_grad()
        counter.reset()
        F.cross_entropy(ddp(x), y).backward()
        rows.append({"step": step, "frozen": sched.num_frozen, "bytes": counter.bytes})
        opt.step()
        sched.step()
        if rewrap and sched.num_frozen != frozen and step < args.steps - 1:
            frozen = sched.num_frozen
            ddp = rewrap_ddp(ddp, comm_hook=(counter, counting_allreduce_hook))
    differing = 0
    for p in model.parameters():  # ranks bit-identical: each compares its copy with rank 0's
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        differing += not torch.equal(ref, p.detach())
    if rank == 0:
        Path(tmp, f"{rewrap}.json").write_text(json.dumps({"rows": rows}))
    else:
        Path(tmp, f"rank1_{rewrap}.json").write_text(json.dumps({"differing": differing}))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depth", type=int, default=22)
    ap.add_argument("--growth", type=int, default=12)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ddp_allreduce_bytes.json"))
    args = ap.parse_args()
    result = {"depth": args.depth, "growth": args.growth, "steps": args.steps}
    for rewrap in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(worker, args=(2, tmp, args, rewrap), nprocs=2, join=True)
            rows = json.loads(Path(tmp, f"{rewrap}.json").read_text())["rows"]
            differing = json.loads(Path(tmp, f"rank1_{rewrap}.json").read_text())["differing"]
        result["rewrap" if rewrap else "as_is"] = {"rows": rows, "params_differing_between_ranks": differing}
    as_is, re = result["as_is"]["rows"], result["rewrap"]["rows"]
    print(f"{'step':>4} {'frozen':>6} {'as is KiB':>10} {'rewrap KiB':>11} {'ratio':>6}")
    for a, b in zip(as_is, re):
        print(
            f"{a['step']:>4} {b['frozen']:>6} {a['bytes'] / 1024:>10.1f} {b['bytes'] / 1024:>11.1f} "
            f"{b['bytes'] / a['bytes']:>6.2f}"
        )
    total_a, total_b = sum(r["bytes"] for r in as_is), sum(r["bytes"] for r in re)
    result["run_bytes_ratio"] = total_b / total_a
    print(
        f"whole run: rewrap all-reduces {total_b / total_a:.2f} of the bytes; params differing between ranks: "
        f"as is {result['as_is']['params_differing_between_ranks']}, "
        f"rewrap {result['rewrap']['params_differing_between_ranks']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, args.out)


if __name__ == "__main__":
    main()
