"""Every python block of README.md, CONTRIBUTING.md and docs/*.md runs here as written (tiny models and the names
it leaves to the user's script given by the test; docs/RECIPES.md's in tests/test_recipes.py), and does what the
text around it says."""

from __future__ import annotations

import numpy
import pytest
import torch
import torch.nn.functional as F

import freezeout
from freezeout import freeze_times, learning_rates
from tests.helpers.doc_blocks import ROOT, block, distributed_blocks, doc_files, python_blocks, run
from tests.helpers.dynamo import DYNAMO_GRAD_PROBE
from tests.helpers.models import TinyNet, batch
from tests.helpers.ranks import spawn_ranks

README, DOCS = ROOT / "README.md", ROOT / "docs"
# (file, a line of the block): every block this module runs; the completeness test holds the two lists together
RUN_HERE = [
    (README, "opt = torch.optim.SGD(model.parameters()"),
    (README, "class Net(L.LightningModule):"),
    (README, "add_freezeout(trainer, t0=0.8)"),
    (README, "cache = PrefixCache(sched"),
    (DOCS / "CACHE.md", "cache=True)"),
    (DOCS / "LAYERS.md", "freezeout.find_layers(cnn, images[:1])"),
    (DOCS / "METHOD.md", "freezeout.freeze_times(n, t0"),
    (DOCS / "METHOD.md", "numpy.int64(1000)"),
    (DOCS / "CLI.md", "estimate_saving(model, layers"),
    (DOCS / "COMPILE.md", "freezeout.compile_blocks(layers)"),
    (DOCS / "DISTRIBUTED.md", "rewrap_ddp(ddp, comm_hook"),
    (DOCS / "DISTRIBUTED.md", "gather_frozen(sched)  # the one added line"),
    (DOCS / "DISTRIBUTED.md", "save_checkpoint(path, model, opt, sched)"),
]
RUN_ELSEWHERE = {DOCS / "RECIPES.md": "tests/test_recipes.py"}


def test_every_python_block_in_the_docs_runs_in_a_test():
    for path in doc_files():
        if path in RUN_ELSEWHERE:
            continue
        listed = [line for p, line in RUN_HERE if p == path]
        blocks = python_blocks(path)
        assert len(blocks) == len(listed), f"{path.name}: {len(blocks)} python blocks, {len(listed)} run here"
        assert sorted(blocks) == sorted(block(path, line) for line in listed)


def test_the_readme_drop_in_runs_and_freezes_everything(capsys):
    torch.manual_seed(0)
    model = TinyNet()
    loader = [batch(i) for i in range(5)]
    names = run(block(README, "opt = torch.optim.SGD(model.parameters()"), "README.md", model=model, loader=loader,
                epochs=3)  # fmt: skip
    sched, opt = names["sched"], names["opt"]
    assert sched.num_frozen == len(model.layers) and sched.closed  # t0 = 0.8 < 1: every layer frozen by the end
    times = freeze_times(len(model.layers), 0.8, "cubic")
    want = learning_rates(15, 15, times, [0.1] * (len(times) + 1), scale_lr=True)
    assert [g["lr"] for g in opt.param_groups] == [want[i] for i in sched.group_layers]
    assert len(opt.param_groups) == len(model.layers) + 1  # the user's one group, split per layer then the rest
    assert {(g["weight_decay"], g["momentum"], g["nesterov"]) for g in opt.param_groups} == {(1e-4, 0.9, True)}
    assert "layers frozen" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
@pytest.mark.filterwarnings("ignore:.*GPU available but not used.*")
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:.*number of training batches.*is smaller than the logging interval.*")
@pytest.mark.filterwarnings("ignore:Starting from v1.9.0, `tensorboardX` has been removed:UserWarning")  # its logger
def test_the_readme_lightning_block_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("lightning.pytorch")
    monkeypatch.chdir(tmp_path)  # where Lightning writes its logs and checkpoints
    code = block(README, "class Net(L.LightningModule):").replace("max_epochs=100", "max_epochs=2")
    code = code.replace("256", "64")  # a smaller data set: 2 batches an epoch
    torch.manual_seed(0)
    names = run(code, "README.md")  # its imports, model, data and Trainer: nothing given by the test
    (callback,) = [c for c in names["trainer"].callbacks if type(c).__name__ == "FreezeOutCallback"]
    assert callback.controller.closed and callback.controller.step_count == 2 * len(names["loader"])
    assert callback.controller.num_frozen == len(names["Net"]().freezable_layers()) == 5  # t0 = 0.8: all, by the end


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")
def test_the_readme_trainer_block(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tests.helpers.hf import tiny_bert

    rows = [{"input_ids": torch.randint(99, (8,), generator=torch.Generator().manual_seed(i)), "labels": i % 3}
            for i in range(8)]  # fmt: skip
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=4,
                                          report_to=[], save_strategy="no")  # fmt: skip
    names = run(block(README, "add_freezeout(trainer, t0=0.8)"), "README.md", Trainer=transformers.Trainer,
                model=tiny_bert("classify"), args=args, train=rows)  # fmt: skip
    sched = names["trainer"].lr_scheduler
    assert isinstance(sched, freezeout.FreezeOut) and sched.closed and sched.num_frozen == 3


