"""add_freezeout in a real Hugging Face Trainer on CPU (tiny BERT and GPT-2 built from configs, random tokens):
step count, LRs and warmup against the closed form, Trainer's optimizer and decay rule, logs, exact resume,
memory under activation checkpointing."""

from __future__ import annotations

import importlib
import itertools
import math
import sys
import weakref
from functools import partial

import pytest
import torch

pytest.importorskip("transformers", reason="add_freezeout needs the [transformers] extra")
pytest.importorskip("accelerate", reason="Trainer needs accelerate: the [transformers] extra")

from transformers import Trainer, TrainerCallback, TrainingArguments

import freezeout
from freezeout.integrations.transformers import add_freezeout
from tests.helpers.hf import bert_layers, gpt2_layers, tiny_bert, tiny_gpt2, token_data

FIELDS = TrainingArguments.__dataclass_fields__
CHECKPOINTING = "activation_checkpointing" if "activation_checkpointing" in FIELDS else "gradient_checkpointing"
LR, T0 = 1e-3, 0.5


def warmup_ratio(ratio: float) -> dict:
    return {"warmup_ratio": ratio} if "warmup_ratio" in FIELDS else {"warmup_steps": ratio}  # 5.x: a float < 1


def arguments(out, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(out), per_device_train_batch_size=4, learning_rate=LR, report_to=[], use_cpu=True,
        disable_tqdm=True, save_strategy="no", logging_steps=1, seed=0,
    )  # fmt: skip
    return TrainingArguments(**{**options, **overrides})


def owner(params, layers) -> int:
    """The index of the layer holding all of ``params`` (by identity), or ``len(layers)`` for the rest."""
    found = {i for i, layer in enumerate(layers) for p in params if any(p is q for q in layer.parameters())}
    assert len(found) <= 1, "a group mixes layers"
    return found.pop() if found else len(layers)


def closed_form(step: int, total: int, i: int, n: int, warmup: int) -> float:
    """The paper's cubic, scaled schedule (t0 given before cubing) times the warmup factor; ``i == n``: the head."""
    t, t_i = step / total, 1.0 if i == n else (T0 + (1 - T0) * i / n) ** 3
    lr = 0.5 * (LR if i == n else LR / t_i) * (1 + math.cos(math.pi * t / t_i)) if t < t_i else 0.0
    return lr * (min(1.0, step / warmup) if warmup else 1.0)


class Recorder(TrainerCallback):
    """At the start of each optimizer step (of its first micro-batch): every group's LR and how many layers are
    frozen, as that step runs with them."""

    def __init__(self, layers_of) -> None:
        self.layers_of, self.lrs, self.frozen, self.owners = layers_of, [], [], None
        self.frozen_at_start = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.frozen_at_start = [all(not p.requires_grad for p in m.parameters()) for m in self.layers_of(model)]

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        layers = self.layers_of(model)
        if self.owners is None:
            self.owners = [owner(g["params"], layers) for g in optimizer.param_groups]
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.frozen.append(sum(all(not p.requires_grad for p in m.parameters()) for m in layers))


