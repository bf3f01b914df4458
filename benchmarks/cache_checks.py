"""What the frozen-prefix cache's checks cost (docs/CACHE.md, "What it checks"), on the models of
``benchmarks/cache_bench.py`` (HF BERT and GPT-2, 4 x 128, batches of 8 x 128 tokens, 16 examples):

1. the all-frozen step with the cache warm at ``verify`` 0, the default and 1, against the same step without the
   cache, in lockstep (medians);
2. a FreezeOut run with the cache (cubic, t0 = 0.5, ``--steps`` steps): the seconds spent proving each new depth
   (the watched forward) and showing its rows each example's own, against a step of the baseline (nothing frozen);
3. per batch (medians): the fingerprint, the comparison of the stamps of what the frozen prefix read, a spot
   check of every served row.

Run: PYTHONPATH=. .venv/bin/python benchmarks/cache_checks.py [--out benchmarks/results/cache_checks.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.cache_bench import MODELS, Data, trainer
from freezeout.analysis.runs import lockstep
from freezeout.cache import cache as cache_module
from freezeout.cache import confirm
from freezeout.cache.fingerprint import fingerprints
from freezeout.cache.proof import Proofs
from freezeout.experiment.runfiles import atomic_json


class Timed:
    """Wraps ``module.name`` to time each call: ``seconds`` in all, ``calls``, the ``median`` call."""

    def __init__(self, module: Any, name: str) -> None:
        self.module, self.name, self.real = module, name, getattr(module, name)
        self.times: list[float] = []

    @property
    def seconds(self) -> float:
        return sum(self.times)

    @property
    def calls(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else 0.0

    def __enter__(self) -> Timed:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return self.real(*args, **kwargs)
            finally:
                self.times.append(time.perf_counter() - start)

        setattr(self.module, self.name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.module, self.name, self.real)


def _warm(make: Callable, data: Data, steps: int, cache: dict | None) -> Callable[[], None]:
    """The all-frozen step, every example stored."""
    step, info = trainer(make, data, steps, 0.5, cache)
    info["sched"].step_to(steps)  # every layer frozen
    for _ in range(-(-data.ids.shape[0] // data.order[0].numel()) + 2):
        step()
    return step


def all_frozen(make: Callable, args: argparse.Namespace) -> dict[str, float]:
    data = Data(args.examples, args.batch, args.steps)
    kinds = {"none": None, "verify=0": {"verify": 0.0}, "default": {}, "verify=1": {"verify": 1.0}}
    steps = [_warm(make, data, args.steps, cache) for cache in kinds.values()]
    seconds = lockstep(steps, args.rounds + 2)
    return {kind: statistics.median(s[2:]) for kind, s in zip(kinds, seconds)}


def proving(make: Callable, args: argparse.Namespace) -> dict[str, float]:
    data = Data(args.examples, args.batch, args.steps)
    base, _ = trainer(make, data, args.steps, 1.0, None)
    plain = statistics.median(lockstep([base], args.rounds + 2)[0][2:])
    step, info = trainer(make, data, args.steps, 0.5, {})
    with Timed(cache_module.PrefixCache, "_record") as record, Timed(cache_module, "rows_independent") as rows:
        for _ in range(args.steps):
            step()
    depths = max(rows.calls, 1)
    return {
        "baseline_step_s": plain,
        "depths_proven": rows.calls,
        "proving_forward_s_per_depth": (record.seconds - rows.seconds) / depths,
        "row_check_s_per_depth": rows.seconds / depths,
        "hit_rate": info["cache"].hit_rate,
    }


def per_batch(make: Callable, args: argparse.Namespace) -> dict[str, float]:
    data = Data(args.examples, args.batch, args.steps)
    x = data(data.order[0])
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        fingerprints(((), x), args.batch)
        times.append(time.perf_counter() - start)
    step = _warm(make, data, args.steps, {"verify": 1.0})
    with Timed(cache_module, "spot_check") as spot, Timed(Proofs, "refresh") as stamps:
        for _ in range(args.rounds):
            step()
    return {
        "fingerprint_s": statistics.median(times),
        "spot_check_s": spot.median,
        "stamps_s": stamps.median,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_checks.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"config": vars(args) | {"out": str(args.out)}, "torch": torch.__version__, "models": {}}
    assert confirm.rows_independent is cache_module.rows_independent  # what Timed wraps is what the cache calls
    for name in args.models:
        make = MODELS[name]
        row = {"all_frozen_step_s": all_frozen(make, args), **proving(make, args), **per_batch(make, args)}
        result["models"][name] = row
        af = row["all_frozen_step_s"]
        print(f"{name}: all-frozen step " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in af.items()))
        print(f"  per new depth: proving forward {1e3 * row['proving_forward_s_per_depth']:.1f} ms, row check "
              f"{1e3 * row['row_check_s_per_depth']:.1f} ms ({row['depths_proven']} depths); baseline step "
              f"{1e3 * row['baseline_step_s']:.1f} ms; fingerprint {1e6 * row['fingerprint_s']:.0f} us, stamps "
              f"{1e6 * row['stamps_s']:.0f} us per batch; spot check of a batch "
              f"{1e3 * row['spot_check_s']:.1f} ms")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
