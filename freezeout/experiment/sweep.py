"""The paper's study as data: a grid of strategies x t0 x seeds plus one baseline per seed, run resumably.

With ``shorter`` fractions, every seed also gets the baseline trained for that fraction of the epochs, its own cosine
schedule over the fewer steps (``shorter_f=0.7_seed=0``): what the same time buys without FreezeOut (the equal-time
baselines, ``equal_time``). ``lockstep=True`` trains each seed's runs side by side, step by step (``lockstep``).

A sweep directory holds ``sweep.json`` (the base training config and the grid) and one run directory per
point, named after the point (``cubic-scaled_t0=0.8_seed=0``, ``baseline_seed=0``), each written by the
trainer (``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json``). Re-running a sweep skips
finished runs, resumes interrupted ones and starts the rest afresh; the files are the only state.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checks import check_int, check_number
from ..schedule import STRATEGIES, parse_strategy, strategy_name, validate_t0
from .config import TrainConfig, config_differences, fit_batch, train_examples
from .folders import SWEEP_FILE, check_folder
from .lock import run_lock
from .progress import Display
from .runfiles import atomic_json, check_creatable, remove_stale_temps
from .runstate import clear_run, read_summary, run_status

__all__ = [
    "PER_RUN_FIELDS",
    "Grid",
    "RunSpec",
    "base_dict",
    "check_shorter",
    "expand",
    "fit_base",
    "prepare_sweep_dir",
    "run_config",
    "run_name",
    "run_sweep",
    "shortened_epochs",
    "strategy_of",
]

log = logging.getLogger(__name__)

# What the sweep sets per run; everything else in the training config is the sweep's base config (but for the
# epochs of a shortened baseline).
PER_RUN_FIELDS = ("schedule", "scale_lr", "t0", "seed")
SHORTER = "shorter"  # the strategy name of a baseline shortened to a fraction of the epochs


def run_name(strategy: str, t0: float, seed: int, fraction: float = 1.0) -> str:
    """The run directory's name of a grid point: ``cubic-scaled_t0=0.8_seed=0``, ``baseline_seed=0``, and a baseline
    shortened to a ``fraction`` of the epochs, ``shorter_f=0.7_seed=0``."""
    if strategy == SHORTER:
        return f"{SHORTER}_f={float(fraction):g}_seed={seed}"
    return f"baseline_seed={seed}" if strategy == "baseline" else f"{strategy}_t0={float(t0):g}_seed={seed}"


def strategy_of(config: dict[str, Any]) -> str:
    """A run config's strategy name: ``"baseline"`` at t0 = 1, else e.g. ``"cubic-scaled"``."""
    if float(config["t0"]) == 1.0:
        return "baseline"
    return strategy_name(config["schedule"], bool(config["scale_lr"]))


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid. ``strategy`` is ``"baseline"`` for t0 = 1, where the strategy is moot."""

    name: str  # also the run directory's name inside the sweep directory
    strategy: str
    schedule: str
    scale_lr: bool
    t0: float
    seed: int
    fraction: float = 1.0  # of the base config's epochs: below 1 for a shortened baseline

    @property
    def baseline(self) -> bool:
        return self.t0 == 1.0


@dataclass(frozen=True)
class Grid:
    """Strategies x t0 values x seeds; every seed also gets a baseline (t0 = 1)."""

    strategies: tuple[str, ...] = tuple(STRATEGIES)
    t0s: tuple[float, ...] = (0.5, 0.65, 0.8)  # around the paper's Figure 2 range
    seeds: tuple[int, ...] = (0, 1)  # two seeds: the fewest that give a standard deviation
    shorter: tuple[float, ...] = ()  # shortened baselines, as fractions of the epochs in (0, 1); none by default

    def __post_init__(self) -> None:
        # Normalise lists to tuples (hashable, JSON round trip) and drop repeats, keeping the order.
        for name in ("strategies", "t0s", "seeds", "shorter"):
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))

    def validate(self) -> Grid:
        if not self.seeds:
            raise ValueError("seeds is empty: the grid has no runs (give at least one seed)")
        if not self.strategies and self.t0s:
            raise ValueError("strategies is empty but t0 values were given: name at least one strategy")
        if self.strategies and not self.t0s:
            raise ValueError("t0 list is empty but strategies were given: give at least one t0 in (0, 1)")
        for s in self.strategies:
            parse_strategy(s)
        for t0 in self.t0s:
            validate_t0(t0, allow_one=False)
        for seed in self.seeds:
            check_int("seed", seed, 0)
        for f in self.shorter:
            check_number("shorter", f, 0.0, 1.0, low_open=True, high_open=True, what="a fraction of the epochs")
        return self

    def to_dict(self) -> dict[str, list]:
        d = {"strategies": list(self.strategies), "t0s": list(self.t0s), "seeds": list(self.seeds)}
        return {**d, "shorter": list(self.shorter)} if self.shorter else d


def expand(grid: Grid) -> list[RunSpec]:
    """Every run of ``grid``, baselines first (speedups need them), then seed by seed."""
    grid = grid.validate()
    # The baseline's schedule is moot at t0 = 1 (every t_i = 1, lr_i(0) = lr); cubic-scaled is the default.
    runs = [RunSpec(run_name("baseline", 1.0, s), "baseline", "cubic", True, 1.0, s) for s in grid.seeds]
    for seed in grid.seeds:
        runs += [RunSpec(run_name(SHORTER, 1.0, seed, f), SHORTER, "cubic", True, 1.0, seed, f) for f in grid.shorter]
    for seed in grid.seeds:
        for strategy in grid.strategies:
            schedule, scale = parse_strategy(strategy)
            for t0 in grid.t0s:
                runs.append(RunSpec(run_name(strategy, t0, seed), strategy, schedule, scale, float(t0), seed))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError("two t0 values print the same (6 significant digits): make them differ visibly")
    return runs


def run_config(base: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    """The training config dict of one run: the base with the run's own fields set (a shortened baseline's epochs)."""
    config = {**base, "schedule": spec.schedule, "scale_lr": spec.scale_lr, "t0": spec.t0, "seed": spec.seed}
    if spec.fraction != 1.0:
        config["epochs"] = shortened_epochs(int(base["epochs"]), spec.fraction)
    return config


def shortened_epochs(epochs: int, fraction: float) -> int:
    """``fraction`` of ``epochs``, which must be a whole number of them (``ValueError`` naming both otherwise)."""
    n = round(fraction * epochs)
    if n < 1 or abs(n - fraction * epochs) > 1e-6 * epochs:
        raise ValueError(f"shorter fraction {fraction:g} of {epochs} epochs is not a whole number of epochs")
    return n


def check_shorter(base_config: Any, grid: Grid) -> None:
    """``ValueError`` unless every shortened baseline of ``grid`` is a whole number of the base config's epochs."""
    epochs = int(base_dict(base_config)["epochs"])
    for f in grid.shorter:
        shortened_epochs(epochs, f)


