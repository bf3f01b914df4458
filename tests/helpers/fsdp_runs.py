"""What the 2 gloo ranks of ``tests/test_fsdp.py`` run: FSDP2 scenarios under FreezeOut, recorded for the tests.

One spawn runs them all (a spawn costs seconds on a busy machine). The ViT-like model's first layer holds two
parameters of the root (``cls_token``, ``pos_embed``); dropout is off, so that 2 ranks on half the batch each compute
what one process computes on the whole batch. TinyNet (BatchNorm) checks buffers, which FSDP leaves per rank;
TinyGPT (a head tied to the token embedding) and a ViT whose root parameters are left out of the layers check the
guard (``freezeout.freezing.guard``) under FSDP.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from freezeout import FreezeOut, find_layers, param_groups
from freezeout.accel.fsdp import CommCounter, fully_shard_layers, gather_frozen, load_checkpoint, save_checkpoint

from .lookalikes import TinyGPT, VisionTransformer
from .models import TinyNet, batch, leave_process_group

WORLD, TOTAL, RESUME_AT, T0 = 2, 10, 6, 0.3  # linear, 4 layers: they freeze after steps 2, 4, 6 and 8
SHARDED = ["patch_embed", "blocks.0", "blocks.1", "blocks.2"]  # one FSDP module per layer; "" is the root


def vit() -> tuple[VisionTransformer, list]:
    torch.manual_seed(0)
    model = VisionTransformer()
    model.patch_embed.norm = nn.LayerNorm(8)  # FSDP warns about a module returning a view (the transpose)
    no_dropout(model)
    return model, [[model.patch_embed, model.cls_token, model.pos_embed], *model.blocks]


def no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def images(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)


def layer_params(sched: FreezeOut, i: int) -> list[torch.Tensor]:
    """Layer ``i``'s parameters as the optimizer holds them (sharded)."""
    return [p for g, o in zip(sched.optimizer.param_groups, sched.group_layers) if o == i for p in g["params"]]


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def sharded_vit():
    model, layers = vit()
    layers = fully_shard_layers(model, layers)
    counter = CommCounter().attach(model)
    opt = torch.optim.AdamW(param_groups(model, layers), lr=1e-2, weight_decay=1e-2)
    return model, opt, FreezeOut(opt, layers, TOTAL, t0=T0, schedule="linear"), counter


def train(rank, model, opt, sched, counter, steps, keep: bool) -> dict:
    rec = {"losses": [], "gathered": [], "scattered": [], "frozen_at": {}}
    for step in steps:
        x, y = images(step)
        counter.reset()
        loss = F.cross_entropy(model(x[rank::WORLD]), y[rank::WORLD])  # this rank's half of the global batch
        loss.backward()
        opt.step()
        sched.step()
        if keep:
            gather_frozen(sched)
        opt.zero_grad()
        loss = loss.detach()
        dist.all_reduce(loss)
        rec["losses"].append(loss.item() / WORLD)
        rec["gathered"].append(dict(counter.all_gather))
        rec["scattered"].append(dict(counter.reduce_scatter))
        for i in range(len(rec["frozen_at"]), sched.num_frozen):
            rec["frozen_at"][i] = [full(p) for p in layer_params(sched, i)]
    rec["frozen_end"] = {i: [full(p) for p in layer_params(sched, i)] for i in rec["frozen_at"]}
    return rec


def kept_whole(model, sched) -> list[tuple[bool, bool]]:
    """For every frozen layer's FSDP module: (its registered weights are plain tensors, they equal the shards)."""
    out = []
    for i in range(sched.num_frozen):
        local = list(model.get_submodule(SHARDED[i]).parameters())  # what the module runs with now
        shards = layer_params(sched, i)[: len(local)]  # the module's, then layer 0's loose parameters
        plain = not any(isinstance(p, DTensor) for p in local)
        same = plain and all(torch.equal(a, full(b)) for a, b in zip(local, shards, strict=True))
        out.append((plain, same))
    return out


def sharded_tinynet():
    torch.manual_seed(0)
    model = TinyNet()
    no_dropout(model)  # a resumed run would draw other masks
    layers = fully_shard_layers(model, model.layers)
    opt = torch.optim.SGD(param_groups(model, layers), lr=0.1, momentum=0.9)
    return model, opt, FreezeOut(opt, layers, TOTAL, t0=T0, schedule="linear")


