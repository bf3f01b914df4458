from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.models import TinyNet

# One thread in this process and every process a test starts: the tests' models are tiny, so more threads buy
# nothing, and on a busy machine OpenMP threads waiting for each other slow such ops down by orders of magnitude.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()