def base_dict(base_config: Any) -> dict[str, Any]:
    """The sweep's base training config as ``sweep.json`` holds it, without the fields each run sets."""
    d = base_config.to_dict() if hasattr(base_config, "to_dict") else dict(base_config)
    # JSON round trip so that what we compare is exactly what sweep.json holds (tuples -> lists, ...).
    return json.loads(json.dumps({k: v for k, v in d.items() if k not in PER_RUN_FIELDS}))


def prepare_sweep_dir(
    base_config: Any, grid: Grid, sweep_dir: str | os.PathLike, *, write: bool = True
) -> dict[str, Any]:
    """Create ``sweep_dir`` with ``sweep.json``, or check that the one there has the same base config
    (``write=False``: only check, as a dry run does).

    A different base config raises ``ValueError`` naming the differing fields (mixing runs of two configs
    would make the aggregate meaningless); values that name the same run (``config.config_differences``:
    ``data`` and its absolute path, ``auto`` and the device it picks here) are not different. The grid may
    grow: ``sweep.json`` keeps the union.
    """
    out = Path(sweep_dir)
    check_folder(out, "sweep")
    if not write:  # a dry run creates nothing, but plans nothing that could not happen either
        check_creatable(out, "--out")
    base = base_dict(base_config)
    record = {"version": 1, "base_config": base, "grid": grid.validate().to_dict()}
    path = out / SWEEP_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
            old_base = old["base_config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a sweep file: {exc}") from None
        if not isinstance(old_base, dict):
            raise ValueError(f"{path} is not a sweep file: its base_config is not a mapping")
        # A field added to TrainConfig after the sweep began is at its default there: not a difference.
        diff = config_differences(old_base, base)
        if diff:
            raise ValueError(f"{out} holds a sweep with a different config ({', '.join(diff)}); use another --out")
        old_grid = old.get("grid", {})
        new = record["grid"]
        record["grid"] = {k: list(dict.fromkeys([*old_grid.get(k, []), *new.get(k, [])])) for k in {**old_grid, **new}}
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_json(path, record)
    return record


