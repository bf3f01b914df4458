"""The python blocks of README.md and docs/*.md, and the ranks that run the distributed ones (spawned, since a
process group must not outlive a test in the suite's own process)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


def block(path: Path, first_line: str) -> str:
    """The one python block of ``path`` whose code contains ``first_line``."""
    found = [b for b in python_blocks(path) if first_line in b]
    assert len(found) == 1, f"{path.name}: {len(found)} python blocks contain {first_line!r}"
    return found[0]


def run(code: str, where: str, **names):
    exec(compile(code, where, "exec"), names)
    return names


def distributed_blocks(rank: int, init: str, out: str, blocks: dict[str, str]) -> None:
    """docs/DISTRIBUTED.md's three blocks on two gloo ranks: DDP with rewrap, the FSDP2 loop, its checkpoint."""
    from freezeout import FreezeOut
    from tests.helpers.lookalikes import VisionTransformer
    from tests.helpers.models import TinyNet, batch, leave_process_group

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    record = {}
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = [batch(2 * s + rank, n=4) for s in range(6)]
    sched = FreezeOut(opt, model.layers, len(loader))
    names = run(blocks["ddp"], "DISTRIBUTED.md:ddp", model=model, opt=opt, sched=sched, loader=loader, F=F)
    record["ddp"] = (names["frozen"], names["counter"].bytes, [p.detach().clone() for p in model.parameters()])
    del names  # the wrappers hold the group's gradient hooks: gone before the group is
    torch.manual_seed(0)
    vit = VisionTransformer()
    for m in vit.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    vit.patch_embed.norm = torch.nn.LayerNorm(8)
    images = [(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(s)), torch.arange(4) % 5)
              for s in range(6)]  # fmt: skip
    names = run(blocks["fsdp"], "DISTRIBUTED.md:fsdp", model=vit, example=images[0][0][:1], loader=images,
                total_steps=len(images), torch=torch, F=F)  # fmt: skip
    record["fsdp"] = names["sched"].num_frozen
    names = run(blocks["checkpoint"], "DISTRIBUTED.md:checkpoint", path=os.path.join(out, "ckpt"), model=vit,
                opt=names["opt"], sched=names["sched"])  # fmt: skip
    record["checkpoint"] = sorted(os.listdir(os.path.join(out, "ckpt")))
    torch.save(record, os.path.join(out, f"rank{rank}.pt"))
    del names
    leave_process_group()