def test_the_layers_block_finds_blocks_of_a_cnn_and_of_bert():
    pytest.importorskip("transformers")
    from tests.helpers.hf import tiny_bert

    def tokenizer(texts, return_tensors):
        assert return_tensors == "pt"
        ids = torch.tensor([[1 + len(w) for w in t.split()] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    cnn, bert = TinyNet(), tiny_bert("classify", layers=2)
    names = run(block(DOCS / "LAYERS.md", "find_layers(cnn"), "LAYERS.md", freezeout=freezeout, cnn=cnn,
                images=batch(0)[0], bert=bert, tokenizer=tokenizer)  # fmt: skip
    assert names["layers"] == [bert.bert.embeddings, *bert.bert.encoder.layer]
    assert freezeout.find_layers(cnn, batch(0)[0][:1]) == cnn.layers


def test_the_method_contract_blocks():
    torch.manual_seed(0)
    model = TinyNet()
    first = freezeout.FreezeOut(torch.optim.SGD(freezeout.param_groups(model, model.layers), lr=0.1), model.layers, 8)
    first.step()
    names = run(block(DOCS / "METHOD.md", "freezeout.freeze_times(n, t0"), "METHOD.md", torch=torch, n=4, t0=0.8,
                model=model, layers=model.layers, total_steps=8, d=first.state_dict())  # fmt: skip
    assert names["sched"].step_count == 1
    names = run(block(DOCS / "METHOD.md", "numpy.int64(1000)"), "METHOD.md", freezeout=freezeout, torch=torch,
                numpy=numpy, model=TinyNet(), example=batch(0)[0][:1])  # fmt: skip
    assert names["sched"].total_steps == 1000 and names["sched"].warmup_steps == 100
    assert {g["weight_decay"] for g in names["opt"].param_groups} == {0.05, 0.0}


def test_the_cli_pages_estimate_block():
    model = TinyNet()
    names = run(block(DOCS / "CLI.md", "estimate_saving(model"), "CLI.md", model=model, layers=model.layers,
                example_batch=batch(0)[0])  # fmt: skip
    est = names["est"]
    assert 0 < est["paper_saving"] < 1 and est["calibrated_saving"] is not None


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's import
@DYNAMO_GRAD_PROBE
def test_the_compile_block():
    torch.manual_seed(0)
    model = TinyNet()
    names = run(block(DOCS / "COMPILE.md", "freezeout.compile_blocks(layers)"), "COMPILE.md", freezeout=freezeout,
                torch=torch, model=model, x=batch(0)[0], total_steps=4)  # fmt: skip
    sched, opt = names["sched"], names["opt"]
    for step in range(4):
        x, y = batch(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    assert sched.num_frozen == len(model.layers)
    freezeout.uncompile_blocks(names["layers"])


@pytest.mark.slow
def test_the_distributed_blocks_on_two_ranks(tmp_path):
    path = DOCS / "DISTRIBUTED.md"
    blocks = {"ddp": block(path, "rewrap_ddp(ddp, comm_hook"), "fsdp": block(path, "gather_frozen(sched)  # the one"),
              "checkpoint": block(path, "save_checkpoint(path")}  # fmt: skip
    spawn_ranks(distributed_blocks, (str(tmp_path / "init"), str(tmp_path), blocks))
    records = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in records:
        assert r["ddp"][0] == 4 and r["fsdp"] == 4 and r["checkpoint"]  # every layer frozen, a checkpoint written
    assert all(torch.equal(a, b) for a, b in zip(records[0]["ddp"][2], records[1]["ddp"][2]))  # ranks in sync


def test_the_readme_cache_loop_runs_and_serves():
    torch.manual_seed(0)
    model = TinyNet()
    x, y = batch(0, n=24)
    dataset = torch.utils.data.TensorDataset(x, y)  # 24 examples: one batch of the block's 32 per epoch
    epochs = 12
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = freezeout.FreezeOut(opt, model.layers, epochs, t0=0.3)
    names = run(block(README, "cache = PrefixCache(sched"), "README.md", model=model, dataset=dataset, opt=opt,
                sched=sched, epochs=epochs)  # fmt: skip
    assert names["cache"].stats["hits"] > 0 and sched.num_frozen == len(model.layers)
    indices, _, _ = next(iter(names["loader"]))
    assert sorted(indices.tolist()) == list(range(24))  # the loader yields each example's position


def test_the_cache_pages_trainer_block(tmp_path):
    transformers = pytest.importorskip("transformers")
    from freezeout.integrations.transformers import add_freezeout
    from tests.helpers.hf import tiny_bert, token_data

    quiet = dict(report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no")
    args = transformers.TrainingArguments(str(tmp_path), per_device_train_batch_size=4, num_train_epochs=10, **quiet)
    trainer = transformers.Trainer(model=tiny_bert("classify"), args=args, train_dataset=token_data(8))
    run(block(DOCS / "CACHE.md", "cache=True)"), "CACHE.md", trainer=trainer, add_freezeout=add_freezeout)
    assert trainer._freezeout.cache.last_stats["hits"] > 0