def train_tinynet(rank, model, opt, sched, steps) -> dict:
    frozen_at = {}
    for step in steps:
        model.train()
        x, y = batch(step * WORLD + rank)  # each rank its own data: BatchNorm statistics differ
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
        gather_frozen(sched)
        opt.zero_grad()
        for i in range(len(frozen_at), sched.num_frozen):
            frozen_at[i] = {k: v.clone() for k, v in sched.layers[i].named_buffers()}
    state = {k: full(v) for k, v in model.state_dict().items()}
    return {"frozen_at": frozen_at, "buffers": {k: v.clone() for k, v in model.named_buffers()}, "state": state}


def tinynet_runs(rank, out_dir) -> dict:
    whole = train_tinynet(rank, *sharded_tinynet(), range(TOTAL))
    model, opt, sched = sharded_tinynet()
    train_tinynet(rank, model, opt, sched, range(RESUME_AT))
    save_checkpoint(os.path.join(out_dir, "tinynet"), model, opt, sched)
    model, opt, sched = sharded_tinynet()
    load_checkpoint(os.path.join(out_dir, "tinynet"), model, opt, sched)
    return whole | {"resumed": train_tinynet(rank, model, opt, sched, range(RESUME_AT, TOTAL))["state"]}


def gpt() -> tuple[TinyGPT, list]:
    torch.manual_seed(0)
    model = TinyGPT()
    no_dropout(model)
    return model, find_layers(model, tokens(0)[:1])  # before sharding: the embedding's tied module left out


def tokens(step: int) -> torch.Tensor:
    return torch.randint(0, 13, (8, 8), generator=torch.Generator().manual_seed(step))


def gpt_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())


def guard_runs(rank: int) -> dict:
    """The guard's two verdicts under FSDP: a tied embedding is cut from the frozen blocks' input (no warning, the
    losses of one process); trainable root parameters left out of the layers are warned about, by name."""
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, layers = gpt()
        layers = fully_shard_layers(model, layers)
        opt = torch.optim.AdamW(param_groups(model, layers), lr=1e-2)
        sched = FreezeOut(opt, layers, TOTAL, t0=T0, schedule="linear")
        out["gpt_losses"] = []
        for step in range(TOTAL):
            loss = gpt_loss(model, tokens(step)[rank::WORLD])
            loss.backward()
            opt.step()
            sched.step()
            gather_frozen(sched)
            opt.zero_grad()
            loss = loss.detach()
            dist.all_reduce(loss)
            out["gpt_losses"].append(loss.item() / WORLD)
        out["gpt_warnings"] = [str(w.message) for w in caught]
        caught.clear()
        model, _ = vit()
        layers = fully_shard_layers(model, [model.patch_embed, *model.blocks])
        opt = torch.optim.AdamW(param_groups(model, layers), lr=1e-2)
        sched = FreezeOut(opt, layers, TOTAL, t0=T0, schedule="linear")
        for step in range(6):  # layers[1] (fed by the root's parameters) freezes after step 4; step 5 is checked
            x, y = images(step)
            F.cross_entropy(model(x[rank::WORLD]), y[rank::WORLD]).backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        out["leak_warnings"] = [(type(w.message).__name__, str(w.message)) for w in caught]
    return out


def worker(rank: int, init_file: str, out_dir: str) -> None:
    warnings.simplefilter("error")  # as pytest's filterwarnings, which spawned ranks do not inherit
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))  # fmt: skip
    out = {}
    model, opt, sched, counter = sharded_vit()
    out["kept"] = train(rank, model, opt, sched, counter, range(TOTAL), keep=True)
    out["kept"]["whole"] = kept_whole(model, sched)
    out["kept"]["state"] = {k: full(v) for k, v in model.state_dict().items()}
    out["as_is"] = train(rank, *sharded_vit(), range(TOTAL), keep=False)
    model, opt, sched, counter = sharded_vit()
    first = train(rank, model, opt, sched, counter, range(RESUME_AT), keep=True)
    save_checkpoint(os.path.join(out_dir, "ckpt"), model, opt, sched)
    model, opt, sched, counter = sharded_vit()  # a fresh start, as a new process would make
    load_checkpoint(os.path.join(out_dir, "ckpt"), model, opt, sched)
    rest = train(rank, model, opt, sched, counter, range(RESUME_AT, TOTAL), keep=True)
    out["resumed"] = {"losses": first["losses"] + rest["losses"], "frozen": sched.num_frozen,
                      "state": {k: full(v) for k, v in model.state_dict().items()}}  # fmt: skip
    out["tinynet"] = tinynet_runs(rank, out_dir)
    out["guard"] = guard_runs(rank)
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    del model, opt, sched
    leave_process_group()
    os._exit(0)  # all saved, the group destroyed: skip finalizing torch's modules (seconds on a busy machine)
