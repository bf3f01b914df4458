"""docs/MODELS.md: what ``find_layers`` finds on five model families and what freezing them buys, on CPU.

For the paper's DenseNet-BC and the CIFAR ResNet of this project, and Hugging Face BERT, GPT-2 and ViT built from
small configs (no download): the layers found, saved-for-backward bytes and training-step time with none, half
(``n // 2``) and all of the ``n`` layers frozen, and the paper's and the calibrated estimates of the saving for the
recommended setting (cubic, scaled, t0 = 0.8), all from ``estimate_saving(..., calibrate=True)``: its step-time curve
alternates the k's round robin, each ``T(k)`` a median, and sets every k up as FreezeOut does (a tied embedding cut).

    PYTHONPATH=. .venv/bin/python benchmarks/models_table.py            # ~3-5 min on this CPU

Writes benchmarks/results/models_table.json and docs/MODELS.md (both atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from freezeout import find_layers
from freezeout.analysis.estimate import estimate_saving
from freezeout.experiment.models import DenseNetBC, ResNet
from freezeout.experiment.runfiles import atomic_bytes, atomic_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TIMM_MARK = "<!-- the timm section: written by benchmarks/timm_table.py -->"
CACHE_MARK = "<!-- the cache section: from benchmarks/cache_bench.py, kept when the tables above are rewritten -->"
BATCH, SEQ, IMAGE, VOCAB = 16, 128, 32, 2048
# GPT-2's LM head is ~27 % of its forward FLOPs (vocabulary 50257, width 768, 12 blocks, 1024 tokens); at width
# 128 and 4 blocks a vocabulary of 2048 keeps the head's share near that (~22 %), 8192 would make it half.


def tokens(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def models() -> dict[str, tuple[str, Any, Any]]:
    """name -> (its configuration in words, a builder, an example batch); the builders seed torch."""
    text = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
    image = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))

    def bert() -> nn.Module:
        config = transformers.BertConfig(vocab_size=VOCAB, **text, num_labels=10)
        return transformers.BertForSequenceClassification(config)

    def gpt2() -> nn.Module:
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=SEQ, n_embd=128, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0
        )
        return transformers.GPT2LMHeadModel(config)

    def vit() -> nn.Module:
        config = transformers.ViTConfig(**text, image_size=IMAGE, patch_size=4, num_labels=10)
        return transformers.ViTForImageClassification(config)

    lm = {**tokens(VOCAB), "labels": tokens(VOCAB)["input_ids"]}
    return {
        "DenseNet-BC": (f"depth 22, k = 12; {BATCH} x 3 x 32 x 32", lambda: DenseNetBC(22, 12, 10), image),
        "ResNet": (f"CIFAR ResNet-20, width 16; {BATCH} x 3 x 32 x 32", lambda: ResNet(20, 16, 10), image),
        "BERT": (f"BertForSequenceClassification, 4 x 128, vocab {VOCAB}; {BATCH} x {SEQ} tokens", bert, tokens(VOCAB)),
        "GPT-2": (f"GPT2LMHeadModel (tied head), 4 x 128, vocab {VOCAB}; {BATCH} x {SEQ} tokens + labels", gpt2, lm),
        "ViT": (f"ViTForImageClassification, 4 x 128, patch 4; {BATCH} x 3 x 32 x 32", vit, {"pixel_values": image}),
    }


def layer_names(model: nn.Module, layers: list) -> list[str]:
    by_id = {id(m): n for n, m in model.named_modules()} | {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(x)] if isinstance(x, nn.Module) else "+".join(by_id[id(m)] for m in x) for x in layers]


def abbreviate(names: list[str]) -> str:
    """``a.0, a.1, a.2, b`` -> ``a.{0..2}, b``; a group's members after its first as ``+...``."""
    out: list[list[Any]] = []  # [prefix, first, last] or [name]
    for name in names:
        name = name.split("+")[0] + ("+..." if "+" in name else "")
        m = re.fullmatch(r"(.*\D)(\d+)", name)  # blocks.3, s4.b7, denselayer12
        if m and out and len(out[-1]) == 3 and out[-1][0] == m[1] and out[-1][2] + 1 == int(m[2]):
            out[-1][2] += 1
        else:
            out.append([m[1], int(m[2]), int(m[2])] if m else [name])
    return ", ".join(
        x[0] if len(x) == 1 else f"{x[0]}{x[1]}" if x[1] == x[2] else f"{x[0]}{{{x[1]}..{x[2]}}}" for x in out
    )


