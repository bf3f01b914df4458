"""What a long run shows while it works: a progress bar whose ETA knows the schedule, and one line per epoch.

tqdm's ETA is a moving average of the step rate, so under FreezeOut it overestimates more and more as layers
freeze (the demo's steps go from 15 to 50 per second). Here the remaining time is the measured step time,
carried forward over the layers still to freeze: the controller's schedule says which step runs with how many
layers frozen, and a frozen layer is taken to cost a third of a training one (its forward, without the backward
of about twice that: the paper's assumption behind Eq. 2). The measured steps keep it honest: each is brought
back to what it would have cost with nothing frozen, and their recent median is what is carried forward.

The bar shows only on a terminal. Written to a file or a pipe, a bar's carriage returns would each land in the
log, so there the epoch lines alone are written.
"""

from __future__ import annotations

import bisect
import statistics
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, TextIO

from ..schedule import num_frozen_at

__all__ = [
    "ANNOUNCE",
    "ESTIMATE_AFTER",
    "FROZEN_COST",
    "LONG_RUN",
    "Display",
    "StepClock",
    "duration",
    "epoch_fields",
    "epoch_line",
    "estimate_line",
    "freeze_steps",
    "plural",
    "relative_step_cost",
    "remaining_seconds",
]

FROZEN_COST = 1 / 3  # a frozen layer's step cost over a training one's: forward only (backward ~ 2 forwards)
RECENT = 25  # steps whose median is the step time carried forward: a stall moves it little, drift soon shows
REFRESH = 0.5  # seconds between ETA updates of the bar (tqdm redraws at most every 0.1 s anyway)
# A run is estimated up front once this many steps are measured: the first step pays one-off costs, and the median
# of a few is a fair guess, shown within seconds of the start.
ESTIMATE_AFTER = 5
ANNOUNCE = 60.0  # seconds: a shorter run is not announced, it ends about when the line would be read
LONG_RUN = 600.0  # seconds: a run longer than this also says how to stop it, resume it, or look quicker


def relative_step_cost(frozen: int, num_layers: int) -> float:
    """A step's cost with ``frozen`` of ``num_layers`` layers frozen, over its cost with none frozen."""
    if not 0 <= frozen <= num_layers or num_layers < 1:
        raise ValueError(f"frozen must be in [0, num_layers = {num_layers}] with num_layers >= 1, got {frozen}")
    return 1.0 - (1.0 - FROZEN_COST) * frozen / num_layers


def freeze_steps(total_steps: int, times: Sequence[float]) -> list[int]:
    """For each layer that freezes, the number of steps done when it is frozen (the controller's ``num_frozen``
    after that many ``step()`` calls counts it), found on ``schedule.num_frozen_at`` itself."""
    out = []

    def frozen(steps: int) -> int:
        return num_frozen_at(steps, total_steps, times)

    for layer in range(len(times)):
        # the first step count at which more than `layer` layers are frozen; total_steps + 1: never
        first = bisect.bisect_left(range(total_steps + 1), layer + 1, key=frozen)
        if first > total_steps:
            break
        out.append(first)
    return out


def remaining_seconds(
    step: int, total_steps: int, frozen_at: Sequence[int], unfrozen_step_seconds: float, num_layers: int
) -> float:
    """Seconds for the steps after the first ``step`` of ``total_steps``: each at ``unfrozen_step_seconds`` (a
    step's time with nothing frozen) times ``relative_step_cost`` of the layers frozen when it runs.
    ``frozen_at``: ``freeze_steps``' result (layer ``i`` is frozen in the steps after the first ``frozen_at[i]``).
    """
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must be in [0, total_steps = {total_steps}], got {step}")
    if len(frozen_at) > num_layers:
        raise ValueError(f"frozen_at has {len(frozen_at)} entries, more than num_layers = {num_layers}")
    # segments of steps with a constant number of layers frozen: [bounds[k], bounds[k + 1]) runs with k frozen
    bounds = [0, *frozen_at, total_steps]
    cost = 0.0
    for frozen in range(len(bounds) - 1):
        lo, hi = max(bounds[frozen], step), bounds[frozen + 1]
        if hi > lo:
            cost += (hi - lo) * relative_step_cost(frozen, num_layers)
    return cost * unfrozen_step_seconds


