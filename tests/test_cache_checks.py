"""What ``PrefixCache`` checks on real tensors: each case ordinary code writes trains with the cache exactly as
without it (float64), and each check, mutated off, lets its case go wrong."""

from __future__ import annotations

import logging

import pytest
import torch

import freezeout
from freezeout.cache import cache as cache_module
from freezeout.cache import confirm, fingerprint, passes, recorder, state
from freezeout.tensors import tensors
from tests.helpers import cache_cases as cc
from tests.helpers import cache_runs as cr


def exact(case, **kwargs) -> cr.Run:
    """``case`` trains with the cache (no spot checks unless asked) as without it; returns the cached run."""
    kwargs.setdefault("cache", {"verify": 0})
    plain, cached = cr.twice(case, **kwargs)
    cr.same_training(plain, cached, exact=False, rtol=1e-10, atol=1e-12)
    return cached


@pytest.fixture
def said(caplog):
    """What the cache said in the log."""
    with caplog.at_level(logging.WARNING, logger="freezeout.cache"):
        yield lambda: " ".join(r.getMessage() for r in caplog.records if r.name == "freezeout.cache")


def _off(monkeypatch, where, name, value):
    monkeypatch.setattr(where, name, value)


# -- rows that are not the example's alone -----------------------------------------------------------------------
ROWS = {
    "batch statistics before": (cc.batch_statistics_before, "depends on the rest of the batch"),
    "batch maximum before": (cc.batch_maximum_before, "depends on the rest of the batch"),
    "BatchNorm without running stats": (cc.batchnorm_without_running_stats, "depends on the rest of the batch"),
    "sorted by length": (cc.sorted_by_length, "picked by values of the input"),
}


@pytest.mark.parametrize("name", ROWS)
def test_rows_that_depend_on_the_batch_take_the_plain_path(name, said):
    case, why = ROWS[name]
    run = exact(case)
    assert why in said() and run.cache.stats["hits"] == 0


@pytest.mark.parametrize("name", ["batch statistics before", "BatchNorm without running stats"])
def test_without_the_row_check_rows_of_other_batches_are_served(name, monkeypatch):
    _off(monkeypatch, cache_module, "rows_independent", lambda rec, run: None)
    with pytest.raises(AssertionError):
        exact(ROWS[name][0])


def test_one_composition_is_not_enough_a_batch_maximum_needs_both_halves(monkeypatch):
    first_half = confirm._orders(4)[:1]
    _off(monkeypatch, confirm, "_orders", lambda batch: first_half)
    with pytest.raises(AssertionError):
        exact(cc.batch_maximum_before)


def test_frozen_layers_on_a_data_dependent_subset_of_rows_take_the_plain_path(said):
    run = exact(cc.subset_rows, shuffle=False)  # the first batches give the blocks every row: only the rule sees it
    assert "picked by values of the input" in said() and run.cache.stats["hits"] == 0


def test_without_the_subset_rule_the_served_forward_differs_and_runs_again(monkeypatch):
    """Then the shapes the blocks return tell: a call made from the input is not taken for a batch-free one."""
    _off(monkeypatch, recorder, "_picks_rows", lambda *args: False)
    with pytest.warns(freezeout.CacheWarning, match="differed.*returns other shapes"):
        exact(cc.subset_rows, shuffle=False)
    with pytest.raises(freezeout.CacheWarning):  # what the rule spares: the warning, the cache off
        exact(cc.subset_rows, shuffle=False)


def _unchecked(self, rec, out, rows):
    return list(tensors(out))


def test_a_forward_that_raises_under_the_cache_runs_again_without_it(monkeypatch):
    _off(monkeypatch, recorder, "_picks_rows", lambda *args: False)
    _off(monkeypatch, passes.Serving, "_computed", _unchecked)
    with pytest.warns(freezeout.CacheWarning, match="differed.*raised"):
        exact(cc.subset_rows, shuffle=False)
    _off(monkeypatch, cache_module, "_RERUN", (passes.Diverged,))
    with pytest.raises(IndexError):  # the rows served do not fit what the model does with them
        exact(cc.subset_rows, shuffle=False)


# -- forwards that differ from the one proven ---------------------------------------------------------------------
BRANCHES = {"skips its last block": False, "swaps two modules": True}  # the latter in shuffled batches


