"""Figures 1 and 2: their data against the schedule formulas and the aggregate, and valid PNG files."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("matplotlib", reason="freezeout plot needs the [plot] extra")

from test_aggregate import sweep_dir  # noqa: F401  (fixture: hand-made summaries)

from freezeout.experiment.aggregate import aggregate
from freezeout.experiment.plot import figure1_data, figure2_data, plot_figure1, plot_figure2
from freezeout.schedule import STRATEGIES

PNG = b"\x89PNG\r\n\x1a\n"


def closed_form(t, t_i, lr, scaled):
    """The paper's Eq. 1 with the authors' 1/2, written out independently of freezeout.schedule."""
    if t >= t_i:
        return 0.0
    return 0.5 * (lr / t_i if scaled else lr) * (1 + math.cos(math.pi * t / t_i))


def test_figure1_data_is_the_schedule():
    data = figure1_data(n_layers=5, t0=0.5, base_lr=0.1, points=101)
    assert list(data) == list(STRATEGIES)
    for strategy, d in data.items():
        cubic, scaled = strategy.startswith("cubic"), strategy.endswith("-scaled")
        times = [(0.5 + 0.5 * i / 5) ** (3 if cubic else 1) for i in range(5)]
        assert d["times"] == pytest.approx(times)
        assert len(d["layers"]) == 5 and d["t"][0] == 0 and d["t"][-1] == 1
        for curve, t_i in zip(d["layers"], times):
            assert curve == pytest.approx([closed_form(t, t_i, 0.1, scaled) for t in d["t"]])
        assert d["rest"] == pytest.approx([closed_form(t, 1.0, 0.1, False) for t in d["t"]])
    # scaled: the first layer starts at lr / t_1; unscaled: every layer starts at the base LR
    assert data["linear-scaled"]["layers"][0][0] == pytest.approx(0.1 / 0.5)
    assert data["cubic-scaled"]["layers"][0][0] == pytest.approx(0.1 / 0.125)
    assert [c[0] for c in data["cubic-unscaled"]["layers"]] == pytest.approx([0.1] * 5)


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 1000


def test_figure1_png(tmp_path):
    path = plot_figure1(tmp_path / "sub" / "figure1.png")
    assert is_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["figure1.png"]  # no temp file left


def test_figure2_data_and_png(sweep_dir, tmp_path):  # noqa: F811
    table = aggregate(sweep_dir, paper=False)
    data = figure2_data(table)
    assert data["baseline"] == {"error": pytest.approx(15.0), "error_std": pytest.approx(10 / math.sqrt(2))}
    assert set(data["strategies"]) == {"cubic-scaled", "linear-unscaled"}
    c = data["strategies"]["cubic-scaled"]
    assert c["t0"] == [0.5] and c["speedup"] == [pytest.approx(27.5)] and c["error"] == [pytest.approx(28.0)]
    assert data["strategies"]["linear-unscaled"]["error_std"] == [0.0]  # one seed: no spread drawn
    assert is_png(plot_figure2(tmp_path / "figure2.png", table))


def test_figure2_points_in_order_of_speedup(sweep_dir, tmp_path):  # noqa: F811
    table = aggregate(sweep_dir, paper=False)
    row = next(r for r in table["rows"] if r["strategy"] == "cubic-scaled")
    table["rows"].append({**row, "t0": 0.9, "speedup_mean": 0.05})
    table["rows"].append({**row, "t0": 0.7, "speedup_mean": 0.15})
    assert figure2_data(table)["strategies"]["cubic-scaled"]["t0"] == [0.9, 0.7, 0.5]


def test_figure2_needs_freezeout_runs(tmp_path):
    table = {"rows": [{"strategy": "baseline", "test_error_mean": 0.1, "test_error_std": 0.0}]}
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_figure2(tmp_path / "f.png", table)
    assert not (tmp_path / "f.png").exists()