class StepClock:
    """A run's measured steps and the ETA they give (``remaining_seconds``), plus its evaluations still to come."""

    def __init__(self, total_steps: int, times: Sequence[float], epochs: int) -> None:
        self.total_steps, self.num_layers, self.epochs = total_steps, len(times), epochs
        self.frozen_at = freeze_steps(total_steps, times)
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.eval_seconds = 0.0  # the last evaluation's: one per epoch still to end

    def observe(self, frozen: int, seconds: float) -> None:
        """One step that ran with ``frozen`` layers frozen and took ``seconds``."""
        self.recent.append(seconds / relative_step_cost(frozen, self.num_layers))

    def remaining(self, step: int, epochs_done: int) -> float | None:
        """Seconds left after ``step`` steps and ``epochs_done`` evaluations; ``None`` before any step is measured."""
        if not self.recent:
            return None
        base = statistics.median(self.recent)
        left = remaining_seconds(step, self.total_steps, self.frozen_at, base, self.num_layers)
        return left + (self.epochs - epochs_done) * self.eval_seconds


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 epoch``, ``2 epochs`` (``many``: a plural not made with an s)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def duration(seconds: float) -> str:
    """A span in words, as precise as a reader needs: ``45 s``, ``7 min 02 s``, ``1 h 07 min``."""
    total = max(0, round(seconds))
    h, rest = divmod(total, 3600)
    if h:
        return f"{h} h {rest // 60:02d} min"
    return f"{rest // 60} min {rest % 60:02d} s" if rest >= 60 else f"{rest} s"


def estimate_line(seconds: float, steps: int, total_steps: int, epochs: int, device: str) -> str:
    """The run's length said up front: ``seconds`` for its ``steps`` still to run (of ``total_steps`` over
    ``epochs``) on ``device``; a long run says how to stop and continue it, and where a quick look is."""
    what = f"this run's {plural(steps, 'step')}" if steps == total_steps else f"the {plural(steps, 'step')} left"
    line = f"about {duration(seconds)} for {what} ({plural(epochs, 'epoch')} in all) on {device}, from its first steps"
    if seconds >= LONG_RUN:
        line += (
            "; Ctrl-C stops it, and the same command with --resume continues after its last finished epoch (fewer "
            "--epochs or a smaller --depth make a shorter run; `freezeout demo` compares FreezeOut with the baseline "
            "in about a minute)"
        )
    return line


def _interval(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Display:
    """A bar on a terminal (tqdm), with the schedule's ETA, and lines that survive it (``note``). Off a
    terminal, no bar: only the lines. ``stream``: where both go (stderr by default); ``leave``: the bar stays
    when it closes (a sweep's, whose runs print no lines of their own)."""

    def __init__(
        self, total: int, initial: int = 0, stream: TextIO | None = None, unit: str = "step", leave: bool = False
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.bar: Any = None
        self.info, self.eta, self.shown = "", "", 0.0
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm import tqdm  # only when a bar shows

            fmt = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
            self.bar = tqdm(total=total, initial=initial, unit=unit, file=self.stream, dynamic_ncols=True,
                            leave=leave, bar_format=fmt)  # fmt: skip

    def set_info(self, text: str) -> None:
        """What the bar shows after its ETA (epoch, loss, frozen), drawn at once: it changes seldom."""
        self.info = text
        self._postfix(refresh=True)

    def update(self, n: int = 1, remaining: float | None = None) -> None:
        """``n`` steps done; ``remaining``: the ETA in seconds, where known (drawn at most every ``REFRESH`` s)."""
        if self.bar is None:
            return
        now = time.monotonic()
        if remaining is not None and now - self.shown >= REFRESH:
            self.shown, self.eta = now, f"eta {_interval(remaining)}"
            self._postfix()
        self.bar.update(n)

    def _postfix(self, refresh: bool = False) -> None:
        if self.bar is not None:
            text = ", ".join(t for t in (self.eta, self.info) if t)
            self.bar.set_postfix_str(text, refresh=refresh)

    def note(self, line: str) -> None:
        """One line above the bar (the bar redraws below it); the line alone off a terminal."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _accuracy(record: dict[str, Any]) -> str:
    """The test (and validation) accuracy, or a language model's bits per byte, its metric."""
    parts = []
    for name in ("test", "val"):
        if f"{name}_bpb" in record:
            parts.append(f"{name} {record[f'{name}_bpb']:.3f} bits/byte")
        elif f"{name}_accuracy" in record:
            parts.append(f"{name} acc {record[f'{name}_accuracy']:.2%}")
    return ", ".join(parts)


def epoch_fields(record: dict[str, Any], num_layers: int, *, frozen: bool = True) -> str:
    """An epoch's record in words: loss, test (and validation) accuracy, layers frozen, training seconds."""
    parts = [f"loss {record['train_loss']:.4f}", _accuracy(record)]
    if frozen:
        parts.append(f"frozen {record['num_frozen']}/{num_layers}")
    parts.append(f"{record['epoch_seconds']:.1f} s")
    return ", ".join(p for p in parts if p)


def epoch_line(record: dict[str, Any], epochs: int, num_layers: int) -> str:
    """One epoch's record as a line: ``epoch 3/20: loss 0.4120, test acc 95.33%, frozen 4/21, 2.1 s``."""
    return f"epoch {record['epoch']}/{epochs}: {epoch_fields(record, num_layers)}"