def _make_config(d: dict[str, Any]) -> Any:
    from .config import TrainConfig

    return TrainConfig.from_dict(d).validate()


def run_sweep(
    base_config: Any,
    grid: Grid,
    sweep_dir: str | os.PathLike,
    train_fn: Callable[..., dict] | None = None,
    progress: bool = False,
    make_config: Callable[[dict[str, Any]], Any] = _make_config,
    lockstep: bool = False,
) -> list[dict[str, Any]]:
    """Run every point of ``grid`` into ``sweep_dir``; return the summaries in grid order.

    ``train_fn(config, out_dir, *, resume, progress)`` defaults to ``freezeout.experiment.trainer.train``;
    ``make_config`` turns a run's config dict into what ``train_fn`` takes (a ``TrainConfig``). ``lockstep``: each
    seed's runs train side by side, step by step, in this process (``experiment.lockstep``; ``train_fn`` unused).
    """
    specs = expand(grid)  # the grid is valid before the folder is created
    if train_fn is None:
        from .trainer import train as train_fn
    base_config = fit_base(base_config)
    check_shorter(base_config, grid)
    check_folder(sweep_dir, "sweep")  # a file, or another kind of run: refused before the lock creates anything
    with run_lock(sweep_dir):  # one sweep per folder; each run's folder is locked too, by the trainer and here
        record = prepare_sweep_dir(base_config, grid, sweep_dir)
        remove_stale_temps(Path(sweep_dir))
        bar = Display(len(specs), unit="run", leave=True) if progress else None  # a bar on a terminal only
        summaries = []
        try:
            if lockstep:
                from .lockstep import run_lockstep

                runs = [(spec.name, spec.seed, run_config(record["base_config"], spec)) for spec in specs]
                by_name = run_lockstep(runs, Path(sweep_dir), make_config, bar)
                summaries = [by_name[spec.name] for spec in specs]
            for spec in specs if not lockstep else ():
                summaries.append(_one_run(spec, record, Path(sweep_dir), train_fn, make_config, bar))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return summaries


def fit_base(base_config: Any) -> Any:
    """A ``TrainConfig`` base with its batch clipped to the training set (``config.fit_batch``), so that
    ``sweep.json`` and every run record the batch that runs, and a finished run is recognised as the grid's."""
    if not isinstance(base_config, TrainConfig):
        return base_config
    base_config = base_config.validate()
    fitted, line = fit_batch(base_config, train_examples(base_config))
    if line:
        log.warning("%s", line)
    return fitted


def _one_run(
    spec: RunSpec,
    record: dict[str, Any],
    sweep_dir: Path,
    train_fn: Callable[..., dict],
    make_config: Callable,
    bar: Any,
) -> dict[str, Any] | None:
    from .recover import ResumeError

    run_dir = sweep_dir / spec.name
    expected = run_config(record["base_config"], spec)
    with run_lock(run_dir):  # held from the status check to the end: nobody else may change the run meanwhile
        status = run_status(run_dir, expected)
        if bar is not None:
            bar.set_info(f"{spec.name} ({status})")
        if status == "finished":
            log.info("%s finished already: skipped", spec.name)
            return read_summary(run_dir, expected)
        if status == "new":
            clear_run(run_dir)  # the files of a run killed before its first checkpoint, or of another config
        log.info("%s: %s", spec.name, "resuming" if status == "interrupted" else "starting")
        config = make_config(expected)
        try:
            return train_fn(config, run_dir, resume=status == "interrupted", progress=False)
        except ResumeError as exc:  # a torn checkpoint, or files of another config: redo the run
            log.warning("%s cannot be resumed (%s): starting it over", spec.name, exc)
            clear_run(run_dir)
            return train_fn(config, run_dir, resume=False, progress=False)
