"""FSDP2 (``fully_shard`` per layer and on the root) with 2 gloo ranks on loopback: the README's loop plus
``gather_frozen``. One spawn runs every scenario (``tests/helpers/fsdp_runs.py``); the tests read its records.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import FreezeOut, param_groups
from freezeout.accel.fsdp import CommCounter, fully_shard_layers, gather_frozen
from freezeout.schedule import freeze_times, num_frozen_at
from tests.helpers.fsdp_runs import SHARDED, T0, TOTAL, WORLD, gpt, gpt_loss, images, tokens, vit, worker
from tests.helpers.ranks import spawn_ranks


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    spawn_ranks(worker, (str(tmp / "init"), str(tmp)), WORLD)
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


def test_guard_cuts_a_tied_embedding_from_frozen_blocks_as_in_one_process(ranks):
    model, layers = gpt()
    opt = torch.optim.AdamW(param_groups(model, layers), lr=1e-2)
    sched = FreezeOut(opt, layers, TOTAL, t0=T0, schedule="linear")
    losses = []
    for step in range(TOTAL):
        loss = gpt_loss(model, tokens(step))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    # one process cuts (the tied weight then trains through the head alone)
    assert any(sched._frozen.cut.decision.values())
    guard = ranks[0]["guard"]
    assert guard["gpt_warnings"] == []
    # without the cut, the tied weight would take gradients through the frozen blocks: other losses
    assert max(abs(a - b) for a, b in zip(guard["gpt_losses"], losses)) < 1e-5


def test_guard_names_trainable_root_parameters_flowing_into_frozen_layers(ranks):
    # FSDP's gathered copies are what autograd records: the guard must still know them as the model's parameters
    # (a silent cut would stop them training)
    for r in ranks:
        (kind, message), *rest = r["guard"]["leak_warnings"]
        assert rest == [] and kind == "FrozenInputWarning"
        assert "trainable parameter(s) 'pos_embed', 'cls_token' flow into frozen layers[1]" in message


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