@pytest.mark.parametrize("name", BRANCHES)
def test_a_forward_whose_frozen_calls_differ_runs_again_without_the_cache(name):
    swap = BRANCHES[name]
    with pytest.warns(freezeout.CacheWarning, match="differed") as caught:
        run = exact(lambda: cc.branching(swap), shuffle=swap)
    assert len(caught) == 1 and run.cache._off is not None


@pytest.mark.parametrize(
    ("name", "where", "attribute", "value"),
    [
        ("skips its last block", passes.Serving, "finish", lambda self: None),
        ("swaps two modules", passes, "_expect", lambda proof, index, standin, what: proof.calls[index]),
    ],
)
def test_without_the_call_checks_a_differing_forward_is_served(name, where, attribute, value, monkeypatch):
    _off(monkeypatch, where, attribute, value)
    with pytest.raises(AssertionError):
        exact(lambda: cc.branching(BRANCHES[name]), shuffle=BRANCHES[name])


# -- what the cache stores and how it finds it --------------------------------------------------------------------
def served_exactly(case, said, **kwargs) -> None:
    """Exact, and every depth served."""
    run = exact(case, **kwargs)
    assert run.cache.stats["hits"] > 0 and "plain path" not in said()


def test_stored_rows_are_copies_taken_at_the_call(said):
    served_exactly(cc.inplace_after, said)  # LeakyReLU(inplace=True) right after the frontier


def test_without_the_copy_the_inplace_activation_reaches_the_stored_rows(monkeypatch, said):
    _off(monkeypatch, passes, "copy_leaves", lambda value: [t.detach() for t in tensors(value)])
    with pytest.raises(AssertionError):  # the row check sees a frontier that is not what the layer returned
        served_exactly(cc.inplace_after, said)


def test_a_sign_flip_augmentation_is_recomputed():
    run = exact(cc.sign_flips)
    assert run.cache.stats["changed"] > 0 and run.cache.stats["hits"] > 0


def test_with_a_linear_fingerprint_the_unflipped_example_is_served(monkeypatch):
    _off(monkeypatch, fingerprint, "_mix", lambda x: x)
    with pytest.raises(AssertionError):
        exact(cc.sign_flips)


def test_the_fingerprint_changes_under_simple_transforms_of_an_example():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 50, (3, 16), generator=g)
    for batch in (x, ids):
        fp = fingerprints = fingerprint.fingerprints(batch, 3)[0]
        variants = [batch.flip(1), batch.roll(1, 1), batch[:, torch.randperm(16, generator=g)]]
        variants += [-batch, batch * 2] if batch.is_floating_point() else [batch + 1, batch ^ 1]
        for other in variants:
            assert not (fingerprint.fingerprints(other, 3)[0] == fp).all(1).any()
        # an example's fingerprint is its own, wherever it sits in whichever batch
        assert torch.equal(fingerprint.fingerprints(batch.flip(0)[:2], 2)[0], fingerprints.flip(0)[:2])


# -- what flows into the frozen prefix ----------------------------------------------------------------------------
def _edit_scale_in_place(model):
    model.scale.mul_(1.5)


def _replace_scale(model):
    model.scale = torch.full_like(model.scale, 1.5)


def _load_first_block(model):
    state_dict = {k: v * 1.5 for k, v in model.blocks[0].state_dict().items()}
    model.blocks[0].load_state_dict(state_dict)


def _swap_storage(model):
    weight = model.blocks[0][1].weight
    weight.data = weight.data * 1.5  # other storage, the version counter untouched


EDITS = {"buffer edited in place": _edit_scale_in_place, "buffer replaced": _replace_scale,
         "frozen weights loaded": _load_first_block, "frozen weight given other storage": _swap_storage}  # fmt: skip


@pytest.mark.parametrize("name", EDITS)
def test_state_read_before_the_frontier_that_changes_drops_the_rows_past_it(name):
    run = exact(cc.plain, edit=EDITS[name], at=12)
    assert run.cache.stats["hits"] > 0 and run.sched.frozen_at(12) > 0