def measure(name: str, words: str, build: Any, x: Any, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build()
    one = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    layers = find_layers(model, one)
    names = layer_names(model, layers)
    start = time.perf_counter()
    est = estimate_saving(model, layers, x, t0=0.8, schedule="cubic", scale_lr=True, calibrate=True, repeats=repeats)
    n = len(layers)
    times, saved = est["step_times"], {int(k): v for k, v in est["saved_bytes_by_k"].items()}
    row = {
        "model": name,
        "config": words,
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_layers": n,
        "layers": names,
        "layers_short": abbreviate(names),
        "matches_hand_written": names == layer_names(model, model.layers) if hasattr(model, "layers") else None,
        "step_seconds": {"none": times[0], "half": times[n // 2], "all": times[n]},
        "saved_bytes": {"none": saved[0], "half": saved[n // 2], "all": saved[n]},
        "paper_saving": est["paper_saving"],
        "calibrated_saving": est["calibrated_saving"],
        "estimate": est,
        "seconds": time.perf_counter() - start,
    }
    print(
        f"{name:<12} {n:>2} layers  saved {saved[0] / 2**20:7.2f} MiB x {saved[n // 2] / saved[0]:.2f} / "
        f"{saved[n] / saved[0]:.2f}  step {times[0] * 1e3:7.1f} ms x {times[n // 2] / times[0]:.2f} / "
        f"{times[n] / times[0]:.2f}  paper {est['paper_saving']:6.1%}  calibrated {est['calibrated_saving']:6.1%}"
        f"  ({row['seconds']:.0f} s)",
        flush=True,
    )
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        "| model | layers found | saved for backward: none frozen | half / all (x none) "
        "| step: none frozen | half / all (x none) | paper estimate | calibrated estimate |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        s, t = r["saved_bytes"], r["step_seconds"]
        lines.append(
            f"| **{r['model']}** ({r['config']}) | {r['num_layers']}: {r['layers_short']} "
            f"| {s['none'] / 2**20:.2f} MiB | {s['half'] / s['none']:.2f} / {s['all'] / s['none']:.2f} "
            f"| {t['none'] * 1e3:.0f} ms | {t['half'] / t['none']:.2f} / {t['all'] / t['none']:.2f} "
            f"| {r['paper_saving']:.1%} | {r['calibrated_saving']:.1%} |"
        )
    return TEMPLATE.format(table=head + "\n".join(lines), busy=busy(meta["load_average"], meta["cpus"]), **meta)


TEMPLATE = """# Models: the layers `find_layers` finds, and what freezing them saves

Produced by `benchmarks/models_table.py` (numbers in `benchmarks/results/models_table.json`); do not edit by hand.

{table}

"half" is the first `n // 2` of the `n` layers frozen, "all" all of them; each ratio is to the same model with
none frozen. Saved for backward: the bytes autograd keeps from the forward pass for the backward
(`freezeout.saved_tensor_bytes`, parameters included). Step: one training step (zero_grad, forward, loss,
backward, SGD step), the median of {repeats} timed steps per k, the k's alternated round robin in one run. The
estimates are the predicted wall-clock saving of the recommended setting (cubic, scaled, t0 = 0.8): the paper's
from each layer's forward FLOPs (Eq. 2-3), the calibrated one from the measured step-time curve
(`estimate_saving(..., calibrate=True)`; docs/METHOD.md, "The cost model").

Measured on {machine}. {busy}

## Reading it

- **The layers.** Every model is given to `find_layers(model, example[:1])` as it is (a tensor, or a dict of
  tensors as a tokenizer returns them). On the transformers it returns the embedding, then one layer per block,
  and leaves the final norm, the pooler and the classifier or LM head to train to the end; on the CNNs the stem,
  each block and each transition, the same lists as the models' hand-written `.layers`
  ({hand_written}).
- **GPT-2's token embedding is its head's weight** (tied), so it is not among the layers: the embedding layer
  is the position embedding `wpe`, and once blocks freeze FreezeOut cuts the token embedding's flow into them,
  so with all frozen autograd keeps only what the head needs (`freezeout/freezing/cut.py`).
- **Memory falls further than time.** With all layers frozen a frozen layer keeps nothing for backward, but
  it still runs its forward, so the step cannot fall below the forward of the layers plus the head's step.
  GPT-2's LM head and loss (a vocabulary of 2048 over a width of 128: about a fifth of the forward FLOPs, as in
  the real GPT-2) run in full every step, which caps what freezing its blocks can save. The paper's estimate
  counts FLOPs only; the calibrated one integrates the measured step time over the schedule, and is the one
  to trust on this hardware.

Reproduce: `PYTHONPATH=. .venv/bin/python benchmarks/models_table.py` (about {minutes:.0f} minutes here;
`--repeats` sets the timed steps per k).
"""


def with_timm_section(page: str, path: Path) -> bytes:
    """``page`` followed by the timm section already in ``path`` (``benchmarks/timm_table.py`` writes it)."""
    old = path.read_text() if path.exists() else ""
    return (page + ("\n" + TIMM_MARK + old.split(TIMM_MARK, 1)[1] if TIMM_MARK in old else "")).encode()


def busy(load: list[float], cpus: int) -> str:
    if max(load) <= 0.5 * cpus:
        return f"The machine was idle (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end)."
    return (
        f"The machine was busy, shared with other work (1-minute load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end, on {cpus} cores): step times are noisy, and so are their ratios (runs minutes "
        "apart here moved them by up to 0.2); saved bytes do not depend on the machine."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9, help="timed steps per k (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--only", nargs="+", help="measure only these models (the table then holds just them)")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/models_table.json"))
    ap.add_argument("--markdown", type=Path, default=Path("docs/MODELS.md"))
    args = ap.parse_args()
    if args.render:
        saved = json.loads(args.json.read_text())
        atomic_bytes(args.markdown, with_timm_section(markdown(saved["rows"], saved["meta"]), args.markdown))
        return
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    start, load = time.perf_counter(), os.getloadavg()[0]
    rows = [measure(name, *spec, args.repeats) for name, spec in models().items() if not args.only or name in args.only]
    hand = [r for r in rows if r["matches_hand_written"] is not None]
    meta = {
        "repeats": args.repeats,
        "minutes": (time.perf_counter() - start) / 60,
        "cpus": os.cpu_count() or 1,
        "load_average": [load, os.getloadavg()[0]],
        "machine": f"{os.cpu_count()} CPU cores, {args.threads} torch thread(s), torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        "hand_written": ", ".join(f"{r['model']}: {'yes' if r['matches_hand_written'] else 'NO'}" for r in hand),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.json, {"meta": meta, "rows": rows})
    atomic_bytes(args.markdown, with_timm_section(markdown(rows, meta), args.markdown))
    print(f"wrote {args.json} and {args.markdown} in {meta['minutes']:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
