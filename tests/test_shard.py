"""The per-rank training data under torchrun: ``Run`` builds ``Batches(shard=(rank, world))`` per process.

Built as ``engine.Run`` builds it for a launch (no process group is needed for that), with labels
``arange(N)`` so every example is identified by its label, and the digits augmentation (crops) plus
flips, so the images show that each rank also draws the single process's augmentation.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from freezeout.experiment.config import TrainConfig
from freezeout.experiment.data import Batches, Dataset
from freezeout.experiment.engine import Run
from freezeout.experiment.launch import Launch, SingleProcess, Torchrun

N, GLOBAL_BATCH, WORLD, EPOCHS = 11, 4, 2, 2  # N odd: the pass does not split evenly across the ranks
STEPS = -(-N // GLOBAL_BATCH)  # 3: the last global batch is partial (3 examples)
LAST = STEPS - 1


def dataset() -> Dataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (N, 1, 8, 8), dtype=torch.uint8, generator=g)
    return Dataset("arange", x, torch.arange(N), x[:2], torch.arange(2), N, pad=1, flip=True)


def passes(launch: Launch) -> tuple[Run, list[list[tuple[torch.Tensor, list[int]]]]]:
    """The run and the (images, labels) of every step of ``EPOCHS`` passes, as the trainer's rank would see them."""
    config = TrainConfig(depth=10, growth=2, batch_size=GLOBAL_BATCH, epochs=EPOCHS, device="cpu", seed=3)
    run = Run(config, dataset(), torch.device("cpu"), launch)
    return run, [[(x.clone(), y.tolist()) for x, y in run.train_batches] for _ in range(EPOCHS)]


@pytest.fixture(scope="module")
def runs():
    single = passes(SingleProcess())
    ranks = [passes(Torchrun(rank, WORLD, rank)) for rank in range(WORLD)]
    return single, ranks


def test_each_step_of_the_ranks_together_is_the_single_process_step(runs):
    (single_run, single), ranks = runs
    assert single_run.steps_per_epoch == STEPS
    for run, epochs in ranks:
        # the FreezeOut schedule of every rank spans as many steps as the single process's
        assert run.steps_per_epoch == STEPS and run.total_steps == single_run.total_steps == EPOCHS * STEPS
        assert run.train_batches.batch_size == GLOBAL_BATCH // WORLD
        assert [len(steps) for steps in epochs] == [STEPS] * EPOCHS
    for e, steps in enumerate(single):
        assert sorted(label for _, y in steps for label in y) == list(range(N))
        # Padding (DistributedSampler's): the 11-long order is padded to 12 with its first example again,
        # at position 11, which is rank 1's; so the last step of the ranks holds one example more.
        first = steps[0][1][0]
        image_of = {label: x[i] for x, y in steps for i, label in enumerate(y)}
        for j, (_, y) in enumerate(steps):
            got = Counter(label for _, rank_epochs in ranks for label in rank_epochs[e][j][1])
            assert got == Counter(y) + Counter([first] * (j == LAST)), (e, j)
        assert ranks[1][1][e][LAST][1][-1] == first
        for rank, (_, rank_epochs) in enumerate(ranks):
            for j, (x, y) in enumerate(rank_epochs[e]):
                assert len(y) == GLOBAL_BATCH // WORLD  # the padding keeps even the last batches full
                for i, label in enumerate(y):  # the same crop and flip as in the single process
                    assert torch.equal(x[i], image_of[label]), (e, rank, j, label)
    assert single[0][0][1] != single[1][0][1]  # the passes differ: each epoch draws a new order


def test_ranks_see_disjoint_examples_but_the_padding(runs):
    (_, single), ranks = runs
    for e, steps in enumerate(single):
        first = steps[0][1][0]
        seen = [[label for _, y in rank_epochs[e] for label in y] for _, rank_epochs in ranks]
        assert [len(s) for s in seen] == [-(-N // WORLD)] * WORLD == [len(set(s)) for s in seen]
        assert set(seen[0]) & set(seen[1]) == {first}
        assert set(seen[0]) | set(seen[1]) == set(range(N))


def test_shard_is_for_training_only_and_within_the_world():
    x, y = torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.arange(4)
    mean, std = torch.zeros(1), torch.ones(1)
    g = torch.Generator().manual_seed(0)
    for kw in ({"shard": (0, 2)}, {"shard": (2, 2), "train": True}, {"shard": (0, 0), "train": True}):
        with pytest.raises(ValueError, match=r"shard must be \(rank, world_size\)"):
            Batches(x, y, 2, mean, std, generator=g, **kw)
