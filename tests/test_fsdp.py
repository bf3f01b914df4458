"""FSDP2 (``fully_shard`` per layer and on the root) with 2 gloo ranks on loopback: the README's loop plus
``gather_frozen``. One spawn runs every scenario (a spawn costs seconds on a busy machine); the tests read its
records.

The model is a ViT-like network whose first layer holds two parameters of the root (``cls_token``,
``pos_embed``), dropout off, so that 2 ranks on half the batch each compute what one process computes on the whole
batch. A TinyNet (BatchNorm, dropout) run checks buffers, which FSDP leaves per rank.
"""

from __future__ import annotations

import math
import os
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from freezeout import FreezeOut, param_groups
from freezeout.accel.fsdp import CommCounter, fully_shard_layers, gather_frozen, load_checkpoint, save_checkpoint
from freezeout.schedule import freeze_times, num_frozen_at
from tests.helpers.lookalikes import VisionTransformer
from tests.helpers.models import TinyNet, batch, leave_process_group
from tests.helpers.ranks import spawn_ranks

WORLD, TOTAL, RESUME_AT, T0 = 2, 10, 6, 0.3  # linear, 4 layers: they freeze after steps 2, 4, 6 and 8
SHARDED = ["patch_embed", "blocks.0", "blocks.1", "blocks.2"]  # one FSDP module per layer; "" is the root


def vit() -> tuple[VisionTransformer, list]:
    torch.manual_seed(0)
    model = VisionTransformer()
    model.patch_embed.norm = nn.LayerNorm(8)  # FSDP warns about a module returning a view (the transpose)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model, [[model.patch_embed, model.cls_token, model.pos_embed], *model.blocks]


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
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # a resumed run would draw other masks
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


def _worker(rank: int, init_file: str, out_dir: str) -> None:
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
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    del model, opt, sched
    leave_process_group()
    os._exit(0)  # all saved, the group destroyed: skip finalizing torch's modules (seconds on a busy machine)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    spawn_ranks(_worker, (str(tmp / "init"), str(tmp)), WORLD)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def freeze_steps() -> list[int]:
    """The step after whose ``sched.step()`` each layer is frozen (from the schedule, not from the run)."""
    times = freeze_times(4, T0, "linear")
    return [next(s for s in range(TOTAL) if num_frozen_at(s + 1, TOTAL, times) > i) for i in range(4)]


