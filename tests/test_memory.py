"""estimate and bench size their work before doing it: a batch that will not fit is refused in one line naming
one that does, before it is allocated; an allocator running out anywhere is one line; arguments are checked
before any work, and a divergence at a tiny t0 names its cause."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch

from freezeout.analysis import memory
from freezeout.analysis.memory import PROBES, SLACK, fit_batch, measure_peak, size_batch
from freezeout.cli import main
from tests.helpers.cifar_files import one_thread
from tests.helpers.processes import env

TINY = ["--depth", "10", "--growth", "1", "--input-size", "8"]
LIMIT = 3 * 2**30  # address space of the limited subprocesses: torch needs ~0.7 GiB of it


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def one_line(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def test_measure_peak_counts_the_bytes_alive_at_once():
    before = torch.zeros(10_000)  # existing tensors do not count

    def work():
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(2000, dtype=torch.float64)  # 16000
        del a
        c = torch.empty(500)  # 2000: a's 4000 are free by now
        return before.sum() + b.sum() + c.sum()

    assert measure_peak(work) == 4000 + 16000  # the peak: a and b together


def test_a_step_s_peak_is_linear_in_the_batch_and_the_fit_predicts_it():
    from freezeout.analysis.timing import make_optimizer, train_step
    from freezeout.experiment.models import build_example

    model, _ = build_example("densenet-bc", 10, 2, 10, (3, 8, 8), 1)
    layers = model.layers

    def step(b: int) -> None:
        x = torch.randn(b, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, layers)
        train_step(model, optimizer, x, torch.zeros(b, dtype=torch.long), torch.nn.functional.cross_entropy)
        optimizer.zero_grad(set_to_none=True)

    fixed, per = fit_batch({b: measure_peak(lambda b=b: step(b)) for b in PROBES})
    measured = measure_peak(lambda: step(64))
    assert measured == pytest.approx(fixed + per * 64, rel=0.05)
    assert per > 0 and fixed > 0  # activations grow with the batch; gradients and momentum do not


def test_the_refusal_names_the_largest_batch_that_fits():
    def work(b: int) -> None:  # 1000 bytes a step, 400 more per example, exactly
        measure = torch.empty(250 + 100 * b)
        del measure

    room = 100_000
    with pytest.raises(ValueError, match=r"^batch 10000 needs about .* more than the .* available: ") as info:
        size_batch(work, 10_000, available=room)
    fits = int(str(info.value).split("--batch-size ")[1].split()[0])
    assert SLACK * (1000 + 400 * fits) <= room < SLACK * (1000 + 400 * (fits + 1))
    assert size_batch(work, fits, available=room)["predicted_bytes"] <= room
    with pytest.raises(ValueError, match="not even batch 1 fits"):
        size_batch(work, 10_000, available=1000)


def test_estimate_and_bench_refuse_before_allocating_the_batch(capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 50 * 2**20)
    allocated = []
    empty = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *a, **k: allocated.append(a) or empty(*a, **k))
    for command in (["estimate", "--calibrate"], ["bench"]):
        line = one_line(capsys, [*command, *TINY, "--batch-size", "1000000"])
        assert "batch 1000000 needs about" in line and "50 MiB available: --batch-size " in line, line
    assert all(a[0] <= max(PROBES) for a in allocated), allocated  # only the probes' batches


def limited(*args: str) -> subprocess.CompletedProcess:
    """``freezeout *args`` in a process whose address space is limited to ``LIMIT`` bytes."""
    return subprocess.run(
        [sys.executable, "-m", "freezeout", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT)),
    )


@pytest.mark.slow  # real memory-limited processes: ~8 s
def test_a_memory_limited_process_refuses_instead_of_crashing():
    r = limited("estimate", "--calibrate", *TINY, "--input-size", "32", "--batch-size", "1000000")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "batch 1000000 needs about" in r.stderr and "or less fits" in r.stderr
    # nothing sizes a model's parameters: an allocator that runs out is one line too
    r = limited("train", "--depth", "10", "--growth", "4096", "--epochs", "1", "--out", "/nonexistent/x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "out of memory" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"),
        MemoryError(),
    ],
)
def test_out_of_memory_anywhere_is_one_line(capsys, monkeypatch, exc):
    import freezeout.cli.plot as plot

    def run(args):
        raise exc

    monkeypatch.setattr(plot, "run", run)
    line = one_line(capsys, ["plot", "--figure", "1", "--out", "x"])
    assert line.startswith("freezeout plot: error: out of memory (") and "smaller --batch-size" in line


def test_another_runtime_error_keeps_its_traceback(monkeypatch):
    import freezeout.cli.plot as plot

    def run(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(plot, "run", run)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["plot", "--figure", "1", "--out", "x"])


def test_bench_checks_out_before_the_benchmark(tmp_path, capsys, monkeypatch):
    import freezeout.analysis.bench as bench

    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    line = one_line(capsys, ["bench", *TINY, "--out", str(tmp_path)])
    assert f"--out {tmp_path} is a folder" in line
    (tmp_path / "file").write_text("")
    line = one_line(capsys, ["bench", *TINY, "--out", str(tmp_path / "file" / "r.json")])
    assert "not writable" in line
    assert "--curve-points" in one_line(capsys, ["bench", *TINY, "--curve-points", "-5"])


def test_a_tiny_t0_names_lr_over_t1_as_the_cause(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--depth", "10", "--growth", "1", "--epochs", "1", "--device", "cpu"]
    line = one_line(capsys, [*argv, "--no-progress", "--t0", "1e-9", "--out", str(tmp_path / "a")])
    assert "lr / t_1 = 0.1 / 1e-27 = 1e+26 (t_1 = t0 cubed) is the likely cause: raise --t0" in line, line
    assert "lower --lr" not in line
    line = one_line(capsys, [*argv, "--no-progress", "--t0", "1e-15", "--out", str(tmp_path / "b")])
    assert "lr / t_1 = 0.1 / 1e-45 = 1e+44 (t_1 = t0 cubed) overflows float32: raise --t0" in line, line
