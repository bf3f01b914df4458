"""A NaN image planted in chosen training batches, in-process (``plant``) or around the real CLI:
``python -m tests.nan_inject STEPS ARGS...`` runs ``freezeout ARGS`` with a NaN in the training batches whose
numbers are in STEPS (comma-separated, counted from 1 in this process). As the first NaN batch is drawn, the
checkpoint then on disk in ``--out`` is copied to ``checkpoint.at-nan`` (to compare with what is left after)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from freezeout.experiment.data.batches import Batches


def plant(steps: set[int], before_step: Callable[[int], None] | None = None) -> Callable:
    """A ``Batches.__iter__`` that puts NaN into one pixel of the training batches numbered in ``steps``;
    ``before_step(n)`` is called as training batch ``n`` is handed out (after step ``n - 1``)."""
    real = Batches.__iter__
    count = 0

    def iterate(self: Batches):
        nonlocal count
        for x, y in real(self):
            if self.train:
                count += 1
                if before_step is not None:
                    before_step(count)
                if count in steps:
                    x = x.clone()
                    x[0, 0, 0, 0] = float("nan")
            yield x, y

    return iterate


if __name__ == "__main__":
    from freezeout.cli import main

    steps = {int(s) for s in sys.argv[1].split(",") if s}
    argv = sys.argv[2:]
    out = Path(argv[argv.index("--out") + 1])

    def keep_checkpoint(n: int) -> None:
        if n == min(steps) and (out / "checkpoint.pt").exists():
            shutil.copyfile(out / "checkpoint.pt", out / "checkpoint.at-nan")

    Batches.__iter__ = plant(steps, keep_checkpoint)
    sys.exit(main(argv))
