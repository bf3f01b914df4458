"""docs/RECIPES.md: every recipe runs as written on a tiny configuration, with the names it leaves to the user's
script given here, and does what the page says of it."""

from __future__ import annotations

import contextlib
import re

import pytest
import torch
import torch.nn.functional as F

import freezeout
from tests.helpers import accelerate_runs, doc_blocks
from tests.helpers.drop_in import NanoGPT, closed_form_lr, create_optimizer_v2, get_batch
from tests.helpers.dynamo import DYNAMO_GRAD_PROBE
from tests.helpers.lookalikes import VisionTransformer
from tests.helpers.models import TinyNet, batch

RECIPES = doc_blocks.ROOT / "docs" / "RECIPES.md"


def recipe(title: str) -> str:
    """The python block under the section whose heading starts with ``title``."""
    text = RECIPES.read_text()
    section = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", text, re.S | re.M)
    assert section, f"no section {title!r} in RECIPES.md"
    blocks = [b for b in doc_blocks.python_blocks(RECIPES) if b in section.group(0)]
    assert len(blocks) == 1, title
    return blocks[0]


def run(title: str, **names):
    return doc_blocks.run(recipe(title), f"{RECIPES}:{title}", **names)


def test_every_python_block_is_a_recipe_run_here():
    titles = re.findall(r"^## (.*)$", RECIPES.read_text(), re.M)
    assert len(doc_blocks.python_blocks(RECIPES)) == len(titles) == 6


class Wandb:
    def __init__(self):
        self.rows = []

    def log(self, row):
        self.rows.append(row)


ESTIMATE_LOSS = """
def estimate_loss():  # nanoGPT's, on one fixed batch per split: reads the script's `model`, compiled or not
    model.eval()
    with torch.no_grad():
        out = {split: model(*fixed[split])[1].item() for split in ("train", "val")}
    model.train()
    return out
"""


def nanogpt(**config) -> NanoGPT:
    """nanoGPT's GPT with its default ``dropout = 0.0``: training draws no random numbers (a resumed nanoGPT run
    does not restore the RNG)."""
    torch.manual_seed(0)
    model = NanoGPT(**config)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def nanogpt_names(first_batch=0, **overrides):
    calls = iter(range(first_batch, 10**6))
    names = dict(
        model=nanogpt(), weight_decay=0.1, learning_rate=1e-3, beta1=0.9, beta2=0.95, device_type="cpu",
        device="cpu", max_iters=12, warmup_iters=2, gradient_accumulation_steps=3, grad_clip=1.0, dtype="float32",
        ctx=contextlib.nullcontext(), get_batch=lambda split: get_batch(next(calls)), init_from="scratch",
        out_dir=None, compile=False, eval_interval=5, wandb_log=True, wandb=Wandb(),
        fixed={"train": get_batch(-1), "val": get_batch(-2)}, torch=torch,
    )  # fmt: skip
    exec(ESTIMATE_LOSS, names)
    return {**names, **overrides}


def test_the_nanogpt_recipe_keeps_nanogpts_groups_and_freezes_every_block(tmp_path):
    names = run("A nanoGPT-style loop", **nanogpt_names(out_dir=str(tmp_path)))
    sched, opt, model = names["sched"], names["optimizer"], names["model"]
    assert sched.closed and sched.num_frozen == len(names["layers"]) == 4
    assert names["iter_num"] == 13 and sched.step_count == sched.total_steps == 13  # max_iters + 1 steps: all trained
    assert sched.head_lr(12) > 0 and sched.frozen_at(12) == 4  # the last step trained the head, every block frozen
    wte = model.transformer.wte.weight
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(wte)] == 0.1 and decay[id(model.transformer.wpe.weight)] == 0.1  # nanoGPT decays embeddings
    assert all(decay[id(p)] == (0.1 if p.dim() >= 2 else 0.0) for p in model.parameters())
    assert {g["betas"] for g in opt.param_groups} == {(0.9, 0.95)}


