"""The demo: the baseline and the paper's recommended FreezeOut on the embedded digits, trained in lockstep.

Two runs that follow each other see different phases of a shared machine's speed, which drifts over tens of
seconds (docs/BENCHMARKS.md, "Notes behind the defaults"): two ``make demo`` in a row disagreed. Here the two
runs step in lockstep (``analysis.runs.lockstep``: step ``s`` of one, then of the other, in one process), so
that each step of FreezeOut is timed within milliseconds of the baseline's; the evaluations run between epochs,
outside the timing. The saving is the ratio of their training seconds, with its spread over the epochs, and
the epochs before FreezeOut's first freeze, where both do the same work, say how far two equal runs differ.

The folder holds ``demo.json`` (written at the start, and with the results at the end) and one trainer run
folder per run (``baseline/``, ``freezeout/``: their ``metrics.jsonl`` has a line per epoch, ``"lockstep":
true`` where the epoch was timed beside the other's). An interrupted demo continues where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..analysis.runs import lockstep
from ..schedule import freeze_times, num_frozen_at
from .config import TrainConfig, config_differences
from .folders import DEMO_FILE, check_folder
from .launch import SingleProcess, launch_from_env
from .lock import run_lock
from .progress import Display, StepClock, epoch_fields, plural
from .recover import read_jsonl
from .runfiles import CHECKPOINT, METRICS, SUMMARY, atomic_json, read_json, remove_stale_temps
from .session import Notify, Session, note
from .trainer import open_run

__all__ = ["DEMO", "RUNS", "lockstep_saving", "run_demo", "table"]

# About a minute for both runs on one CPU core, ~99% test accuracy: depth 40 = 6 dense layers per block
# (21 freezable layers), k = 12, 20 epochs of 30 steps on the 8 x 8 digits.
DEMO: dict[str, Any] = {"dataset": "digits", "depth": 40, "growth": 12, "epochs": 20, "batch_size": 50}
RUNS = (("baseline", {"t0": 1.0}), ("freezeout", {"t0": 0.8, "schedule": "cubic", "scale_lr": True}))


def lockstep_saving(baseline: list[dict], freezeout: list[dict], alike: set[int] | None = None) -> dict[str, Any]:
    """FreezeOut's saving from the two runs' ``metrics.jsonl`` records: over the epochs both timed in lockstep
    (``"lockstep": true``), ``1 -`` the ratio of their summed training seconds; each such epoch's own saving,
    and their range and median. ``alike``: the epochs in which both ran the same work (nothing frozen yet):
    their savings, zero but for the noise of the timing, are listed apart as the noise floor, and give
    ``saving_noise``, the standard error of ``saving`` that such noise makes (``None`` with fewer than 2)."""
    by_epoch = {r["epoch"]: r for r in freezeout if r.get("lockstep") is True}
    pairs = [(b["epoch"], b["epoch_seconds"], by_epoch[b["epoch"]]["epoch_seconds"])
             for b in baseline if b.get("lockstep") is True and b["epoch"] in by_epoch]  # fmt: skip
    pairs.sort()
    out: dict[str, Any] = {"epochs": [e for e, _, _ in pairs]}
    out["baseline_seconds"], out["freezeout_seconds"] = [b for _, b, _ in pairs], [f for _, _, f in pairs]
    savings = [1.0 - f / b for _, b, f in pairs]
    out["epoch_savings"] = savings
    out["saving"] = 1.0 - sum(out["freezeout_seconds"]) / sum(out["baseline_seconds"]) if pairs else None
    for name, fn in (("min", min), ("median", statistics.median), ("max", max)):
        out[f"epoch_saving_{name}"] = fn(savings) if savings else None
    out["alike_epochs"] = [e for e, *_ in pairs if alike is not None and e in alike]
    out["alike_savings"] = [s for (e, *_), s in zip(pairs, savings) if e in out["alike_epochs"]]
    # The saving's own noise: an epoch's saving is off by its noise times its baseline seconds, in the sum, so
    # with the spread of the alike epochs (whose true saving is 0) as every epoch's, the ratio of the sums is
    # off by that spread x sqrt(sum of B_e squared) / sum of B_e (a standard error; 1 / sqrt(n) for equal epochs).
    base = out["baseline_seconds"]
    noisy = len(out["alike_savings"]) >= 2
    spread = statistics.stdev(out["alike_savings"]) if noisy else None
    out["saving_noise"] = spread * math.sqrt(sum(b * b for b in base)) / sum(base) if noisy else None
    return out


def table(result: dict[str, Any]) -> str:
    """The demo's result as a small table: training seconds in lockstep, saving, test accuracy."""
    runs, lock = result["runs"], result["lockstep"]
    lines = [f"{'run':<34} {'train s':>8} {'saving':>8} {'test acc':>9}"]
    for name, s in runs.items():
        c = s["config"]
        what = "baseline (cosine, t0=1)" if name == "baseline" else f"FreezeOut ({c['schedule']}, scaled, t0={c['t0']})"
        seconds = sum(lock[f"{name}_seconds"])
        saving = "-" if name == "baseline" or lock["saving"] is None else f"{lock['saving']:.1%}"
        lines.append(f"{what:<34} {seconds:>8.1f} {saving:>8} {s['test_accuracy']:>9.2%}")
    return "\n".join(lines)


