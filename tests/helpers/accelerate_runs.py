"""docs/RECIPES.md's accelerate block, run with the names it leaves to the user's script: in the test's process, and
as each rank of a real ``accelerate launch`` (``python tests/helpers/accelerate_runs.py OUT``, CPU, gloo)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

import freezeout
from tests.helpers import doc_blocks
from tests.helpers.models import TinyNet, batch

RECIPES = doc_blocks.ROOT / "docs" / "RECIPES.md"


def names(out_dir: Path, *, batches: int = 5, epochs: int = 3, accumulation: int = 2, **rest) -> dict:
    """The block's free names: a TinyNet without dropout (a resumed run draws no random numbers to differ in), a
    loader of ``batches`` fixed batches of 4, no resume unless ``resume_from`` and ``first_epoch`` are given."""
    torch.manual_seed(0)
    model = TinyNet()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    data = torch.utils.data.TensorDataset(*batch(0, n=4 * batches))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    given = dict(model=model, loader=loader, epochs=epochs, accumulation=accumulation, out_dir=str(out_dir),
                 resume_from=None, first_epoch=0)  # fmt: skip
    return {**given, **rest}


def run(out_dir: Path, **options) -> dict:
    block = doc_blocks.block(RECIPES, "accelerator.prepare(")
    return doc_blocks.run(block, "RECIPES.md:accelerate", **names(out_dir, **options))


@contextlib.contextmanager
def clock() -> Iterator[list[int]]:
    """FreezeOut's step count after each of its ``step()`` calls, whoever calls it."""
    seen: list[int] = []
    real = freezeout.FreezeOut.step

    def step(self, epoch=None):
        real(self, epoch)
        seen.append(self.step_count)

    freezeout.FreezeOut.step = step
    try:
        yield seen
    finally:
        freezeout.FreezeOut.step = real


def reset() -> None:
    """Forget accelerate's process-wide state (its Borg singletons), as a new process would start."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def rank_main(out: Path) -> None:
    """One rank: the block straight for 2 epochs of 8 batches (accumulation 2), then resumed from its epoch-0 state;
    what FreezeOut's clock did and the final weights, in ``out/rank{i}.pt``."""
    torch.set_num_threads(1)
    record = {}
    for name, resume in (("straight", None), ("resumed", out / "straight" / "epoch0")):
        options = {"resume_from": None if resume is None else str(resume), "first_epoch": 0 if resume is None else 1}
        with clock() as seen:
            ran = run(out / name, batches=8, epochs=2, **options)
        freeze, accelerator = ran["freeze"], ran["accelerator"]
        state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(ran["model"]).state_dict().items()}
        record[name] = {"clock": list(seen), "total": freeze.total_steps, "frozen": freeze.num_frozen,
                        "processes": accelerator.num_processes, "state": state}  # fmt: skip
        accelerator.wait_for_everyone()
    torch.save(record, out / f"rank{ran['accelerator'].process_index}.pt")


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