@pytest.mark.parametrize(
    ("examples", "options", "steps", "warmup"),
    [
        (24, {"num_train_epochs": 2, "warmup_steps": 4}, 12, 4),  # 6 batches x 2 epochs
        (24, {"max_steps": 5}, 5, 0),  # max_steps wins over epochs
        (28, {"num_train_epochs": 2, "gradient_accumulation_steps": 3, **warmup_ratio(0.5)}, 6, 3),  # ceil(7/3) x 2
    ],
    ids=["epochs", "max_steps", "accumulation"],
)
def test_steps_lrs_and_logs_follow_trainer(tmp_path, examples, options, steps, warmup):
    model = tiny_bert("classify")
    recorder = Recorder(bert_layers)
    trainer = Trainer(model=model, args=arguments(tmp_path, **options), train_dataset=token_data(examples),
                      callbacks=[recorder])  # fmt: skip
    handle = add_freezeout(trainer, layers=bert_layers, t0=T0)
    trainer.train()
    n = len(bert_layers(model))
    assert len(recorder.lrs) == steps == trainer.state.global_step == handle.controller.total_steps
    assert recorder.owners[0] == n  # the head's group first: Trainer logs group 0's LR
    for s, lrs in enumerate(recorder.lrs):
        want = [closed_form(s, steps, i, n, warmup) for i in recorder.owners]
        assert lrs == pytest.approx(want, rel=1e-12, abs=1e-15), f"step {s}"
    assert all(p.requires_grad for p in model.parameters())  # the end of train() closed FreezeOut
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logged] == list(range(1, steps + 1))
    for e in logged:  # each log is about the optimizer step just taken
        assert e["learning_rate"] == recorder.lrs[e["step"] - 1][0] == closed_form(e["step"] - 1, steps, n, n, warmup)
        assert e["freezeout/num_frozen"] == recorder.frozen[e["step"] - 1]
        frozen = recorder.frozen[e["step"] - 1]  # the first layer still training, beside the head: none once all froze
        first = closed_form(e["step"] - 1, steps, frozen, n, warmup) if frozen < n else None
        assert e.get("freezeout/lr_first_layer") == first
    assert recorder.frozen[-1] > 0 and logged[-1]["learning_rate"] > 0  # Trainer alone logged a frozen layer's 0


@pytest.mark.parametrize(
    ("build", "layers_of"),
    [(partial(tiny_bert, "classify"), bert_layers), (tiny_gpt2, gpt2_layers)],
    ids=["bert", "gpt2"],
)
@pytest.mark.parametrize("optim", ["adamw_torch", "sgd"])
def test_optimizer_and_decay_rule_are_trainers(tmp_path, build, layers_of, optim):
    model = build()
    next(layers_of(model)[0].parameters()).requires_grad_(False)  # frozen by the user: Trainer leaves it out
    args = arguments(tmp_path, optim=optim, weight_decay=0.01, adam_beta2=0.98)
    plain = Trainer(model=model, args=args, train_dataset=token_data(8)).create_optimizer()
    trainer = Trainer(model=model, args=args, train_dataset=token_data(8))
    add_freezeout(trainer, layers=layers_of(model))
    opt = trainer.create_optimizer()
    assert type(opt) is type(plain) and opt.defaults == plain.defaults
    decay, no_decay = ({id(p) for g in plain.param_groups if (g["weight_decay"] > 0) == want for p in g["params"]}
                       for want in (True, False))  # fmt: skip
    assert decay and no_decay
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= (decay if g["weight_decay"] == 0.01 else no_decay)
        assert g["weight_decay"] in (0.0, 0.01)
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(decay | no_decay)
    owners = [owner(g["params"], layers_of(model)) for g in opt.param_groups]  # asserts one layer or the rest
    n = len(layers_of(model))
    assert owners == sorted(owners, key=lambda i: i != n)  # the rest's groups first
    sched = trainer.create_scheduler(num_training_steps=10)  # FreezeOut's own group check passes
    assert isinstance(sched, freezeout.FreezeOut) and sched.group_layers == owners


