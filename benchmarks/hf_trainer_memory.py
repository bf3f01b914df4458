"""Bytes held for backward and step time in a real ``transformers.Trainer`` with ``add_freezeout``, per frozen count.

    PYTHONPATH=. .venv/bin/python benchmarks/hf_trainer_memory.py [--hidden 128 --blocks 4 --length 64 --batch 8]

A BERT classifier built from a config (random weights, random tokens) trains for ``--steps`` steps with
FreezeOut (linear, ``t0=0.3``: every layer frozen by 3/4 of the run) in two settings: no activation
checkpointing; and checkpointing (Hugging Face then hooks the token embedding's output to require grad, which the
graph cut stops at the frozen blocks in every forward). For each step: the bytes autograd
still holds for backward when the forward returns, and the step's wall time. Reported per frozen count:
the median over the steady steps, and the check step (the first after a freeze) on its own. Under
checkpointing the held bytes leave out each checkpointed block's input, which the checkpoint keeps itself
(one hidden state per training block, so that part falls as blocks freeze too). Step times from a shared
machine are noisy: read the bytes.
Writes benchmarks/results/hf_trainer_memory.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import weakref
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from freezeout.experiment.runfiles import atomic_json
from freezeout.integrations.transformers import add_freezeout


class PerStep(TrainerCallback):
    def __init__(self, layers_of) -> None:
        self.layers_of, self.rows = layers_of, []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        packed: dict = {}

        def pack(t):
            s = t.untyped_storage()
            packed[(s.data_ptr(), s.nbytes())] = (weakref.ref(t), s.nbytes())
            return t

        def done(module, inputs, output):
            self.held = sum(n for ref, n in packed.values() if ref() is not None)

        self.context = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.context.__enter__()
        self.handle = model.register_forward_hook(done)
        self.frozen = sum(all(not p.requires_grad for p in m.parameters()) for m in self.layers_of(model))
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self.start
        self.context.__exit__(None, None, None)
        self.handle.remove()
        self.rows.append({"frozen": self.frozen, "held_bytes": self.held, "seconds": seconds})


def layers_of(model):
    return [model.bert.embeddings, *model.bert.encoder.layer]


def run(opts, checkpointing: bool) -> list[dict]:
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=opts.hidden, num_hidden_layers=opts.blocks, num_attention_heads=4,
        intermediate_size=4 * opts.hidden, vocab_size=1000, max_position_embeddings=opts.length,
    )  # fmt: skip
    model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (opts.batch * opts.steps, opts.length), generator=g)
    data = [{"input_ids": x, "labels": torch.tensor(i % 2)} for i, x in enumerate(ids)]
    fields = TrainingArguments.__dataclass_fields__
    flag = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=opts.batch, max_steps=opts.steps, report_to=[], use_cpu=True,
            disable_tqdm=True, save_strategy="no", logging_strategy="no", **{flag: checkpointing},
        )  # fmt: skip
        recorder = PerStep(layers_of)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[recorder])
        add_freezeout(trainer, layers=layers_of, t0=0.3, schedule="linear")
        trainer.train()
    return recorder.rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for k in sorted({r["frozen"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["frozen"] == k]
        steady = [rows[i] for i in idx[1:]] or [rows[idx[0]]]  # the first step at k is the guard's check step
        out[k] = {
            "held_bytes": statistics.median(r["held_bytes"] for r in steady),
            "check_step_held_bytes": rows[idx[0]]["held_bytes"],
            "step_seconds": statistics.median(r["seconds"] for r in steady),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/hf_trainer_memory.json"))
    opts = ap.parse_args()
    results = {"config": vars(opts) | {"out": str(opts.out)}, "threads": torch.get_num_threads()}
    results["no_checkpointing"] = summary(run(opts, False))
    results["checkpointing"] = summary(run(opts, True))
    for name in ("no_checkpointing", "checkpointing"):
        print(f"{name}: frozen -> held MiB (steady | check step), step ms")
        for k, r in results[name].items():
            print(
                f"  {k}: {r['held_bytes'] / 2**20:7.2f} | {r['check_step_held_bytes'] / 2**20:7.2f}   "
                f"{1e3 * r['step_seconds']:7.1f}"
            )
    atomic_json(opts.out, results)


if __name__ == "__main__":
    main()