def _alike_epochs(summary: dict[str, Any]) -> set[int]:
    """The epochs in which the FreezeOut run of ``summary`` had no layer frozen in any of its steps."""
    c, total, per = summary["config"], summary["total_steps"], summary["steps_per_epoch"]
    times = freeze_times(summary["num_layers"], c["t0"], c["schedule"])
    return {e for e in range(1, summary["epochs"] + 1) if num_frozen_at(e * per - 1, total, times) == 0}


def _line(records: dict[str, dict], sessions: dict[str, Session]) -> str:
    """Both runs' epoch in one line, and its saving."""
    epoch, epochs = next(iter(records.values()))["epoch"], next(iter(sessions.values())).run.config.epochs
    parts = [f"epoch {epoch}/{epochs}:"]
    for name, r in records.items():
        parts.append(f"{name} {epoch_fields(r, len(sessions[name].run.layers), frozen=name != 'baseline')} |")
    b, f = (r["epoch_seconds"] for r in records.values())
    return " ".join(parts) + f" saving {1 - f / b:.1%}"


def _lockstep_epoch(sessions: dict[str, Session], display: Display | None, clocks: list[StepClock]) -> dict[str, dict]:
    """The next epoch of every session, their steps interleaved; each then evaluated and written."""
    runs = list(sessions.values())
    steps = {s.run.steps_per_epoch for s in runs}
    if len(steps) != 1:
        raise ValueError(f"runs in lockstep need one number of steps per epoch, got {sorted(steps)}")
    gens = [s.epoch_steps() for s in runs]
    frozen = [0] * len(runs)

    def before(i: int) -> None:
        frozen[i] = runs[i].run.sched.num_frozen

    def after(i: int, seconds: float) -> None:
        clocks[i].observe(frozen[i], seconds)
        if display is not None:
            left = [c.remaining(s.run.sched.step_count, s.epoch) for c, s in zip(clocks, runs)]
            display.update(1, None if None in left else sum(left))

    seconds = lockstep([gen.__next__ for gen in gens], steps.pop(), runs[0].run.device, before=before, after=after)
    for gen in gens:
        gen.close()  # suspended after its last step: nothing is left to run in it
    records = {}
    for i, (name, s) in enumerate(sessions.items()):
        records[name] = s.end_epoch(sum(seconds[i]), lockstep=True)
        clocks[i].eval_seconds = records[name]["eval_seconds"]
    return records


def _warm_up(sessions: dict[str, Session]) -> None:
    """One untimed forward and backward of a copy of each model on random data: the process's first-call costs
    (thread pools, kernel choices, the allocator's first blocks) would otherwise land in the first run's first
    step, a saving that is not FreezeOut's. Copies and a generator of their own: the runs are left as they were."""
    g = torch.Generator().manual_seed(0)
    for s in sessions.values():
        run, batches = s.run, s.run.train_batches
        x = torch.randn((batches.batch_size, *batches.x.shape[1:]), generator=g).to(run.device)
        x = x.contiguous(memory_format=batches.memory_format)
        model = copy.deepcopy(run.model)
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long, device=run.device)).backward()


def _train_all(sessions: dict[str, Session], partners: int, progress: bool, notify: Notify | None) -> None:
    """Every epoch left of the sessions, in lockstep when all ``partners`` (the demo's runs, finished ones too)
    are at one epoch. A run behind (a kill between their two checkpoints) first catches up alone: that epoch is
    timed alone, and left out of the saving."""
    runs = list(sessions.values())
    total, done = sum(s.run.total_steps for s in runs), sum(s.run.sched.step_count for s in runs)
    display = Display(total, done) if progress else None
    clocks = [s.clock() for s in runs]
    _warm_up(sessions)
    try:
        while not all(s.done for s in runs):
            behind = min(s.epoch for s in runs)
            lagging = {n: s for n, s in sessions.items() if s.epoch == behind}
            if len(lagging) < partners:
                for name, s in lagging.items():
                    note(notify, f"{name} catches up epoch {behind + 1} alone (timed alone: not in the saving)")
                    s.end_epoch(s.train_epoch(), lockstep=False)
                    if display is not None:
                        display.update(s.run.steps_per_epoch)
                continue
            records = _lockstep_epoch(sessions, display, clocks)
            if display is not None:
                display.note(_line(records, sessions))
    finally:
        if display is not None:
            display.close()


