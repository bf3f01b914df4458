"""What the frozen-prefix cache (``freezeout.PrefixCache``) realizes against frozen layers at zero cost.

HF BERT and GPT-2 sequence classification, 4 layers x 128 wide, fixed-length inputs (no padding), a data set of
``--examples`` examples in shuffled batches of ``--batch``, over ``--steps`` steps. Per model, in one process:

1. the *zero-cost curve* ``Z(k)``: a step with the first ``k`` layers frozen and their modules returning a constant
   (a stored output of the same batch: frozen layers at no cost at all), every k in lockstep, medians;
2. three runs in lockstep (``freezeout.analysis.runs.lockstep``: step s of each, in rotating order): the baseline
   (nothing freezes), FreezeOut, and FreezeOut with the cache; repeated ``--repeats`` times on fresh models, the
   medians of each repeat's ratios. The *zero-cost bound* is ``Z(k)`` integrated over the schedule (each step at
   the layers frozen during it), against the baseline's ``Z(0)``;
3. the all-frozen step with the cache warm against the same step without it, in lockstep, medians.

Rows: the paper default (cubic, scaled, t0 = 0.8) and cubic t0 = 0.5. Targets (issue 24): realized saving with
the cache >= 0.9 x the zero-cost bound, all-frozen step with the cache <= 0.3 x without, and cubic t0 = 0.5 at
least 1.5 x faster than the baseline end to end.

Run: PYTHONPATH=. .venv/bin/python benchmarks/cache_bench.py [--out benchmarks/results/cache_bench.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

import freezeout
from freezeout.analysis.runs import lockstep
from freezeout.experiment.runfiles import atomic_json
from freezeout.tensors import map_tensors

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, SEQ, CLASSES = 2048, 128, 10
TEXT = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)


def bert() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    m = transformers.BertForSequenceClassification(transformers.BertConfig(vocab_size=VOCAB, **TEXT, num_labels=10))
    return m, [m.bert.embeddings, *m.bert.encoder.layer]


def gpt2() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=128, n_layer=4, n_head=4, num_labels=10, use_cache=False,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    m = transformers.GPT2ForSequenceClassification(config)
    t = m.transformer  # the embedding's dropout freezes with it: unfrozen, it would draw new masks every step
    return m, [[t.wte, t.wpe, t.drop], *t.h]


MODELS = {"BERT": bert, "GPT-2": gpt2}


class Data:
    def __init__(self, n: int, batch: int, steps: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.labels = torch.randint(0, CLASSES, (n,), generator=g)
        perms = [torch.randperm(n, generator=g) for _ in range(-(-steps * batch // n) + 1)]
        flat = torch.cat(perms)
        self.order = [flat[i * batch : (i + 1) * batch] for i in range(steps)]

    def __call__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = self.ids[idx]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[idx]}


def trainer(make: Callable, data: Data, steps: int, t0: float, cache: dict | None) -> tuple[Callable[[], None], Any]:
    """A training step of ``make()``'s model on ``data``, with FreezeOut and (``cache``: its options) the cache."""
    model, layers = make()
    model.train()
    opt = torch.optim.SGD(freezeout.param_groups(model, layers), lr=0.01, momentum=0.9)
    sched = freezeout.FreezeOut(opt, layers, steps, t0=t0)
    pc = freezeout.PrefixCache(sched, data.ids.shape[0], **cache) if cache is not None else None
    state = {"s": 0, "peak": 0}

    def step() -> None:
        idx = data.order[state["s"] % len(data.order)]
        with pc.batch(idx) if pc is not None else contextlib.nullcontext():
            loss = model(**data(idx)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        state["s"] += 1
        if pc is not None:
            state["peak"] = max(state["peak"], pc.nbytes)

    return step, {"sched": sched, "cache": pc, "state": state}


def zero_cost_curve(make: Callable, data: Data, repeats: int) -> list[float]:
    """``Z(k)``: median step seconds with layers[:k] frozen and returning a stored output (costing nothing)."""
    n = len(make()[1])
    idx = data.order[0]
    x = data(idx)
    steppers = []
    for k in range(n + 1):
        model, layers = make()
        model.train()
        opt = torch.optim.SGD(freezeout.param_groups(model, layers), lr=0.01)
        sched = freezeout.FreezeOut(opt, layers, 10, t0=0.5)
        sched._frozen.freeze_to(k)  # the first k frozen as FreezeOut leaves them, whatever the step
        frozen = [m for layer in freezeout.layers.as_layers(layers)[:k] for m in layer.modules]
        stored: dict[nn.Module, Any] = {}

        def keep(mod: nn.Module, a: Any, out: Any, stored: dict = stored) -> None:
            stored.setdefault(mod, map_tensors(out, torch.Tensor.detach))

        handles = [m.register_forward_hook(keep) for m in frozen]
        with torch.no_grad():
            model(**x)
        for h in handles:
            h.remove()
        for m in frozen:
            m.forward = _constant(stored[m])

        def step(model=model, opt=opt) -> None:
            loss = model(**x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steppers.append(step)
    seconds = lockstep(steppers, repeats + 2)
    return [statistics.median(s[2:]) for s in seconds]


def _constant(out: Any) -> Callable[..., Any]:
    return lambda *args, **kwargs: out


def bound(curve: list[float], sched: freezeout.FreezeOut, steps: int) -> float:
    return 1.0 - sum(curve[sched.frozen_at(s)] for s in range(steps)) / (steps * curve[0])


def schedule_rows(make: Callable, args: argparse.Namespace, curve: list[float]) -> list[dict[str, Any]]:
    rows = []
    for t0 in (0.8, 0.5):
        per_repeat = []
        for r in range(args.repeats):
            data = Data(args.examples, args.batch, args.steps, seed=r)
            runs = [trainer(make, data, args.steps, t, c) for t, c in ((1.0, None), (t0, None), (t0, {}))]
            sec = lockstep([s for s, _ in runs], args.steps)
            base, plain, cached = (sum(s) for s in sec)
            info = runs[2][1]
            per_repeat.append({
                "baseline_s": base, "freezeout_s": plain, "cached_s": cached, "saving_freezeout": 1 - plain / base,
                "saving_cached": 1 - cached / base, "speedup_cached": base / cached,
                "zero_cost_bound": bound(curve, info["sched"], args.steps), "peak_cache_bytes": info["state"]["peak"],
                "hit_rate": info["cache"].hit_rate,
            })  # fmt: skip
        row = {k: statistics.median(p[k] for p in per_repeat) for k in per_repeat[0]}
        row["realized_over_bound"] = statistics.median(p["saving_cached"] / p["zero_cost_bound"] for p in per_repeat)
        rows.append({"schedule": "cubic", "scale_lr": True, "t0": t0, **row, "repeats": per_repeat})
    return rows


def all_frozen(make: Callable, args: argparse.Namespace) -> dict[str, Any]:
    """The all-frozen step, the cache warm (every example stored at the full depth) against no cache."""
    data = Data(args.examples, args.batch, args.steps)
    runs = []
    for cache in (None, {}):
        step, info = trainer(make, data, args.steps, 0.5, cache)
        info["sched"].step_to(args.steps)  # every layer frozen
        for _ in range(-(-args.examples // args.batch) + 2):  # one pass and then some: every example stored
            step()
        runs.append((step, info))
    sec = lockstep([s for s, _ in runs], args.rounds + 2)
    plain, cached = (statistics.median(s[2:]) for s in sec)
    return {
        "plain_step_s": plain,
        "cached_step_s": cached,
        "ratio": cached / plain,
        "cache_bytes": runs[1][1]["cache"].nbytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=9, help="timed steps per k of the curve and the all-frozen pair")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_bench.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "config": vars(args) | {"out": str(args.out)}, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "models": {},
    }  # fmt: skip
    for name in args.models:
        make = MODELS[name]
        curve = zero_cost_curve(make, Data(args.examples, args.batch, 1), args.rounds)
        frozen = all_frozen(make, args)
        rows = schedule_rows(make, args, curve)
        result["models"][name] = {"zero_cost_curve_s": curve, "all_frozen": frozen, "rows": rows}
        print(f"{name}: Z(k)/Z(0) = {', '.join(f'{c / curve[0]:.2f}' for c in curve)}; all-frozen step with the "
              f"cache {frozen['ratio']:.2f} x without ({1e3 * frozen['cached_step_s']:.1f} vs "
              f"{1e3 * frozen['plain_step_s']:.1f} ms), cache {frozen['cache_bytes'] / 2**20:.1f} MiB")  # fmt: skip
        for row in rows:
            print(f"  cubic t0={row['t0']}: baseline {row['baseline_s']:.2f} s, FreezeOut saves "
                  f"{100 * row['saving_freezeout']:.1f}%, with the cache {100 * row['saving_cached']:.1f}% "
                  f"({row['speedup_cached']:.2f}x), zero-cost bound {100 * row['zero_cost_bound']:.1f}%, "
                  f"realized/bound {row['realized_over_bound']:.2f}, "
                  f"peak cache {row['peak_cache_bytes'] / 2**20:.1f} MiB, "
                  f"hit rate {100 * row['hit_rate']:.0f}%")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
