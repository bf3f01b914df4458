"""What the cache confirms on real tensors, whatever the proof says (docs/CACHE.md, "What it checks").

- ``rows_independent``: before a depth is served, the frozen prefix runs again on the batch's first half twice and
  on its second half twice; each frontier row must equal, bit for bit, the row of its example in the batch as it
  came.
  A row that depends on the rest of the batch (batch statistics, a sort by length) shows here. Only the layers
  the proof one layer shallower did not cover run again: the rows it served are replayed, in the new order.
- ``spot_check``: the served rows of a forward are recomputed from the model's input on their own and compared
  with the rows served, at a tolerance of the square root of the dtype's epsilon of each row's largest value
  (rows computed in batches of other sizes differ by rounding).

Each takes ``run`` (``check_runner``), which runs a ``Checking`` forward of the model and says why it could not
finish, or None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .passes import Checking, Recording, Serving, Stop, rng_state, set_rng_state, take_rows

__all__ = ["check_runner", "relative_difference", "rows_independent", "same_bits", "spot_check"]

RunCheck = Callable[[Checking], "str | None"]
_INT_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def check_runner(switch: Callable[[Checking | None], Any], entry: Any, args: Any, kwargs: Any) -> RunCheck:
    """How a check runs the model (``entry.below``) on its rows of ``args``: without grad, its random state put
    back, stopped after its last call; ``switch`` makes a forward the cache's current one and returns the last."""

    def run(check: Checking) -> str | None:
        previous = switch(check)
        rng = rng_state()
        try:
            with torch.no_grad():
                entry.below(*take_rows(args, check.order, check.batch), **take_rows(kwargs, check.order, check.batch))
        except Stop as stop:
            return stop.why
        except Exception as e:  # the model refuses the reordered rows: nothing is shown
            return f"the model raised {type(e).__name__} ({e})"
        finally:
            switch(previous)
            set_rng_state(rng)
        return "the model's forward ended before its frozen layers did"

    return run


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same bits (NaN equal to the same NaN, 0.0 not equal to -0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if a.is_floating_point():
        kind = _INT_OF[a.element_size()]
        a, b = a.contiguous().view(kind), b.contiguous().view(kind)
    return torch.equal(a, b)


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float | None:
    """The largest difference of ``got`` from ``want`` relative to each row's largest value in ``want``, if it is
    over the tolerance (the square root of the dtype's epsilon); None within it. Exact for integers."""
    if not (want.is_floating_point() or want.is_complex()):
        return None if torch.equal(got, want) else float("inf")
    tol = torch.finfo(want.real.dtype if want.is_complex() else want.dtype).eps ** 0.5
    g, w = got.to(torch.complex128 if want.is_complex() else torch.float64), want.to(got.device).double()
    diff = (g - w).abs()
    diff = torch.where(torch.isnan(g) & torch.isnan(w), torch.zeros_like(diff), diff).nan_to_num(nan=float("inf"))
    scale = w.abs().nan_to_num(nan=0.0, posinf=0.0).reshape(w.shape[0], -1).amax(1).clamp_min(1e-30)
    worst = float((diff.reshape(w.shape[0], -1) / scale[:, None]).amax()) if w.numel() else 0.0
    return worst if worst > tol else None


def _orders(batch: int) -> list[tuple[str, torch.Tensor]]:
    """Batches as long as ``batch`` (so the kernels are the same and rows must match bit for bit) of its first half
    twice and its second half twice: every row has other neighbours, and sits elsewhere in one of them."""
    half, rows = (batch + 1) // 2, torch.arange(batch)
    return [("its first half twice", rows % half), ("its second half twice", half + rows % (batch - half))]


def rows_independent(rec: Recording, run: RunCheck) -> str | None:
    """None if the frontier's rows are each their example's alone on this batch (see the module doc), else what
    differed."""
    proof = rec.proof
    capture = {i for i, c in enumerate(proof.calls) if c.layer == proof.depth - 1 and not c.batch_free}
    want = [leaf for leaves in rec.frontier for leaf in leaves]
    for what, order in _orders(rec.batch):
        check = Checking(proof, order, rec.batch, rec.replay, capture, proof.last_frontier_call)
        why = run(check)
        if why is not None:
            return f"run again on the batch {what}, {why}"
        got = [leaf for c in sorted(capture) for leaf in check.outputs.get(c, [])]
        if len(got) != len(want) or not all(
            same_bits(g, w.index_select(0, order.to(w.device))) for g, w in zip(got, want)
        ):
            return (
                f"the rows of layers[{proof.depth - 1}]'s output change when the batch is {what}: a row depends on "
                "the rest of the batch (batch statistics, a sort)"
            )
    return None


def spot_check(srv: Serving, run: RunCheck) -> str | None:
    """None if the rows ``srv`` is about to serve match a recomputation of the frozen prefix on them, else what
    differed."""
    served = srv.served
    if not served.numel():
        return None
    proof, depths = srv.proof, srv.depths[served]
    layers = {int(d) - 1 for d in depths.unique()}
    capture = {i for i, c in enumerate(proof.calls) if c.layer in layers and not c.batch_free}
    if not capture:  # the served depths keep no row (their layer's calls are batch-free): nothing to compare
        return None
    check = Checking(proof, served, srv.batch, {}, capture, max(capture))
    why = run(check)
    if why is not None:
        return f"recomputed on the served rows, {why}"
    for d in depths.unique().tolist():
        mine = (depths == d).nonzero().reshape(-1)
        examples = srv.indices[served[mine]]
        table = srv.stored.tables[(d, srv.key)]
        for c in sorted(i for i in capture if proof.calls[i].layer == d - 1):
            rec = proof.calls[c]
            for i, leaf in enumerate(check.outputs[c]):
                diff = relative_difference(
                    leaf.index_select(0, mine.to(leaf.device)), table.read(rec.offset + i, examples)
                )
                if diff is not None:
                    return (
                        f"the stored output of frozen layers[{d - 1}] differs from its recomputation by {diff:.2g} of "
                        "its scale (something it reads changed without the cache seeing it)"
                    )
    return None