def test_resume_from_a_mid_run_checkpoint_is_bit_identical(tmp_path):
    steps, at = 12, 8  # 2 epochs of 6 batches; at step 8 the position embedding and block 0 are frozen, block 1 not
    options = dict(num_train_epochs=2, save_strategy="steps", save_steps=at, weight_decay=0.01, warmup_steps=2)

    def run(out, resume=None):
        model, recorder = tiny_gpt2(), Recorder(gpt2_layers)
        trainer = Trainer(model=model, args=arguments(out, **options), train_dataset=token_data(24, lm=True),
                          callbacks=[recorder])  # fmt: skip
        add_freezeout(trainer, layers=gpt2_layers, t0=0.8)
        trainer.train(resume_from_checkpoint=resume)
        return model, trainer, recorder

    whole, trainer_a, rec_a = run(tmp_path / "a")
    resumed, trainer_b, rec_b = run(tmp_path / "b", resume=str(tmp_path / "a" / f"checkpoint-{at}"))
    assert rec_a.frozen[at] == 2 and rec_b.frozen_at_start == [True, True, False]  # re-frozen on load
    assert trainer_b.state.global_step == steps
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [
        [e["loss"] for e in t.state.log_history if "loss" in e and e["step"] > at] for t in (trainer_a, trainer_b)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == steps - at


class HeldForBackward(TrainerCallback):
    """Bytes autograd still holds for backward when each training forward returns (storages counted once)."""

    def __init__(self) -> None:
        self.held, self.frozen = [], []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        packed = {}

        def pack(t):
            s = t.untyped_storage()
            packed[(s.data_ptr(), s.nbytes())] = (weakref.ref(t), s.nbytes())
            return t

        def done(module, inputs, output):
            self.held.append(sum(n for ref, n in packed.values() if ref() is not None))

        self.context = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.context.__enter__()
        self.handle = model.register_forward_hook(done)
        self.frozen.append(sum(all(not p.requires_grad for p in m.parameters()) for m in bert_layers(model)))

    def on_step_end(self, args, state, control, **kwargs):
        self.context.__exit__(None, None, None)
        self.handle.remove()


def test_memory_falls_as_layers_freeze_under_activation_checkpointing(tmp_path):
    model, held = tiny_bert("classify", layers=3), HeldForBackward()
    args = arguments(tmp_path, max_steps=12, **{CHECKPOINTING: True})
    trainer = Trainer(model=model, args=args, train_dataset=token_data(16), callbacks=[held])
    add_freezeout(trainer, layers=bert_layers, t0=0.3, schedule="linear")
    trainer.train()
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing  # 5.x or 4.x
    assert model.bert.embeddings.word_embeddings._forward_hooks  # HF's hook: the embedding output requires grad
    assert held.frozen[0] == 0 and held.frozen[-1] == 4 and len(set(held.frozen)) == 5  # 0, 1, ... all frozen
    assert all(b <= a for a, b in itertools.pairwise(held.held)), list(zip(held.frozen, held.held))
    half = held.held[held.frozen.index(2)]
    assert held.held[-1] < half < held.held[0], list(zip(held.frozen, held.held))


def test_default_layers_are_find_layers_and_the_rng_is_left_alone(tmp_path):
    model, data = tiny_bert("classify"), token_data(8)
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=data)
    handle = add_freezeout(trainer)
    before = torch.get_rng_state()
    trainer.create_optimizer()
    assert torch.equal(torch.get_rng_state(), before)  # the look at a batch must not move the run's shuffling
    example = {"input_ids": torch.stack([d["input_ids"] for d in data[:2]])}
    want = freezeout.find_layers(model, example)
    assert [id(x) for x in handle.layers] == [id(x) for x in want]


def test_bad_arguments_are_named(tmp_path, monkeypatch):
    model = tiny_bert("classify")

    def trainer(**kwargs):
        return Trainer(model=model, args=arguments(tmp_path), train_dataset=token_data(8), **kwargs)

    with pytest.raises(ValueError, match=r"transformers\.Trainer"):
        add_freezeout(object())
    with pytest.raises(ValueError, match="t0"):
        add_freezeout(trainer(), t0=1.5)
    with pytest.raises(ValueError, match="layers"):
        add_freezeout(trainer(), layers=model.bert)
    t = trainer()
    add_freezeout(t, layers=bert_layers)
    with pytest.raises(ValueError, match="already"):
        add_freezeout(t)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="LR scheduler"):
        add_freezeout(trainer(optimizers=(opt, torch.optim.lr_scheduler.StepLR(opt, 1))))
    t = trainer(optimizer_cls_and_kwargs=(lambda: None, {}))  # a factory building its own groups (Muon-style)
    add_freezeout(t, layers=bert_layers)
    with pytest.raises(ValueError, match="own parameter groups"):
        t.create_optimizer()
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "freezeout.integrations.transformers")
    with pytest.raises(ImportError, match=r"freezeout\[transformers\]"):
        importlib.import_module("freezeout.integrations.transformers")


