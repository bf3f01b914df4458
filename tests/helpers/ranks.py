"""Several gloo ranks on loopback for a test, which fails instead of hanging."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch.multiprocessing as mp


def spawn_ranks(fn: Callable[..., None], args: tuple[Any, ...], world: int = 2, timeout: float = 300.0) -> None:
    """Run ``fn(rank, *args)`` in ``world`` spawned processes; a rank's error fails the test, and so does a run
    past ``timeout`` seconds (every rank is killed first: a rank stuck in a collective waits for ever)."""
    context = mp.start_processes(fn, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            for p in context.processes:
                p.join(10)
            pytest.fail(f"{world} ranks still running after {timeout:.0f} s: killed")
