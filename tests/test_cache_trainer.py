"""``add_freezeout(trainer, cache=True)``: the frozen-prefix cache inside a Hugging Face Trainer, exact."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="add_freezeout needs the [transformers] extra")

from transformers import Trainer, TrainingArguments  # noqa: E402

from freezeout.integrations.transformers import add_freezeout  # noqa: E402
from tests.helpers.hf import bert_layers, tiny_bert, token_data  # noqa: E402


def train(out, cache, epochs=4):
    model = tiny_bert("classify", layers=2)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], use_cpu=True,
        disable_tqdm=True, save_strategy="no", logging_steps=1, seed=0, num_train_epochs=epochs,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=token_data(12))
    handle = add_freezeout(trainer, layers=bert_layers, t0=0.5, cache=cache)
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