# peft 0.21 still calls transformers' deprecated is_gradient_checkpointing: not ours to fix
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_lora_on_a_language_model_trains_to_the_end_with_a_nonzero_logged_lr(tmp_path):
    peft = pytest.importorskip("peft", reason="LoRA adapters need the [peft] extra")
    base = tiny_gpt2(layers=3)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)  # GPT-2's Conv1D
    model = peft.get_peft_model(base, config)
    blocks = list(base.transformer.h)  # only the adapters inside the blocks train: nothing outside the layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".h." in n and "lora_" in n for n in trainable)
    last = {n: p.detach().clone() for n, p in blocks[-1].named_parameters() if p.requires_grad}
    trainer = Trainer(model=model, args=arguments(tmp_path, max_steps=8), train_dataset=token_data(32, lm=True))
    handle = add_freezeout(trainer, layers=blocks, t0=T0)
    trainer.train()  # the last freeze must not leave backward with nothing to do
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 8 and all(e["learning_rate"] > 0 for e in logged[1:])
    assert logged[-1]["freezeout/num_frozen"] == len(blocks) - 1  # the last block trained to the end
    now = dict(blocks[-1].named_parameters())
    assert any(not torch.equal(v, now[n]) for n, v in last.items())
    assert handle.controller.closed


def test_a_second_train_runs_freezeout_afresh(tmp_path):
    model = tiny_bert("classify")
    trainer = Trainer(model=model, args=arguments(tmp_path, max_steps=4), train_dataset=token_data(16))
    handle = add_freezeout(trainer, layers=bert_layers, t0=T0)
    trainer.train()
    first = handle.controller
    assert first.closed and first.num_frozen > 0 and all(p.requires_grad for p in model.parameters())
    embeddings = {k: v.clone() for k, v in model.bert.embeddings.state_dict().items()}
    trainer.train()
    assert handle.controller is not first and handle.controller.step_count == 4
    now = model.bert.embeddings.state_dict()
    assert any(not torch.equal(v, now[k]) for k, v in embeddings.items())  # layer 0 trained again, not the head alone


def test_the_fuse_option_reaches_freezeout(tmp_path):
    for fuse in (True, False):
        trainer = Trainer(model=tiny_bert("classify"), args=arguments(tmp_path), train_dataset=token_data(4))
        handle = add_freezeout(trainer, layers=bert_layers, fuse=fuse)
        trainer.create_optimizer_and_scheduler(num_training_steps=2)  # what train() calls first
        assert handle.controller.fuse is fuse
    with pytest.raises(ValueError, match="fuse must be True or False"):
        add_freezeout(Trainer(model=tiny_bert("classify"), args=arguments(tmp_path)), fuse="no")


def test_a_users_lr_scheduler_type_is_named_as_unused(tmp_path):
    trainer = Trainer(model=tiny_bert("classify"), args=arguments(tmp_path, lr_scheduler_type="cosine"))
    add_freezeout(trainer, layers=bert_layers)
    with pytest.warns(freezeout.ScheduleWarning, match="lr_scheduler_type='cosine' is not used"):
        trainer.create_optimizer_and_scheduler(num_training_steps=2)


def test_a_users_own_single_group_optimizer_is_split_and_keeps_its_options(tmp_path):
    model = tiny_bert("classify")
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.8, 0.9), weight_decay=0.03)  # one group, as built
    trainer = Trainer(model=model, args=arguments(tmp_path, max_steps=6), train_dataset=token_data(24),
                      optimizers=(opt, None))  # fmt: skip
    handle = add_freezeout(trainer, layers=bert_layers, t0=T0)
    trainer.train()
    c, layers = handle.controller, bert_layers(model)
    assert c.optimizer.param_groups is opt.param_groups  # accelerate wraps the optimizer, its groups are the user's
    assert len(opt.param_groups) == len(layers) + 1
    assert [owner(g["params"], layers) for g in opt.param_groups] == c.group_layers == [*range(len(layers)), 3]
    assert {(g["betas"], g["weight_decay"]) for g in opt.param_groups} == {((0.8, 0.9), 0.03)}
    n = len(layers)
    for g, i in zip(opt.param_groups, c.group_layers):
        assert g["lr"] == pytest.approx(closed_form(6, 6, i, n, 0), abs=1e-18)
