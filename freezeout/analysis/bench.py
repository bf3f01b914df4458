"""Measured wall-clock saving of FreezeOut against the t0 = 1 baseline, next to the estimates.

Real training loops (``param_groups`` + SGD with Nesterov momentum and weight decay + ``FreezeOut``, the
path a user runs) on random data of the example's shape over a compressed schedule. Baseline and
FreezeOut runs alternate, in a rotating order, and each total is a median over repeats, since absolute
times drift on a shared machine. The *ideal* is the measured step-time curve ``T(k)`` integrated over
the very same schedule; the *calibrated* estimate integrates it over the continuous schedule. The curve
is measured in slices, one before each repeat of the runs, so that both see the same machine. With
``lockstep`` the runs of a repeat go step by step together instead (``analysis.runs``), for a machine whose
speed drifts within one run, and the curve is paired the same way: each timed step of it beside a step of a
model with nothing frozen, ``T(k)`` from their ratio (``step_time_curve(paired=True)``), so ideal and realized
are both measured against a neighbour in the same seconds; and the ideal weighs each step of the schedule by the
baseline's step timed beside the run's (``integrate_on_baseline``; the flat integral stays as
``ideal_saving_flat``): the machine's speed moves the realized saving step by step, and so it moves the ideal.
"""

from __future__ import annotations

import logging
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from ..checks import check_int
from ..layers import LayerLike, check_layers
from ..options import FreezeOutOptions
from ..schedule import freeze_times, strategy_name, validate_schedule, validate_t0
from .cost import integrate_on_baseline, integrate_step_times
from .estimate import predict
from .flops import batch_size_of, layer_flops
from .runs import BenchRun, lockstep_runs, sched_step_seconds, timed_run
from .timing import default_ks, merge_curves, step_time_curve
from .workload import copy_model, model_loss, random_batches