@pytest.mark.parametrize("name", EDITS)
def test_without_the_stamps_rows_computed_from_old_state_are_served(name, monkeypatch):
    _off(monkeypatch, state.StateWatch, "changed", lambda self: iter(()))
    with pytest.raises(AssertionError):
        exact(cc.plain, edit=EDITS[name], at=12)


def _autocast_on(model):
    cc.AUTOCAST[0] = True


def test_autocast_turned_on_is_another_input_structure():
    plain, cached = cr.twice(cc.autocast_later, edit=_autocast_on, at=12, cache={"verify": 0})
    cr.same_training(plain, cached, exact=False)
    assert cached.cache.stats["hits"] > 0


def test_without_autocast_in_the_key_float32_rows_are_served_under_autocast(monkeypatch):
    _off(monkeypatch, fingerprint, "_autocast_state", lambda device: ())
    plain, cached = cr.twice(cc.autocast_later, edit=_autocast_on, at=12, cache={"verify": 0})
    with pytest.raises(AssertionError):
        cr.same_training(plain, cached, exact=False)


def test_a_trainable_tensor_nobody_holds_takes_the_plain_path_from_its_first_proof(said):
    run = exact(cc.global_shift)
    assert "does not hold flows into frozen layers[0] and trains" in said() and run.cache.stats["stored"] == 0


def test_without_the_trainable_check_rows_are_stored_and_thrown_away_at_every_step(monkeypatch):
    _off(monkeypatch, recorder, "trained_read", lambda reads: None)
    run = exact(cc.global_shift)  # still exact: the stamps see it change, a step late
    assert run.cache.stats["stored"] > 0


def test_a_learned_prompt_held_by_the_model_takes_the_plain_path(said):
    with pytest.warns(freezeout.FrozenInputWarning, match="prompt"):
        run = exact(cc.prompt)
    assert "requires grad flows into frozen layers[0]" in said() and run.cache.stats["stored"] == 0


# -- spot checks ----------------------------------------------------------------------------------------------------
def _gain(model):
    model.blocks[0].gain = 1.5  # a plain attribute: no tensor the cache could stamp changes


def test_spot_checks_catch_what_nothing_else_sees_and_the_run_stays_exact():
    with pytest.warns(freezeout.CacheWarning, match="spot check failed") as caught:
        run = exact(cc.plain, edit=_gain, at=12, cache={"verify": 1.0})
    assert len(caught) == 1 and run.cache.stats["verified"] > 0


def test_without_spot_checks_the_stale_rows_are_served(monkeypatch):
    _off(monkeypatch, cache_module, "spot_check", lambda srv, run: None)
    with pytest.raises(AssertionError):
        exact(cc.plain, edit=_gain, at=12, cache={"verify": 1.0})


@pytest.mark.parametrize("verify", [0.0, 0.25, 1.0])
def test_spot_checks_cover_the_share_of_served_rows_asked_for(verify):
    run = exact(cc.plain, cache={"verify": verify})
    s = run.cache.stats
    assert s["served"] > 0 and verify * s["served"] - cc.B <= s["verified"] <= verify * s["served"]


def test_a_batch_of_one_waits_for_a_larger_batch_to_show_rows_are_each_example_s_own(said):
    plain, cached = cr.twice(lambda: cc.stack(batch=1), epochs=2, cache={"verify": 0})
    cr.same_training(plain, cached, exact=False, rtol=1e-10, atol=1e-12)
    assert "a batch of one cannot show" in said() and cached.cache.stats["stored"] == 0


@pytest.mark.parametrize("verify", [-0.1, 1.5, "often", True, None])
def test_verify_must_be_a_share(verify):
    model, layers = cc.plain().make()
    sched = freezeout.FreezeOut(torch.optim.SGD(model.parameters(), lr=0.1), layers, 10)
    with pytest.raises(ValueError, match=r"verify must be a number in \[0, 1\]"):
        freezeout.PrefixCache(sched, cc.N, verify=verify)


def test_the_stamps_are_the_model_s_tensors_not_the_cache_s_own():
    run = exact(cc.plain)
    reads = run.cache._proofs.watch.reads.values()
    names = {r.name for r in reads}
    want = {"scale", *(f"blocks.{i}.1.{p}" for i in range(3) for p in ("weight", "bias"))}
    assert names == want  # no row table, random state or index the cache itself read while proving