def test_a_step_the_scaler_skips_moves_the_clock_but_not_the_weights(monkeypatch, tmp_path):
    names = nanogpt_names(dtype="float16", max_iters=6, warmup_iters=0, gradient_accumulation_steps=1,
                          out_dir=str(tmp_path))  # fmt: skip
    model, skipped = names["model"], []
    real = torch.amp.GradScaler.unscale_

    def unscale_(self, optimizer):
        if len(skipped) == 0 and self.is_enabled():  # the first optimizer step overflows
            skipped.append([p.detach().clone() for p in model.parameters()])
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("inf"))
        return real(self, optimizer)

    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", unscale_)
    seen = []
    monkeypatch.setattr(freezeout.FreezeOut, "step", lambda self, real=freezeout.FreezeOut.step: (
        seen.append([p.detach().clone() for p in model.parameters()]), real(self))[1])  # fmt: skip
    sched = run("A nanoGPT-style loop", **names)["sched"]
    assert skipped and all(torch.equal(a, b) for a, b in zip(skipped[0], seen[0]))  # the skipped step moved nothing
    assert not all(torch.equal(a, b) for a, b in zip(seen[0], seen[1]))  # the next one did
    assert sched.step_count == 7 and sched.num_frozen == 4  # the clock counted the skipped step: on plan


def test_the_nanogpt_recipe_resumes_bit_identically_and_logs_the_heads_lr(tmp_path):
    straight = run("A nanoGPT-style loop", **nanogpt_names(out_dir=str(tmp_path)))
    n, total = 4, 13
    for row in straight["wandb"].rows:  # nanoGPT's `lr` for wandb: the head's, at the iteration about to run
        assert row["lr"] == pytest.approx(closed_form_lr(row["iter"], total, None, n, 1e-3, warmup=2), rel=1e-12)
    assert [row["iter"] for row in straight["wandb"].rows] == [0, 5, 10]
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["iter_num"] == 10 and saved["freezeout"]["step_count"] == 10
    # a new process: init_from='resume', its batches from where iteration 10 began (3 per iteration)
    resumed = run("A nanoGPT-style loop", **nanogpt_names(first_batch=30, init_from="resume", out_dir=str(tmp_path)))
    assert resumed["sched"].step_count == 13 and [r["iter"] for r in resumed["wandb"].rows] == [10]
    for (k, a), b in zip(straight["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), k


def test_a_nanogpt_resume_without_freezeouts_state_says_so(tmp_path):
    run("A nanoGPT-style loop", **nanogpt_names(out_dir=str(tmp_path)))
    forgot = recipe("A nanoGPT-style loop").replace('    sched.load_state_dict(checkpoint["freezeout"])', "")
    assert forgot != recipe("A nanoGPT-style loop")
    names = nanogpt_names(first_batch=30, init_from="resume", out_dir=str(tmp_path))
    with pytest.warns(freezeout.ScheduleWarning) as caught:
        doc_blocks.run(forgot, "RECIPES.md: nanoGPT without FreezeOut's state", **names)
    assert [str(w.message).split(":")[0] for w in caught] == [
        "the optimizer's state shows 10 earlier steps, from before this FreezeOut was built, but FreezeOut is at step 1"
    ]


@pytest.mark.slow  # dynamo traces of the model: 15-35 s
@DYNAMO_GRAD_PROBE
def test_the_nanogpt_recipe_with_compile_stays_compiled_through_every_freeze(tmp_path, monkeypatch, caplog):
    import logging

    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real(model, backend=counter))  # no codegen: dynamo's guards
    caplog.set_level(logging.INFO, logger="freezeout")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):  # torch's defaults
        names = nanogpt_names(out_dir=str(tmp_path), compile=True, max_iters=19, model=nanogpt(depth=8))
        names = run("A nanoGPT-style loop", **names)
    torch._dynamo.reset()
    assert names["sched"].num_frozen == 9  # wpe and 8 blocks: 9 freezes, more than the 8 graphs dynamo allows
    assert counter.frame_count > 8 + 1  # compiled through every freeze: torch's limit alone stops at 8
    said = [r.getMessage() for r in caplog.records if "recompile_limit" in r.getMessage()]
    assert len(said) == 1 and "from 8 to 26" in said[0]