__all__ = ["BenchConfig", "BenchResult", "run_bench", "total_work"]

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    # A compressed schedule: a few dozen steps let every layer freeze at its own step or close to it,
    # while a whole table of runs still fits in minutes on a CPU.
    steps: int = 40
    # Median of 3 alternating runs: one stall on a shared machine cannot move the result.
    repeats: int = 3
    strategies: Sequence[tuple[str, bool]] = field(default_factory=lambda: [("cubic", True)])  # paper default
    t0s: Sequence[float] = (0.8,)  # the paper's recommended t0
    # The step-time curve: 3 timed steps per k (their median, each after one untimed step at that k), so that one
    # slow step cannot move T(0), every saving's normaliser (docs/BENCHMARKS.md, "Notes behind the defaults").
    curve_repeats: int = 3
    curve_points: int = 41  # every k for up to 40 layers; more layers: this many k's, interpolated
    lr: float = 0.1  # the paper's base LR, so the optimizer does its usual work
    seed: int = 0
    device: str = "cpu"
    overhead_calls: int = 2000  # sched.step() calls timed on their own (microseconds each)
    fuse: bool = FreezeOutOptions().fuse  # FreezeOut's own default for folding frozen layers' BatchNorms
    compare_fuse: bool = False  # also every row with the other fuse setting, in the same alternating rounds
    # Off: each run on its own, whole runs alternating (what a user's run is). On: all runs of a repeat step by
    # step in lockstep (analysis.runs), and the curve paired, for a machine whose speed drifts within a run.
    lockstep: bool = False

    @property
    def fuse_modes(self) -> list[bool]:
        return [self.fuse, not self.fuse] if self.compare_fuse else [self.fuse]

    def validate(self) -> BenchConfig:
        for name in ("steps", "repeats", "curve_repeats", "overhead_calls"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        self.curve_points = check_int("curve_points", self.curve_points, 2)
        if not self.strategies or not self.t0s:
            raise ValueError("strategies and t0s must each name at least one value")
        for schedule, _ in self.strategies:
            validate_schedule(schedule)
        self.t0s = [validate_t0(t) for t in self.t0s]
        for name in ("fuse", "compare_fuse", "lockstep"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        return self


def _realized(row: dict[str, Any], base: dict[str, Any], lockstep: bool) -> float:
    """Realized saving against the baseline: in lockstep, the median of each repeat's own ratio (a repeat's runs
    share one stretch of time, two repeats need not), else the ratio of the medians (runs apart in time anyway)."""
    if lockstep:
        return statistics.median(1.0 - r / b for r, b in zip(row["runs_seconds"], base["runs_seconds"], strict=True))
    return 1.0 - row["seconds"] / base["seconds"]


def _median_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k, v in runs[0].items() if k != "num_frozen" and not isinstance(v, list)]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["runs_seconds"] = [r["seconds"] for r in runs]
    if "step_seconds" in runs[0]:  # lockstep: every step's seconds, each repeat
        out["runs_step_seconds"] = [r["step_seconds"] for r in runs]
    return out


@dataclass
class BenchResult:
    """What ``run_bench`` measured. ``to_dict()`` is the JSON ``freezeout bench --out`` writes (the fields below,
    and ``model`` once the command line set it); ``result["rows"]`` reads a field as the dict it was before.

    ``rows``: one dict per strategy, t0 and fuse setting (``predict``'s savings, then ``name``, ``fuse``,
    ``ideal_saving``, ``realized_saving``, ``seconds``, ``runs_seconds``, ``sched_step_fraction``,
    ``num_frozen_at_end``; with ``lockstep`` also ``ideal_saving_flat``, ``step_frozen`` and
    ``runs_step_seconds``; ``peak_memory_bytes`` on CUDA). ``step_times``, ``curve_ks`` and ``curve_samples``:
    the first fuse setting's step-time curve; ``curves``: each setting's.

    Two costs of FreezeOut's own, apart: each row's ``sched_step_fraction`` is the run's ``sched.step()`` calls,
    the freezes (and BatchNorm folds) included, over the rest of its training time; ``sched_step`` is a steady
    ``sched.step()`` alone (one that freezes nothing), ``seconds_per_call`` and ``fraction_of_step`` of a baseline
    step."""

    config: dict[str, Any]
    num_layers: int
    batch_size: int
    input_shape: Any
    threads: int
    device: str
    layer_flops: list[int]
    rest_flops: int
    step_times: list[float]
    curve_ks: list[int]
    curve_samples: dict[str, list[float]]
    curves: dict[str, dict[str, Any]]
    baseline: dict[str, Any]
    sched_step: dict[str, float]
    memory: dict[str, Any]
    rows: list[dict[str, Any]]
    model: dict[str, Any] | None = None  # what model it was: the command line's record, unset by run_bench

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["model"] is None:
            del out["model"]
        return out

    def __getitem__(self, key: str) -> Any:
        if key not in self.to_dict():
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class _Work:
    """What every run of one benchmark shares: the model's copy they start from, the batches, the loss, the
    runs, the FLOP counts the estimates use."""

    template: Any
    data: list[tuple]
    target: torch.Tensor | None
    loss_fn: Callable
    progress: Callable[[int], None] | None
    runs: list[BenchRun]
    flops: list[int]
    rest: int


def _run_specs(config: BenchConfig) -> list[BenchRun]:
    """The baseline (it freezes nothing: fusion cannot change it), then every strategy, t0 and fuse setting."""
    modes = config.fuse_modes
    suffix = {True: "-fused", False: "-plain"} if len(modes) > 1 else {modes[0]: ""}
    return [("baseline", 1.0, "cubic", True, modes[0])] + [
        (f"{strategy_name(s, sc)}-{t0:g}{suffix[f]}", t0, s, sc, f)
        for f in modes
        for s, sc in config.strategies
        for t0 in config.t0s
    ]


def _measure(
    model: nn.Module, layers: Sequence[LayerLike], example_input: Any, config: BenchConfig, work: _Work
) -> tuple[dict[str, list], dict[bool, list]]:
    """Every repeat: a slice of each fuse setting's step-time curve, then the runs in a rotated order (whole runs
    one after another, or in lockstep). Each run's records by name, and each setting's curve slices."""
    template, data, loss_fn, progress, runs = work.template, work.data, work.loss_fn, work.progress, work.runs
    device, modes, n = torch.device(config.device), config.fuse_modes, len(layers)
    timed_run(template, data, loss_fn, 2, config.lr, runs[0], device)  # first-run costs land outside the timings
    results: dict[str, list] = {name: [] for name, *_ in runs}
    slices: dict[bool, list] = {f: [] for f in modes}
    for r in range(config.repeats):
        # a slice of the curve before each repeat, not the whole curve first: the machine's speed drifts over a
        # table, and curve and runs must see the same machine (docs/BENCHMARKS.md, "Notes behind the defaults")
        first = r == 0
        for f in modes if r % 2 == 0 else reversed(modes):
            slices[f].append(
                step_time_curve(
                    model, layers, example_input, target=work.target, loss_fn=loss_fn,
                    ks=default_ks(n, config.curve_points), repeats=_curve_slice(config), warmup=2 if first else 0,
                    warm_rounds=1 if first else 0, device=device, lr=config.lr, progress=progress, fuse=f,
                    paired=config.lockstep,
                )
            )  # fmt: skip
        shift = r % len(runs)  # rotate the order so no run always follows the same neighbour
        rotated = runs[shift:] + runs[:shift]
        if config.lockstep:
            done = lockstep_runs(template, data, loss_fn, config.steps, config.lr, rotated, device, progress)
            for name in results:
                results[name].append(done[name])
        else:
            for spec in rotated:
                results[spec[0]].append(timed_run(template, data, loss_fn, config.steps, config.lr, spec, device))
                if progress:
                    progress(config.steps)
    return results, slices


def _row(
    spec: BenchRun, runs: list[dict], baseline: list[dict], curve: dict[str, Any], config: BenchConfig, work: _Work
) -> dict[str, Any]:
    """One strategy's row: the estimates (paper, calibrated on ``curve``), the ideal and the realized saving."""
    name, t0, schedule, scale, f = spec
    steps_f = curve["step_times"]
    row = predict(work.flops, work.rest, t0, schedule, scale, linear_correction=True, step_times=steps_f)
    med, base = _median_runs(runs), _median_runs(baseline)
    flat = integrate_step_times(steps_f, freeze_times(len(work.flops), t0, schedule), config.steps)["saving"]
    if config.lockstep:  # on the baseline's own seconds, repeat by repeat, as realized
        ideal = statistics.median(
            integrate_on_baseline(steps_f, r["step_frozen"], b["step_seconds"])["saving"]
            for r, b in zip(runs, baseline, strict=True)
        )
        row.update(ideal_saving_flat=flat, step_frozen=runs[0]["step_frozen"])
    row.update(
        name=name,
        fuse=f,
        ideal_saving=ideal if config.lockstep else flat,
        realized_saving=_realized(med, base, config.lockstep),
        seconds=med["seconds"],
        runs_seconds=med["runs_seconds"],
        **({"runs_step_seconds": med["runs_step_seconds"]} if config.lockstep else {}),
        sched_step_fraction=med["sched_seconds"] / (med["seconds"] - med["sched_seconds"]),
        num_frozen_at_end=runs[0]["num_frozen"],
    )
    if "peak_memory_bytes" in med:
        row["peak_memory_bytes"] = med["peak_memory_bytes"]
    return row


def _curve_record(curve: dict[str, Any]) -> dict[str, Any]:
    return {k: curve[k] for k in ("step_times", "samples", "neighbour_samples") if k in curve}


def _memory(curve: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    memory: dict[str, Any] = {"saved_for_backward_bytes": curve["saved_bytes"]}
    if "peak_memory_bytes" in base:
        memory["baseline_peak_bytes"] = base["peak_memory_bytes"]
    elif sys.platform != "win32":
        import resource

        memory["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return memory


def run_bench(
    model: nn.Module,
    layers: Sequence[LayerLike],
    example_input: Any,
    config: BenchConfig | None = None,
    *,
    target: torch.Tensor | None = None,
    loss_fn: Callable | None = None,
    progress: Callable[[int], None] | None = None,
    flops: tuple[Sequence[int], int] | None = None,
) -> BenchResult:
    """Benchmark FreezeOut on ``model``: paper, calibrated, ideal and realized saving for every strategy
    and t0 of ``config``, plus memory and the cost of ``sched.step()`` (``BenchResult``). The model is not changed.

    ``example_input`` is a tensor, tuple or mapping (``run_model``); the runs see random batches like it (its
    floating tensors redrawn, the others, token ids and masks, kept). ``loss_fn(output, target)`` defaults to
    ``model_loss``: the model's own loss if it computes one, else cross-entropy on random labels.

    ``progress(k)`` reports ``k`` more steps done (for a progress bar); ``total_work(config, n)``
    says how many there will be. ``flops``: ``layer_flops``' result, if already counted (``layer_flops_meta``
    counts a big batch without its activations' memory).
    """
    config = (config or BenchConfig()).validate()
    layers = check_layers(layers)
    n, device, batch = len(layers), torch.device(config.device), batch_size_of(example_input)
    flops, rest = layer_flops(model, layers, example_input) if flops is None else (list(flops[0]), int(flops[1]))
    template = copy_model(model, layers, device)
    data = random_batches(example_input, template[0], target, min(config.steps, 4), config.seed, device)
    work = _Work(template, data, target, loss_fn or model_loss, progress, _run_specs(config), flops, rest)
    results, slices = _measure(model, layers, example_input, config, work)
    curves = {f: merge_curves(slices[f], n) for f in config.fuse_modes}
    curve = curves[config.fuse_modes[0]]
    base = _median_runs(results["baseline"])
    step_time = base["seconds"] / config.steps
    per_call = sched_step_seconds(template, config.lr, config.overhead_calls)
    rows = [_row(s, results[s[0]], results["baseline"], curves[s[4]], config, work) for s in work.runs[1:]]
    return BenchResult(
        config=asdict(config),
        num_layers=n,
        batch_size=batch,
        input_shape=shapes_of(example_input),
        threads=torch.get_num_threads(),
        device=str(device),
        layer_flops=flops,
        rest_flops=rest,
        step_times=curve["step_times"],
        curve_ks=curve["ks"],
        curve_samples=curve["samples"],
        curves={("fused" if f else "plain"): _curve_record(c) for f, c in curves.items()},
        baseline={**base, "step_seconds": step_time},
        sched_step={"seconds_per_call": per_call, "fraction_of_step": per_call / step_time},
        memory=_memory(curve, base),
        rows=rows,
    )


def shapes_of(example_input: Any) -> Any:
    """The shape of each tensor in an example input, as JSON: a list, or a list or dict of them."""
    if isinstance(example_input, torch.Tensor):
        return list(example_input.shape)
    if isinstance(example_input, Mapping):
        return {str(k): shapes_of(v) for k, v in example_input.items()}
    if isinstance(example_input, (list, tuple)):
        return [shapes_of(v) for v in example_input]
    return None


def _curve_slice(config: BenchConfig) -> int:
    """Timed steps per k in each repeat's slice of the curve: at least ``curve_repeats`` in all."""
    return -(-config.curve_repeats // config.repeats)


def total_work(config: BenchConfig, num_layers: int) -> int:
    """Steps ``run_bench`` reports through ``progress``."""
    timed = config.repeats * _curve_slice(config)
    modes = len(config.fuse_modes)
    curve = modes * len(default_ks(num_layers, config.curve_points)) * (timed + 1)  # + the warm round
    return curve + config.repeats * config.steps * (1 + modes * len(config.strategies) * len(config.t0s))
