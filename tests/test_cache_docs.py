"""The python blocks of the README's cache section and of docs/CACHE.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

import freezeout
from freezeout.integrations.transformers import add_freezeout
from tests.helpers.hf import tiny_bert, token_data
from tests.helpers.models import TinyNet, batch

ROOT = Path(__file__).resolve().parents[1]


def blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_cache_loop_runs_and_serves():
    section = ROOT.joinpath("README.md").read_text().split("## Frozen layers at zero cost")[1].split("\n## ")[0]
    (code,) = blocks(section)
    torch.manual_seed(0)
    model = TinyNet()
    data = [batch(i) for i in range(3)]
    dataset = [(x[j], y[j]) for x, y in data for j in range(len(y))]
    size = len(data[0][1])
    loader = [(torch.arange(i * size, (i + 1) * size), x, y) for i, (x, y) in enumerate(data)] * 4
    opt = torch.optim.SGD(freezeout.param_groups(model, model.layers), lr=0.1)
    sched = freezeout.FreezeOut(opt, model.layers, len(loader), t0=0.3)
    namespace = {"model": model, "loader": loader, "dataset": dataset, "opt": opt, "sched": sched}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["cache"].stats["hits"] > 0 and sched.num_frozen == len(model.layers)


def test_cache_doc_trainer_block_runs(tmp_path):
    (code,) = blocks(ROOT.joinpath("docs", "CACHE.md").read_text())
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, num_train_epochs=10, report_to=[],
                             use_cpu=True, disable_tqdm=True, save_strategy="no")  # fmt: skip
    trainer = Trainer(model=tiny_bert("classify"), args=args, train_dataset=token_data(8))
    exec(compile(code, "docs/CACHE.md", "exec"), {"trainer": trainer, "add_freezeout": add_freezeout})
    assert trainer._freezeout.cache.last_stats["hits"] > 0
