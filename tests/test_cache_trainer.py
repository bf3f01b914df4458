"""``add_freezeout(trainer, cache=True)``: the frozen-prefix cache inside a Hugging Face Trainer, exact."""

from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="add_freezeout needs the [transformers] extra")

from transformers import Trainer, TrainingArguments  # noqa: E402

from freezeout.integrations.transformers import add_freezeout  # noqa: E402
from tests.helpers.hf import bert_layers, tiny_bert, tiny_gpt2, token_data  # noqa: E402


def train(out, cache, epochs=4, model=None, layers=bert_layers, lm=False):
    model = model or tiny_bert("classify", layers=2)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], use_cpu=True,
        disable_tqdm=True, save_strategy="no", logging_steps=1, seed=0, num_train_epochs=epochs,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=token_data(12, lm=lm))
    handle = add_freezeout(trainer, layers=layers, t0=0.5, cache=cache)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return model, losses, handle


def test_trainer_with_the_cache_trains_as_without_it(tmp_path):
    plain, losses_plain, _ = train(tmp_path / "a", False)
    cached, losses_cached, handle = train(tmp_path / "b", True)
    assert losses_cached == pytest.approx(losses_plain, rel=1e-4)
    for (name, p), q in zip(plain.named_parameters(), cached.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    stats = handle.cache.last_stats
    assert stats["hits"] > 0 and stats["changed"] == 0  # the indices the tap read were the batches' own
    assert all("forward" not in m.__dict__ for m in cached.modules())


def test_trainer_cache_argument_is_checked(tmp_path):
    trainer = Trainer(model=tiny_bert("classify"), args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))
    with pytest.raises(ValueError, match="cache"):
        add_freezeout(trainer, layers=bert_layers, cache={"max_byte": 1})


def gpt2_lm():
    """Float64, nothing random; ``find_layers`` will pick the token embedding, tied to the head."""
    model = tiny_gpt2(layers=2).double()
    model.config.use_cache = False
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def test_trainer_gpt2_lm_with_the_tied_embedding_trains_as_without_the_cache(tmp_path, caplog):
    plain, losses_plain, _ = train(tmp_path / "a", False, 3, gpt2_lm(), None, lm=True)
    with caplog.at_level(logging.WARNING, logger="freezeout.cache"):
        cached, losses_cached, _ = train(tmp_path / "b", {"verify": 0}, 3, gpt2_lm(), None, lm=True)
    assert losses_cached == pytest.approx(losses_plain, rel=1e-10)
    for (name, p), q in zip(plain.named_parameters(), cached.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12), name
    assert "transformer.wte.weight flows into frozen layers[0] and trains" in caplog.text
