"""The figures the docs quote are those of the files they name: docs/BENCHMARKS.md's table of current figures,
row by row, against its JSON sources, the README's quotes of them, the measurement log's table of the code before and
now against the stored files, and DISTRIBUTED.md's table of a torchrun training against a fresh run of the command
beside it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers.doc_blocks import ROOT

RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS, README = ROOT / "docs" / "BENCHMARKS.md", ROOT / "README.md"


def load(name: str) -> Any:
    path = ROOT / name if "/" in name else RESULTS / name
    return json.loads(path.read_text())


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def row(data: dict, name: str) -> dict:
    return next(r for r in data["rows"] if r["name"] == name)


PAPER_DEFAULT = "bench_paper_default_160steps.json"
HARDER = "bench_cubic_t0_0.5_40steps.json"
EARLIER_OVERHEAD = ("run1_40rounds", "run2_100rounds")


def paper_default() -> list[str]:
    d = load(PAPER_DEFAULT)
    fused, plain = row(d, "cubic-scaled-0.8-fused"), row(d, "cubic-scaled-0.8-plain")  # plain: the default
    base = d["baseline"]["runs_seconds"]
    repeats = " / ".join(f"{100 * (1 - r / b):.1f}" for r, b in zip(plain["runs_seconds"], base, strict=True))
    return [
        f"**{pct(plain['realized_saving'])}**",
        f"median of {len(base)} repeats: {repeats} %",
        f"{plain['realized_saving'] / plain['ideal_saving']:.2f} x the ideal",
        f"{pct(fused['realized_saving'])} with BatchNorm folding on",
    ]


def harder() -> list[str]:
    d = load(HARDER)
    plain, fused = row(d, "cubic-scaled-0.5-plain"), row(d, "cubic-scaled-0.5-fused")
    return [
        f"**{pct(plain['realized_saving'])}**",
        f"{plain['realized_saving'] / plain['ideal_saving']:.2f} x the ideal",
        f"{pct(fused['realized_saving'])} with folding on",
    ]


def sweep() -> list[str]:
    rows = load("docs/sweep/digits-L40/aggregate.json")["rows"]
    paper = next(r for r in rows if r["strategy"] == "cubic-scaled" and r["t0"] == 0.8)
    base = next(r for r in rows if r["strategy"] == "baseline")
    return [
        f"**{100 * paper['speedup_mean']:.1f} ± {100 * paper['speedup_std']:.1f} %**",
        f"{100 * paper['test_error_mean']:.2f} ± {100 * paper['test_error_std']:.2f} %",
        f"the baseline's {100 * base['test_error_mean']:.2f} %",
    ]


def cache() -> list[str]:
    bert, gpt2 = (load(f"cache_bench_{m}_120steps.json")["models"] for m in ("bert", "gpt2"))
    (bert,), (gpt2,) = bert.values(), gpt2.values()

    def speed(model: dict, t0: float) -> float:
        return next(r["speedup_cached"] for r in model["rows"] if r["t0"] == t0)

    ratios = [r["realized_over_bound"] for m in (bert, gpt2) for r in m["rows"]]
    return [
        f"**{speed(bert, 0.5):.2f}x / {speed(gpt2, 0.5):.2f}x**",
        f"t0 = 0.8: {speed(bert, 0.8):.2f}x / {speed(gpt2, 0.8):.2f}x",
        f"{bert['all_frozen']['ratio']:.2f}x / {gpt2['all_frozen']['ratio']:.2f}x of the uncached one",
        f"{min(ratios):.2f}-{max(ratios):.2f} of the zero-cost bound",
    ]


def sched_step() -> list[str]:
    d = load(PAPER_DEFAULT)
    s = d["sched_step"]
    return [
        f"{1e6 * s['seconds_per_call']:.1f} µs per call, {100 * s['fraction_of_step']:.4f} % of a baseline step",
        f"{100 * row(d, 'cubic-scaled-0.8-plain')['sched_step_fraction']:.2f} % of its training time",
    ]


def folded_forward() -> list[str]:
    timings = load("fused_forward_densenet-bc.json")["timings"]
    ratio = {(t["kind"], t["variant"]): t["ratio"] for t in timings if t["threads"] == 2}
    return [
        f"**{ratio['forward', 'fused']:.2f}x**",
        f"({ratio['forward', 'fold']:.2f}x the folds alone",
        f"a training step {ratio['step', 'fused']:.2f}x",
    ]


def compiled() -> list[str]:
    rows = load("compile_step_time.json")["rows"]
    ratios = " / ".join(f"{r['ratio']:.2f}" for r in rows)
    return [f"**{ratios}**", " / ".join(str(r["frozen"]) for r in rows)]


def communication() -> list[str]:
    ddp, fsdp = load("ddp_allreduce_bytes.json"), load("fsdp_comm_bytes_densenet-bc.json")["run_wire_bytes"]
    return [
        f"DDP + `rewrap_ddp` **{ddp['run_bytes_ratio']:.2f}**",
        f"FSDP2 as is {fsdp['fsdp'] / fsdp['ddp']:.2f}, "
        f"with `gather_frozen` **{fsdp['fsdp_gather'] / fsdp['ddp']:.2f}**",
    ]


def channels_last() -> list[str]:
    speed = {int(k): 1 / v for k, v in load("cpu_channels_last.json")["channels_last_over_nchw"].items()}
    return [f"**{speed[0]:.2f}x** faster", f"{min(speed.values()):.2f}-{max(speed.values()):.2f}x"]


def epoch() -> list[str]:
    d = load("epoch_time.json")
    return [f"about **{d['extrapolated_epoch_s'] / 60:.0f} minutes**", f"a median {d['median_step_s']:.2f} s per step"]


def by_hand() -> list[str]:
    d = load("frozen_overhead.json")
    ratio = {(r["model"], r["batch"], r["fuse"]): r["ratio"] for r in d["rows"]}

    def pair(model: str, batch: int) -> str:
        return f"{ratio[model, batch, False]:.2f} / {ratio[model, batch, True]:.2f} at batch {batch}"

    return [
        f"**{d['worst_ratio']:.2f} at most**",
        f"transformer {pair('transformer', 1)}, {pair('transformer', 32)}",
        f"ResNet-20 {pair('resnet', 1)}, {pair('resnet', 16)}",
        f"`sched.step()` {d['sched_step_us']:.1f} µs per call",
        f"{d['setup']['rounds']} alternated rounds",
        "two earlier runs of the script: worst "
        + " and ".join(f"{load(f'frozen_overhead_{run}.json')['worst_ratio']:.2f}" for run in EARLIER_OVERHEAD),
    ]


# Each row of the table of current figures whose source is a stored file: what it must say, from that file
STORED: dict[int, Callable[[], list[str]]] = {
    1: paper_default,
    2: harder,
    4: sweep,
    5: cache,
    6: folded_forward,
    7: sched_step,
    8: compiled,
    9: communication,
    10: channels_last,
    11: epoch,
    12: by_hand,
}


def current_rows() -> dict[int, str]:
    text = BENCHMARKS.read_text().split("## The current figures", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+) \|.*$", text, re.M)}


@pytest.mark.parametrize("number", sorted(STORED))
def test_each_current_figure_is_its_files(number):
    line = current_rows()[number]
    for said in STORED[number]():
        assert said in line, f"row {number} of BENCHMARKS.md should say {said!r}: {line}"


def test_the_rows_without_a_file_say_so_and_every_row_names_its_source():
    rows = current_rows()
    assert sorted(rows) == list(range(1, len(rows) + 1))
    for number, line in rows.items():
        source = line.rstrip(" |").rsplit(" | ", 1)[1]
        if number in STORED:
            assert re.search(r"`(benchmarks/results/|docs/sweep/)?[\w./{},-]+\.json`", source), (number, source)
        else:
            assert source.startswith("printed by the command"), (number, source)


def test_the_readme_quotes_the_current_figures():
    readme = README.read_text()
    for said in [*paper_default()[:1], *sweep(), *cache()[:1]]:
        assert said.strip("*") in readme, said
    assert PAPER_DEFAULT in readme and "cache_bench_bert_120steps.json" in readme


DDP_COMMAND = (
    "OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 \\\n"
    "        -m freezeout train --dataset digits --depth 22 --growth 12 --epochs 4 --t0 0.5 --device cpu --out /tmp/ddp"
)


@pytest.mark.slow  # a 2-rank torchrun training of 4 epochs: ~20 s
def test_the_distributed_pages_torchrun_table_is_what_its_command_prints(tmp_path):
    page = (ROOT / "docs" / "DISTRIBUTED.md").read_text()
    assert DDP_COMMAND in page
    table = page.split(DDP_COMMAND, 1)[1]
    shown = re.findall(r"^\| (\d+) \| (\d+) \| ([\d,]+) \| ([\d.]+) \| ([\d,]+) \| ([\d.]+)% \|$", table, re.M)
    assert len(shown) == 4
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "freezeout", "train", "--dataset", "digits", "--depth", "22", "--growth", "12", "--epochs", "4", "--t0",
               "0.5", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "ddp")]  # fmt: skip
    r = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    params = 285_016
    ran = [
        (str(e["epoch"]), str(e["num_frozen"]), f"{round(e['allreduce_bytes_per_step']):,}",
         f"{e['allreduce_bytes_per_step'] / params:.2f}", f"{e['trainable_bytes']:,}",
         f"{100 * e['test_accuracy']:.1f}")
        for e in records
    ]  # fmt: skip
    assert ran == shown


def test_the_logs_before_and_now_table_is_what_bench_compare_prints():
    """The dated log entry that sets the code before beside the code now: its table from the stored files."""
    r = subprocess.run([sys.executable, "benchmarks/bench_compare.py"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    printed = {line.split(":")[0].split()[0] + " " + line.split(":")[0].split()[-1]: line.split(": ", 1)[1]
               for line in r.stdout.splitlines() if " folding " in line}  # fmt: skip
    log = BENCHMARKS.read_text().split("**The paper's setting, the code before and now.**", 1)[1]
    table = re.findall(
        r"^\| (before|now) \| (on|off)[^|]* \| ([^|]+) \| ([^|]+) \| ([\d.]+) % \| ([^|]+) \|$", log, re.M
    )
    assert len(table) == 4
    for version, fuse, repeats, medians, trimmed, frozen in table:
        cells = [c.strip() for c in printed[f"{version} {fuse}"].split("|")]
        assert repeats.replace(",", " /").split() == cells[0].split(), (version, fuse)
        assert medians.replace(" %", "").strip() == cells[1], (version, fuse)
        assert f"(mean {trimmed} %)" in cells[2] and frozen.strip() == cells[4], (version, fuse)
