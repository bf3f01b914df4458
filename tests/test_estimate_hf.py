"""The estimators on a user's transformer: inputs as tuples and mappings (a tokenizer's BatchEncoding), outputs as
Hugging Face ModelOutputs, the default loss, FLOPs against a hand count, the cut of a tied embedding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from freezeout import find_layers, freeze_times
from freezeout.analysis.bench import BenchConfig, run_bench
from freezeout.analysis.cost import paper_saving
from freezeout.analysis.estimate import estimate_saving
from freezeout.analysis.flops import batch_size_of, check_forward_path, layer_flops
from freezeout.analysis.timing import step_time_curve
from freezeout.analysis.workload import model_loss, random_targets

hf = pytest.importorskip("tests.helpers.hf", exc_type=ImportError, reason="needs the [transformers] extra")


def test_batch_size_of_tensor_tuple_mapping():
    enc = hf.tokens(batch=3)
    assert batch_size_of(torch.zeros(4, 2)) == 4
    assert batch_size_of((torch.zeros(5, 2), torch.zeros(1))) == 5
    assert batch_size_of(enc) == 3 and batch_size_of(dict(enc)) == 3
    for bad in ("text", {}, torch.tensor(1.0), {"input_ids": [1, 2]}):
        with pytest.raises(ValueError, match="example_input must be a tensor whose first dimension is the batch"):
            batch_size_of(bad)


def test_layer_flops_of_bert_blocks_match_the_hand_count_sdpa_and_eager():
    enc, (b, n, h, i) = hf.tokens(batch=2), (2, 7, hf.HIDDEN, hf.FFN)
    block = 8 * b * n * h * h + 4 * b * n * n * h + 4 * b * n * h * i  # q k v o, scores and mix, the MLP
    rest = 2 * b * h * h + 2 * b * h * hf.CLASSES  # pooler and classifier on the first token
    for attention in ("sdpa", "eager"):  # PyTorch counts no CPU sdpa by itself
        model = hf.tiny_bert("classify", attn_implementation=attention)
        assert layer_flops(model, find_layers(model, enc), enc) == ([0, block, block], rest)


@pytest.mark.parametrize("build", [hf.tiny_gpt2, hf.tiny_vit, hf.tiny_t5_encoder, lambda: hf.tiny_bert("mlm")])
def test_found_layers_are_the_forward_path_of_mapping_inputs(build):
    model = build()
    x = hf.pixels() if "ViT" in type(model).__name__ else hf.tokens()
    check_forward_path(model, find_layers(model, x), x)  # each runs once, in order, and feeds the output


def test_default_loss_own_loss_else_cross_entropy_on_the_last_dimension():
    gpt = hf.tiny_gpt2()
    enc = hf.tokens()
    y = random_targets(gpt, enc, seed=1)
    assert y.shape == (2, 7) and y.dtype == torch.long and int(y.min()) >= 0 and int(y.max()) < hf.VOCAB
    out = gpt(**enc)
    assert model_loss(out, y) == F.cross_entropy(out.logits.reshape(14, hf.VOCAB), y.reshape(14))
    labelled = hf.tokens(labels=True)
    assert random_targets(gpt, labelled) is None  # the model computes its own loss from the labels
    torch.manual_seed(0)
    own = gpt(**labelled).loss
    torch.manual_seed(0)
    assert model_loss(gpt.train()(**labelled), None) == own
    logits = torch.randn(4, 5)
    assert model_loss(logits, torch.tensor([0, 4, 2, 1])) == F.cross_entropy(logits, torch.tensor([0, 4, 2, 1]))
    with pytest.raises(ValueError, match="pass target= and loss_fn="):
        random_targets(torch.nn.Conv2d(3, 2, 1), torch.randn(1, 3, 4, 4))  # (B, C, H, W): which dimension?


def test_estimate_saving_on_a_classifier_given_a_batch_encoding():
    model = hf.tiny_bert("classify")
    before = [p.detach().clone() for p in model.parameters()]
    enc = hf.tokens(batch=2)
    layers = find_layers(model, enc)
    out = estimate_saving(model, layers, enc, t0=0.5, schedule="linear", calibrate=True, repeats=1)
    flops, rest = layer_flops(model, layers, enc)
    assert out["batch_size"] == 2 and out["num_layers"] == 3
    assert out["paper_saving"] == pytest.approx(paper_saving(flops, rest, freeze_times(3, 0.5, "linear")))
    t = out["step_times"]  # linear t_i = 1/2, 2/3, 5/6: half the run with none frozen, a sixth with each k > 0
    assert len(t) == 4 and out["calibrated_saving"] == pytest.approx(1 - (t[0] / 2 + sum(t[1:]) / 6) / t[0])
    assert out["saved_bytes"]["all_frozen"] < out["saved_bytes"]["none_frozen"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # measured on a copy


def test_step_time_curve_cuts_a_tied_embedding_as_freezeout_does():
    # GPT-2's token embedding is the head's weight: it trains to the end. Without the guard's cut it would keep
    # every frozen block in autograd; with it, all frozen saves what the head alone needs.
    model, enc = hf.tiny_gpt2(layers=3), hf.tokens(labels=True)
    curve = step_time_curve(model, find_layers(model, enc), enc, repeats=1, warmup=0, warm_rounds=0)
    saved = curve["saved_bytes_by_k"]
    assert list(saved) == ["0", "2", "4"]
    assert saved["4"] < saved["2"] < saved["0"] and saved["4"] < 0.3 * saved["0"]


def test_run_bench_on_a_language_model_with_its_own_loss():
    model, enc = hf.tiny_gpt2(), hf.tokens(labels=True)
    config = BenchConfig(steps=3, repeats=1, curve_repeats=1, overhead_calls=1)
    result = run_bench(model, find_layers(model, enc), enc, config)
    assert result["input_shape"] == {"input_ids": [2, 7], "attention_mask": [2, 7], "labels": [2, 7]}
    assert result["num_layers"] == 3 and result["batch_size"] == 2
    (row,) = result["rows"]
    assert row["num_frozen_at_end"] == 3 and "calibrated_saving" in row and "realized_saving" in row