def test_the_timm_recipe_honours_layer_decay_and_ends_all_frozen():
    torch.manual_seed(0)
    model = VisionTransformer(depth=3)
    images = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    loader = [(x, torch.arange(4) % 5) for x in images]
    names = run("A timm-style loop", model=model, images=images[0], loader=loader, epochs=3,
                loss_fn=F.cross_entropy, create_optimizer_v2=create_optimizer_v2)  # fmt: skip
    sched, opt = names["sched"], names["optimizer"]
    assert sched.num_frozen == len(names["layers"]) == 4 and sched.step_count == 9
    layer_of = dict(zip(map(id, opt.param_groups), sched.group_layers))
    n = len(names["layers"])
    for g in opt.param_groups:  # the LR the last step_to set: lr_scale x the paper's at step 9 of 9
        i = layer_of[id(g)]
        want = g["lr_scale"] * closed_form_lr(9, 9, i if i < n else None, n, g["initial_lr"])
        assert g["lr"] == pytest.approx(want, abs=1e-18)
    head = [g for g in opt.param_groups if layer_of[id(g)] == n]
    assert head and {g["lr_scale"] for g in head} == {1.0}


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*is deprecated:FutureWarning")  # peft 0.21's call
def test_the_peft_recipe_trains_only_adapters_and_the_classifier():
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from tests.helpers.hf import tiny_bert

    base = tiny_bert("classify", layers=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(99, (4, 8), generator=g)
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 0])}
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    names = run("PEFT / LoRA", base_model=base, example=example, loader=[example] * 3, epochs=2)
    sched, model = names["sched"], names["model"]
    assert sched.closed and sched.num_frozen == len(names["layers"]) == 3
    moved = {n for n, p in model.named_parameters() if n.replace("base_model.model.", "") in before
             and not torch.equal(p, before[n.replace("base_model.model.", "")])}  # fmt: skip
    assert not moved  # the base weights stay as they were: only adapters and the saved classifier copy train
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or "modules_to_save" in n for n in trained)


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")  # CPU only here
def test_the_trainer_recipe_installs_freezeout_as_the_schedule(tmp_path):
    pytest.importorskip("transformers")
    from torch.utils.data import Dataset

    from tests.helpers.hf import tiny_bert

    class Data(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            ids = torch.randint(99, (8,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": i % 3}

    names = run("Hugging Face", model=tiny_bert("classify", layers=2), out_dir=str(tmp_path), train_dataset=Data())
    trainer = names["trainer"]
    sched = trainer.lr_scheduler
    assert isinstance(sched, freezeout.FreezeOut) and sched.closed
    assert sched.num_frozen == 3 and sched.step_count == trainer.state.max_steps == 4


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
@pytest.mark.filterwarnings("ignore:.*GPU available but not used.*")
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:Starting from v1.9.0, `tensorboardX` has been removed")  # logger=True, no TB
@pytest.mark.filterwarnings("ignore:.*number of training batches.*is smaller than the logging interval.*")
def test_the_lightning_recipe_takes_the_users_optimizer_under_accumulation(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)  # Lightning writes its logs and checkpoints under the working folder
    torch.manual_seed(0)
    net = TinyNet()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*batch(0, n=16)), batch_size=4)
    names = run("Lightning", net=net, loader=loader, epochs=3, ckpt_path=None)
    c = names["callback"].controller
    assert c.closed and c.total_steps == 6 and c.step_count == 6  # 12 batches, 2 per optimizer step
    assert c.num_frozen == len(net.layers)
    assert {g["weight_decay"] for g in c.optimizer.param_groups} == {0.01}  # the user's options, kept per group
    assert len(c.optimizer.param_groups) == len(net.layers) + 1


@pytest.fixture
def fresh_accelerate():
    pytest.importorskip("accelerate")
    yield
    accelerate_runs.reset()


@pytest.mark.usefixtures("fresh_accelerate")
def test_the_accelerate_recipe_steps_once_per_optimizer_step_and_resumes_bit_identically(tmp_path):
    from accelerate.scheduler import AcceleratedScheduler

    with accelerate_runs.clock() as clock:
        straight = accelerate_runs.run(tmp_path)  # 3 epochs of 5 batches, accumulation 2
    freeze, sched = straight["freeze"], straight["sched"]
    assert isinstance(sched, AcceleratedScheduler) and sched.scheduler is freeze
    assert freeze.total_steps == 3 * 3 and clock == list(range(1, 10))  # ceil(5 / 2) optimizer steps per epoch
    assert freeze.closed and freeze.num_frozen == 4
    assert (tmp_path / "epoch0" / "scheduler.bin").exists()
    accelerate_runs.reset()  # a new process
    with accelerate_runs.clock() as clock:
        resumed = accelerate_runs.run(tmp_path / "b", resume_from=str(tmp_path / "epoch0"), first_epoch=1)
    assert clock == list(range(4, 10))  # continued from the saved step 3, not from 0
    for (k, a), b in zip(straight["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), k