def _saved_configs(out: Path) -> tuple[bool, dict[str, Any]] | None:
    """Whether the demo in ``out`` finished, and its runs' configs (``demo.json`` holds them from its start);
    ``None`` where there is none, or none readable (the runs' own checks then decide)."""
    try:
        saved = read_json(out / DEMO_FILE)
    except ValueError:
        return None
    if not isinstance(saved, dict):
        return None
    finished = saved.get("finished") is True
    runs = saved.get("runs") if finished else saved.get("configs")
    if not isinstance(runs, dict):
        return None
    configs = {n: (r.get("config") if finished else r) for n, r in runs.items() if isinstance(r, dict)}
    return finished, {n: c for n, c in configs.items() if isinstance(c, dict)}


def _demo_words(config: dict[str, Any], shown: tuple[str, ...]) -> str:
    """``3 epochs`` or ``3 epochs, seed 1``: the settings of a demo a user may give, those in ``shown``."""
    return plural(config["epochs"], "epoch") + (f", seed {config['seed']}" if "seed" in shown else "")


def _check_existing(out: Path, configs: dict[str, TrainConfig], notify: Notify | None) -> None:
    """A demo already in ``out``: one asked with other settings is refused, saying what to do; a finished one is
    shown, saying so."""
    found = _saved_configs(out) if (out / DEMO_FILE).is_file() else None
    if found is None:
        return
    finished, saved = found
    for name, config in configs.items():
        if name not in saved:
            continue
        differ = config_differences(saved[name], config.to_dict())
        if not differ:
            continue
        old = {**TrainConfig().to_dict(), **saved[name]}
        fields = {d.split(":")[0] for d in differ}
        if fields <= {"epochs", "seed"}:
            shown = ("epochs", "seed") if "seed" in fields else ("epochs",)
            same = " ".join(f"--{k} {old[k]}" for k in ("epochs", "seed") if k in fields)
            verb = "see" if finished else "continue"
            raise ValueError(
                f"{out} holds a demo of {_demo_words(old, shown)}: choose another --out for one of "
                f"{_demo_words(config.to_dict(), shown)} (or give {same} to {verb} that one)"
            )
        raise ValueError(f"{out} holds a demo with other settings ({'; '.join(differ)}): choose another --out")
    if finished:
        note(notify, f"{out} holds a finished demo: showing its result (choose another --out to train a new one)")


def run_demo(
    out: str | os.PathLike, epochs: int, seed: int, progress: bool = False, notify: Notify | None = None
) -> dict[str, Any]:
    """Train both runs into ``out/<name>`` in lockstep (an interrupted demo continues, a finished one is read
    back) and write ``out/demo.json``; returns its content: ``runs`` (each run's summary) and ``lockstep``
    (``lockstep_saving``). ``progress``: a bar on a terminal and a line per epoch; ``notify``: see ``train``."""
    if launch_from_env().world_size > 1:
        raise ValueError("the demo trains in one process: run it without torchrun")
    out = Path(out)
    base = {**DEMO, "epochs": epochs, "seed": seed, "device": "cpu"}
    configs = {name: TrainConfig(**base, **opts).validate() for name, opts in RUNS}
    check_folder(out, "demo")
    threads = torch.get_num_threads()
    # One thread: ops this small gain nothing from intra-op parallelism, and on a busy machine OpenMP
    # barriers wait for descheduled threads (docs/BENCHMARKS.md, "Notes behind the defaults").
    torch.set_num_threads(1)
    try:
        with run_lock(out), contextlib.ExitStack() as held:  # one demo per folder; each run's is locked too
            check_folder(out, "demo")
            _check_existing(out, configs, notify)
            remove_stale_temps(out)
            if not (out / DEMO_FILE).is_file():  # the folder's kind, from the start (folders.py)
                started = {n: c.to_dict() for n, c in configs.items()}
                atomic_json(out / DEMO_FILE, {"finished": False, "configs": started})
            opened = {}
            for name, config in configs.items():
                resume = (out / name / CHECKPOINT).exists() or (out / name / SUMMARY).exists()
                opened[name] = held.enter_context(
                    open_run(config, out / name, resume=resume, launch=SingleProcess(), notify=notify)
                )
            sessions = {n: s for n, s in opened.items() if isinstance(s, Session)}
            _train_all(sessions, len(opened), progress, notify)
            runs = {n: s if isinstance(s, dict) else s.finish() for n, s in opened.items()}
        records = {n: read_jsonl(out / n / METRICS)[0] for n in runs}
        alike = _alike_epochs(runs["freezeout"])
        result = {"finished": True, "runs": runs, "lockstep": lockstep_saving(*records.values(), alike)}
        atomic_json(out / DEMO_FILE, result)
    finally:
        torch.set_num_threads(threads)
    return result
