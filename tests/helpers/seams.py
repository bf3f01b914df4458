"""``python tests/helpers/seams.py [--pause S] [--dump DIR] COMMAND ...``: the ``freezeout`` command with the test
seams of the package set, for the tests that need a real process (killed, raced, under torchrun).

``--pause S``: every atomic write waits ``S`` seconds between its temp file and its rename, after logging
``test pause: writing NAME, ...`` to stderr (a kill -9 then lands inside the write). ``--dump DIR``: every rank
saves its final model state to ``DIR/rank<R>.pt``. The package reads neither: both replace a no-op seam.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SCRIPT = str(Path(__file__).resolve())


def pausing(seconds: float):
    def before_replace(path: Path) -> None:
        print(f"test pause: writing {path.name}, {seconds:.2f} s before it is replaced", file=sys.stderr, flush=True)
        time.sleep(seconds)

    return before_replace


def dumping(folder: str):
    def finished(model, launch) -> None:
        import torch

        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(folder, f"rank{launch.rank}.pt"))

    return finished


def main(argv: list[str]) -> int:
    import freezeout
    from freezeout.cli import main as command
    from freezeout.experiment import runfiles, session

    while argv and argv[0] in ("--pause", "--dump"):
        option, value, argv = argv[0], argv[1], argv[2:]
        if option == "--pause":
            runfiles._before_replace = pausing(float(value))
        else:
            session._finished = dumping(value)
    sys.argv = [str(Path(freezeout.__file__).with_name("__main__.py")), *argv]  # as `python -m freezeout` has it
    return command(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