def padded_bytes(params) -> int:
    """FSDP2 shards each parameter on dim 0, padded to a multiple of the world size: what an all-gather fills."""
    return sum(math.ceil(p.shape[0] / WORLD) * WORLD * (p.numel() // p.shape[0]) * p.element_size() for p in params)


def test_losses_match_one_process_on_the_global_batch(ranks):
    model, layers = vit()
    opt = torch.optim.AdamW(param_groups(model, layers), lr=1e-2, weight_decay=1e-2)
    sched = FreezeOut(opt, layers, TOTAL, t0=T0, schedule="linear")
    losses = []
    for step in range(TOTAL):
        x, y = images(step)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    kept = ranks[0]["kept"]["losses"]
    assert max(abs(a - b) for a, b in zip(kept, losses)) < 1e-5, (kept, losses)
    assert ranks[0]["as_is"]["losses"] == kept  # keeping frozen layers whole changes no bit


def test_ranks_in_sync_and_frozen_layers_unmoved(ranks):
    for r in ranks:
        kept = r["kept"]
        assert sorted(kept["frozen_at"]) == [0, 1, 2, 3]
        for i, snap in kept["frozen_at"].items():
            assert all(torch.equal(a, b) for a, b in zip(snap, kept["frozen_end"][i], strict=True)), f"layer {i}"
        # what a frozen layer runs with: ordinary local tensors, the full weights
        assert kept["whole"] == [(True, True)] * 4
    for k, v in ranks[0]["kept"]["state"].items():
        assert torch.equal(v, ranks[1]["kept"]["state"][k]), k


def test_frozen_layers_buffers_are_rank_0s_from_their_freeze(ranks):
    t0, t1 = (r["tinynet"] for r in ranks)
    assert sorted(t0["frozen_at"]) == [0, 1, 2, 3]
    prefixes = {0: "stem.", 1: "blocks.0.", 2: "blocks.1.", 3: "blocks.2."}
    for i, snap in t0["frozen_at"].items():
        assert snap or i == 0  # the stem is a conv, with no buffers
        for k, v in snap.items():
            assert torch.equal(v, t1["frozen_at"][i][k]), f"layer {i} {k}: ranks differ"
            assert torch.equal(v, t0["buffers"][prefixes[i] + k]) and torch.equal(v, t1["buffers"][prefixes[i] + k])
    # the head's BatchNorm still trains, on each rank's own data: without the broadcast, so would the layers' be
    assert not torch.equal(t0["buffers"]["head.0.running_mean"], t1["buffers"]["head.0.running_mean"])


def test_frozen_layers_stop_all_gather_and_reduce_scatter(ranks):
    model, _ = vit()
    size = {n: padded_bytes(list(model.get_submodule(n).parameters())) for n in SHARDED}
    inside = {id(p) for n in SHARDED for p in model.get_submodule(n).parameters()}
    root = padded_bytes([p for p in model.parameters() if id(p) not in inside])
    loose = padded_bytes([model.cls_token, model.pos_embed])
    frozen = freeze_steps()
    assert frozen == [2, 4, 6, 8]
    kept = ranks[0]["kept"]
    for step in range(TOTAL):
        gathered, scattered = kept["gathered"][step], kept["scattered"][step]
        for i, name in enumerate(SHARDED):
            if step <= frozen[i]:  # training: gathered for forward and again for backward, gradients scattered
                assert (gathered[name], scattered[name]) == (2 * size[name], size[name]), (step, name)
            else:  # frozen: gathered by the first forward after the freeze, never again, and nothing to scatter
                assert gathered.get(name, 0) == (size[name] if step == frozen[i] + 1 else 0), (step, name)
                assert name not in scattered, (step, name)
        # the root (the head, and layer 0's cls_token and pos_embed) gathers all, scatters what still trains
        assert gathered[""] == root
        assert scattered[""] == root - (loose if step > frozen[0] else 0)
    assert ranks[1]["kept"]["gathered"] == kept["gathered"]


def test_without_gather_frozen_layers_are_gathered_every_step(ranks):
    model, _ = vit()
    frozen = freeze_steps()
    as_is = ranks[0]["as_is"]
    for step in range(TOTAL):
        for i, name in enumerate(SHARDED):
            if step <= frozen[i]:
                continue
            size = padded_bytes(list(model.get_submodule(name).parameters()))
            # once by its forward; the last frozen layer once more, by the backward prefetch of the next FSDP
            # module (the next layer's, or the root's)
            last = i + 1 == len(SHARDED) or step <= frozen[i + 1]
            assert as_is["gathered"][step][name] == (2 if last else 1) * size, (step, name)
            assert name not in as_is["scattered"][step]


def test_dcp_resume_is_bit_identical(ranks):
    for r in ranks:
        assert r["resumed"]["frozen"] == 4
        assert r["resumed"]["losses"] == r["kept"]["losses"]
        for k, v in r["kept"]["state"].items():
            assert torch.equal(v, r["resumed"]["state"][k]), k


def test_dcp_resume_with_batchnorm_freezes_the_same_statistics(ranks):
    # A checkpoint holds one copy of each buffer, rank 0's: rank 0 resumes exactly; on rank 1 the statistics of
    # BatchNorms still training (the head's, here) restart from rank 0's, and nothing else may differ.
    for rank, r in enumerate(ranks):
        whole, resumed = r["tinynet"]["state"], r["tinynet"]["resumed"]
        differ = sorted(k for k in whole if not torch.equal(whole[k], resumed[k]))
        assert differ == ([] if rank == 0 else ["head.0.running_mean", "head.0.running_var"]), rank


def test_errors():
    with pytest.raises(ValueError, match=r"sched must be a freezeout\.FreezeOut"):
        gather_frozen(object())
    with pytest.raises(ValueError, match=r"model must be an nn\.Module"):
        fully_shard_layers([nn.Linear(2, 2)], [nn.Linear(2, 2)])
    model, layers = vit()
    with pytest.raises(ValueError, match=r"layers\[0\] holds a parameter that is not the model's"):
        fully_shard_layers(model, [[model.patch_embed, nn.Parameter(torch.zeros(2))], *layers[1:]])
    with pytest.raises(ValueError, match="no fully_shard-ed module"):
        CommCounter().attach(model)
