"""``PrefixCache``: training with it is training without it, bit for bit, and the frozen layers stop running."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers", reason="the cache's transformer cases need the [transformers] extra")

import freezeout  # noqa: E402
from freezeout.experiment.models import build_model  # noqa: E402
from tests.helpers import cache_runs as cr  # noqa: E402
from tests.helpers.hf import VOCAB, tiny_bert, tiny_gpt2  # noqa: E402
from tests.helpers.lookalikes import DenseNet  # noqa: E402

N, B = 12, 4
IDS = torch.randint(2, VOCAB, (N, 8), generator=torch.Generator().manual_seed(0))
MASK = torch.ones_like(IDS)
MASK[3, -2:] = 0  # a padded example: the mask is a real tensor in every layer
LABELS = torch.randint(0, 3, (N,), generator=torch.Generator().manual_seed(1))
Embeddings = transformers.models.bert.modeling_bert.BertEmbeddings


def bert():
    model = tiny_bert("classify", layers=3, hidden_dropout_prob=0.1)
    return model, [model.bert.embeddings, *model.bert.encoder.layer]


def hf_loss(model, x, y):
    return model(**x, labels=y).loss


def tokens(idx, ids=IDS):
    return {"input_ids": ids[idx], "attention_mask": MASK[idx]}, LABELS[idx]


def both(make, data, loss_fn, epochs=6, cache=None, n=N, batch=B, t0=0.5, shuffle=True):
    order = cr.order(n, batch, epochs, shuffle=shuffle)
    torch.manual_seed(5)
    plain = cr.steps(cr.build(make, len(order), n, None, t0), data, order, loss_fn)
    torch.manual_seed(5)
    cached = cr.steps(cr.build(make, len(order), n, cache or {}, t0), data, order, loss_fn)
    return plain, cached


@pytest.fixture
def proven(caplog):
    """The cache proved every depth: nothing took the plain path."""
    with caplog.at_level(logging.WARNING, logger="freezeout.cache"):
        yield
    assert not [r.message for r in caplog.records if r.name == "freezeout.cache"]


def test_bert_trains_bit_for_bit_as_without_the_cache_and_skips_the_frozen_layers(proven):
    with cr.counting(Embeddings, []) as seen_plain:
        order = cr.order(N, B, 6)
        torch.manual_seed(5)
        plain = cr.steps(cr.build(bert, len(order), N, None), tokens, order, hf_loss)
    with cr.counting(Embeddings, []) as seen_cached:
        torch.manual_seed(5)
        cached = cr.steps(cr.build(bert, len(order), N, {}), tokens, order, hf_loss)
    cr.same_training(plain, cached, exact=False)
    assert plain.sched.num_frozen == 4  # the frontier moved through every layer
    # the embeddings ran on every example of every step without the cache; with it, once frozen, on each example
    # once, in the forward that learns the model and in the first forward at each depth (run in full)
    trained = next(s for s in range(len(order)) if plain.sched.frozen_at(s) > 0)
    assert sum(seen_plain) == len(order) * B
    assert sum(seen_cached) <= trained * B + N + 6 * B < sum(seen_plain) * 0.7
    assert cached.cache.stats["hits"] > 0 and cached.cache.nbytes > 0


def test_gpt2_classifier_with_its_dropout_frozen_in_the_embedding_group(proven):
    def gpt2():
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                         use_cache=False, pad_token_id=0, eos_token_id=0, num_labels=3)  # fmt: skip
        m = transformers.GPT2ForSequenceClassification(config)
        t = m.transformer
        return m, [[t.wte, t.wpe, t.drop], *t.h]

    plain, cached = both(gpt2, tokens, hf_loss, epochs=5)
    cr.same_training(plain, cached, exact=False)
    assert cached.cache.stats["hits"] >= N


def gpt2_lm():
    """GPT-2 as a language model in float64, nothing random, with the layers ``find_layers`` picks: the token
    embedding among them, tied to the head, so it keeps training."""
    model = tiny_gpt2(layers=3).double()
    model.config.use_cache = False
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model, freezeout.find_layers(model, {"input_ids": IDS[:1]})


def lm_tokens(idx):
    return {"input_ids": IDS[idx]}, IDS[idx]


def lm_loss(model, x, y):
    return model(**x, labels=y).loss


def test_gpt2_lm_with_the_embedding_tied_to_the_head_trains_as_without_the_cache(caplog):
    with caplog.at_level(logging.WARNING, logger="freezeout.cache"):
        plain, cached = both(gpt2_lm, lm_tokens, lm_loss, epochs=4, cache={"verify": 0})
    cr.same_training(plain, cached, exact=False, rtol=1e-10, atol=1e-12)
    assert "transformer.wte.weight flows into frozen layers[0] and trains" in caplog.text
    assert cached.cache.stats["stored"] == 0  # the plain path from the first proof on, said once


def test_gpt2_lm_served_from_an_old_embedding_without_the_checks(monkeypatch):
    monkeypatch.setattr(freezeout.cache.recorder, "trained_read", lambda reads: None)
    monkeypatch.setattr(freezeout.cache.state.StateWatch, "changed", lambda self: iter(()))
    plain, cached = both(gpt2_lm, lm_tokens, lm_loss, epochs=4, cache={"verify": 0})
    with pytest.raises(AssertionError):
        cr.same_training(plain, cached, exact=False, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["densenet-bc", "resnet"])
def test_batchnorm_cnns_bit_for_bit_in_batches_of_fixed_composition(kind, proven):
    x = torch.randn(N, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (N,), generator=torch.Generator().manual_seed(3))

    def make():
        torch.manual_seed(0)
        m = build_model(kind, 10 if kind == "densenet-bc" else 8, 4, 10, 3).to(memory_format=torch.channels_last)
        return m, m.layers

    plain, cached = both(make, lambda i: (x[i], y[i]), lambda m, a, b: F.cross_entropy(m(a), b), 8, shuffle=False)
    cr.same_training(plain, cached)
    assert cached.cache.stats["hits"] >= N


def test_changed_inputs_are_recomputed_never_served():
    ids = IDS.clone()

    def data(idx):
        return tokens(idx, ids)

    order = cr.order(N, B, 4)
    runs = []
    for cache in (None, {}):
        ids.copy_(IDS)
        torch.manual_seed(5)
        run = cr.build(bert, len(order), N, cache)
        cr.steps(run, data, order[:6], hf_loss)
        ids[:4, 1] += 1  # the same examples' positions, other tokens (a changed data set, a new masking)
        cr.steps(run, data, order[6:], hf_loss)
        runs.append(run)
    cr.same_training(*runs)
    assert runs[1].cache.stats["changed"] > 0


def test_inputs_that_keep_changing_warn_once_naming_the_hit_rate_and_stop_storing():
    noise = torch.Generator().manual_seed(9)

    def data(idx):  # augmentation: every look at an example differs
        return {"input_ids": torch.randint(2, VOCAB, (len(idx), 8), generator=noise)}, LABELS[idx]

    order = cr.order(N, B, 12)
    run = cr.build(bert, len(order), N, {})
    with pytest.warns(freezeout.CacheWarning, match=r"hit rate 0%") as caught:
        cr.steps(run, data, order, hf_loss)
    assert len(caught) == 1 and not run.cache.storing and run.cache.stats["hits"] == 0


def test_the_cap_is_obeyed_and_training_stays_exact():
    full = cr.steps(cr.build(bert, 12, N, {}), tokens, cr.order(N, B, 4)[:12], hf_loss).cache.nbytes
    cap = full // 3
    plain, cached = both(bert, tokens, hf_loss, cache={"max_bytes": cap})
    cr.same_training(plain, cached)
    assert 0 < max(cached.nbytes) <= cap


def test_memory_mapped_under_path_leaves_no_file(tmp_path):
    plain, cached = both(bert, tokens, hf_loss, epochs=4, cache={"path": tmp_path})
    cr.same_training(plain, cached)
    assert cached.cache.nbytes > 0 and list(tmp_path.iterdir()) == []


def test_resume_with_an_empty_cache():
    order = cr.order(N, B, 6)
    torch.manual_seed(5)
    plain = cr.steps(cr.build(bert, len(order), N, None), tokens, order, hf_loss)
    torch.manual_seed(5)
    first = cr.steps(cr.build(bert, len(order), N, {}), tokens, order[:9], hf_loss)
    state, rng = [x.state_dict() for x in (first.model, first.opt, first.sched)], torch.get_rng_state()
    second = cr.build(bert, len(order), N, {})  # a new process: the cache starts empty
    for x, s in zip((second.model, second.opt, second.sched), state):
        x.load_state_dict(s)
    torch.set_rng_state(rng)
    second.losses = list(first.losses)
    cr.steps(second, tokens, order[9:], hf_loss)
    cr.same_training(plain, second, exact=False)
    assert second.cache.stats["hits"] > 0


def test_a_structure_it_cannot_prove_takes_the_plain_path_and_says_so(caplog):
    x = torch.randn(N, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 5, (N,))

    def make():  # torchvision's DenseNet: every dense layer reads all earlier ones' outputs
        torch.manual_seed(0)
        m = DenseNet()
        f = m.features
        stem = [f.conv0, f.norm0, f.relu0, f.pool0]
        return m, [stem, *f.denseblock1.values(), f.transition1, *f.denseblock2.values()]

    with caplog.at_level(logging.WARNING, logger="freezeout.cache"):
        plain, cached = both(make, lambda i: (x[i], y[i]), lambda m, a, b: F.cross_entropy(m(a), b), epochs=4)
    cr.same_training(plain, cached)
    assert any("skip connection" in r.message for r in caplog.records)


def test_eval_and_no_grad_are_untouched():
    run = cr.steps(cr.build(bert, 6, N, {}), tokens, cr.order(N, B, 2), hf_loss)
    stats = dict(run.cache.stats)
    x, _ = tokens(torch.arange(B))
    run.model.eval()
    with torch.no_grad():
        want = run.model(**x).logits
        with run.cache.batch(range(B)):
            got = run.model(**x).logits
    assert torch.equal(want, got) and run.cache.stats == stats
    assert all("forward" not in m.__dict__ for m in run.model.modules())  # nothing left after the block


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sched": object()}, "sched"),
        ({"num_examples": 0}, "num_examples"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"path": "/no/such/folder"}, "path"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    model, layers = bert()
    sched = freezeout.FreezeOut(torch.optim.SGD(model.parameters(), lr=0.1), layers, 10)
    args = {"sched": sched, "num_examples": N, **kwargs}
    with pytest.raises(ValueError, match=match):
        freezeout.PrefixCache(args.pop("sched"), args.pop("num_examples"), **args)


@pytest.mark.parametrize("indices", [[N], [-1], [0.5], [], [1, 1]])
def test_bad_indices_are_a_value_error(indices):
    model, layers = bert()
    cache = freezeout.PrefixCache(freezeout.FreezeOut(torch.optim.SGD(model.parameters(), lr=0.1), layers, 10), N)
    with pytest.raises(ValueError, match="indices"), cache.batch(indices):
        pass


def test_cli_train_cache_is_refused_with_augmentation_in_one_line(tmp_path):
    from tests.helpers.cli import one_line_error, run

    result = run("train", "--dataset", "digits", "--epochs", "1", "--cache", "--out", tmp_path / "run")
    one_line_error(result, "--no-augment")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_experiment_trains_with_the_cache_as_without_it(tmp_path):
    from freezeout.experiment.config import TrainConfig
    from freezeout.experiment.trainer import train

    base = dict(dataset="digits", model="resnet", depth=8, epochs=3, t0=0.5, augment=False, batch_size=100)
    runs = [train(TrainConfig(**base, cache=c), tmp_path / str(c)) for c in (False, True)]
    assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"]
    assert runs[0]["test_loss"] == pytest.approx(runs[1]["test_loss"], rel=1e-4)
