"""A sweep's aggregate as a Markdown table, mean ± std over seeds: what docs/STUDY.md shows, regenerated from the
sweep's files by ``freezeout sweep`` (at its end) or ``freezeout plot --sweep`` (``aggregate.md``)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["markdown_table"]


def _cell(mean: Any, std: Any, scale: float, digits: int, sign: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    value = scale * mean
    value = 0.0 if abs(value) < 0.5 * 10**-digits else value  # no "-0.00"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return text
    return f"{text} ± {scale * std:.{digits}f}"


def markdown_table(table: dict[str, Any]) -> str:
    """The rows of an aggregate table (``aggregate.aggregate``) as Markdown. Errors in percent, bits per byte as
    they are; *time saved* against the same seed's baseline; *vs baseline* and *vs equal time*: the metric minus
    the baseline's, and minus the equal-time baseline's (``experiment.equal_time``); negative is better."""
    metric = table.get("metric", "test_error")
    error = metric.endswith("error")
    scale, digits = (100.0, 2) if error else (1.0, 3)
    name = "test error %" if error else "bits per byte"
    head = ["strategy", "t0", "steps", "n", name, "time saved %", "vs baseline", "rel. %", "equal-time baseline"]
    lines = ["| " + " | ".join([*head, "vs equal time"]) + " |", "|---|" + "---:|" * len(head)]
    for r in table["rows"]:
        m = r.get
        cells = [
            r["strategy"],
            "1" if r["strategy"] in ("baseline", "shorter") else f"{r['t0']:g}",
            f"{m('fraction', 1.0):.0%}",
            str(r["n"]),
            _cell(m(f"{metric}_mean"), m(f"{metric}_std"), scale, digits),
            _cell(m("speedup_mean"), m("speedup_std"), 100.0, 1),
            _cell(m("error_increase_mean"), m("error_increase_std"), scale, digits, sign=True),
            _cell(m("rel_error_mean"), m("rel_error_std"), 100.0, 1, sign=True),
            _cell(m("equal_time_mean"), m("equal_time_std"), scale, digits),
            _cell(m("vs_equal_time_mean"), m("vs_equal_time_std"), scale, digits, sign=True),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
