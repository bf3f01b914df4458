"""Lightning as its own docs have users write it: the optimizer as configure_optimizers builds it, resumed with
fit(ckpt_path=...) in any group layout; FreezeOut returned as the lr_scheduler; a user's scheduler refused with how
to keep its warmup; the first layer's LR logged beside the head's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="the Lightning callback needs the [lightning] extra")

import freezeout  # noqa: E402
from freezeout.integrations.lightning import FreezeOutCallback  # noqa: E402
from tests.helpers.drop_in import closed_form_lr  # noqa: E402
from tests.helpers.models import TinyNet  # noqa: E402

pytestmark = [  # Lightning's advice for tiny CPU runs, and its use of a deprecated torch API: not ours
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*number of training batches.*is smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),  # resuming into it
]
EPOCHS, BATCHES = 3, 4


def decay_groups(m):  # nanoGPT's: each group spans every layer
    decay = [p for p in m.parameters() if p.dim() >= 2]
    rest = [p for p in m.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-2)


LAYOUTS = {  # configure_optimizers as users write it
    "one-group": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2),
    "decay-groups": decay_groups,
    "per-layer": lambda m: torch.optim.SGD(freezeout.param_groups(m.net, m.net.layers), lr=0.1, momentum=0.9),
}


class Module(pl.LightningModule):
    def __init__(self, layout: str = "one-group", scheduler=None, interval: str = "step") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyNet()
        for m in self.net.modules():
            if isinstance(m, nn.Dropout):  # Lightning's checkpoints do not carry the RNG: no randomness in training
                m.p = 0.0
        self.layout, self.scheduler, self.interval = layout, scheduler, interval

    def freezable_layers(self):
        return self.net.layers

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = LAYOUTS[self.layout](self)
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(self, opt), "interval": self.interval}}


def freezeout_scheduler(module, opt):
    """FreezeOut built in configure_optimizers, where Lightning's docs build a scheduler."""
    total = module.trainer.estimated_stepping_batches
    return freezeout.FreezeOut(opt, module.net.layers, total_steps=total, t0=0.5, warmup_steps=2)


def loader():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(BATCHES * 4, 3, 8, 8, generator=g), torch.arange(16) % 3)
    return torch.utils.data.DataLoader(data, batch_size=4)


class Lrs(pl.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        self.rows.append((trainer.global_step, [g["lr"] for g in opt.param_groups], dict(trainer.callback_metrics)))


def fit(module, callbacks, folder, ckpt=None, **kw):
    from lightning.pytorch.callbacks import ModelCheckpoint

    save = ModelCheckpoint(dirpath=folder, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = pl.Trainer(
        callbacks=[*callbacks, save], enable_progress_bar=False, logger=False, enable_model_summary=False,
        accelerator="cpu", deterministic=True, log_every_n_steps=1, **{"max_epochs": EPOCHS, **kw},
    )  # fmt: skip
    pl.seed_everything(0, verbose=False)
    trainer.fit(module, loader(), ckpt_path=ckpt)
    return trainer


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), f"resumed run differs in {k}"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_resume_with_the_optimizer_as_the_user_built_it_is_bit_identical(tmp_path, layout):
    straight, callback = Module(layout), FreezeOutCallback(t0=0.5)
    fit(straight, [callback], tmp_path)
    groups = len(callback.controller.optimizer.param_groups)
    assert callback.controller.num_frozen == 4 and groups >= 5  # split per layer
    saved = torch.load(tmp_path / "epoch=0.ckpt", weights_only=False)
    assert len(saved["optimizer_states"][0]["param_groups"]) == groups  # the checkpoint holds the split layout
    resumed, again = Module(layout), FreezeOutCallback(t0=0.5)
    fit(resumed, [again], tmp_path, ckpt=str(tmp_path / "epoch=0.ckpt"))
    assert again.controller.step_count == EPOCHS * BATCHES and again.controller.num_frozen == 4
    assert_same(straight, resumed)


# Alone, on resume Lightning restores FreezeOut (frozen layers read eval mode, as frozen by hand) and then reports
# the modules in eval mode at the start of training; with the callback that report is not made (nothing is wrong)
EVAL_MODULES = "ignore:Found .* module.s. in eval mode at the start of training:UserWarning"


@pytest.mark.parametrize(
    "with_callback",
    [pytest.param(False, marks=pytest.mark.filterwarnings(EVAL_MODULES), id="alone"),
     pytest.param(True, id="adopted-by-the-callback")],
)  # fmt: skip
def test_freezeout_as_the_lr_scheduler_steps_per_optimizer_step_and_resumes(tmp_path, with_callback):
    callbacks = lambda: [FreezeOutCallback()] if with_callback else []  # noqa: E731
    lrs = Lrs()
    straight = Module("one-group", freezeout_scheduler)
    trainer = fit(straight, [*callbacks(), lrs], tmp_path / "a", accumulate_grad_batches=2)
    sched = trainer.lr_scheduler_configs[0].scheduler
    total = EPOCHS * BATCHES // 2
    assert sched.total_steps == total == sched.step_count and sched.num_frozen == 4
    n = len(straight.net.layers)
    for global_step, rates, _ in lrs.rows:  # one FreezeOut step per optimizer step: the paper's LRs at global_step
        owners = sched.group_layers
        want = [closed_form_lr(global_step, total, i if i < n else None, n, 1e-2, t0=0.5, warmup=2) for i in owners]
        assert rates == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert sched.closed == with_callback  # the callback closes what it adopted
    resumed = Module("one-group", freezeout_scheduler)
    trainer = fit(resumed, callbacks(), tmp_path / "a", ckpt=str(tmp_path / "a" / "epoch=0.ckpt"),
                  accumulate_grad_batches=2)  # fmt: skip
    assert trainer.lr_scheduler_configs[0].scheduler.step_count == total
    assert_same(straight, resumed)


def test_lightnings_default_epoch_interval_is_said(tmp_path):
    with pytest.warns(freezeout.ScheduleWarning, match=r"ran 4 times since the last FreezeOut.step\(\).*'interval'"):
        fit(Module("one-group", freezeout_scheduler, interval="epoch"), [], tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match=r"with 'interval': 'step' \(got interval='epoch', frequency=1\)"):
        fit(Module("one-group", freezeout_scheduler, interval="epoch"), [FreezeOutCallback()], tmp_path)


def hf_warmup(module, opt):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=12)


@pytest.mark.parametrize(
    ("scheduler", "advice"),
    [
        (lambda m, opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5), "warmup_steps=5"),
        (hf_warmup, "warmup_steps=3"),
        (lambda m, opt: torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=12), r"warmup_steps=W\) multiplies"),
    ],
    ids=["LinearLR", "transformers", "OneCycleLR"],
)
def test_a_users_scheduler_is_refused_with_how_to_keep_its_warmup(tmp_path, scheduler, advice):
    if scheduler is hf_warmup:
        pytest.importorskip("transformers")
    with pytest.raises(ValueError, match=rf"return no lr_scheduler .*{advice}"):
        fit(Module("one-group", scheduler), [FreezeOutCallback()], tmp_path)


def test_the_callback_logs_the_first_layers_lr_beside_the_heads(tmp_path):
    lrs = Lrs()
    callback = FreezeOutCallback(t0=0.5)
    fit(Module("per-layer"), [callback, lrs], tmp_path)
    c, n, total = callback.controller, 4, EPOCHS * BATCHES
    seen = set()
    for global_step, _, metrics in lrs.rows:
        frozen = freezeout.num_frozen_at(global_step, total, c.times)
        seen.add(frozen)
        if frozen == n:  # none is logged (callback_metrics keep the last value: first_layer_lr's None is tested alone)
            continue
        want = closed_form_lr(global_step, total, frozen, n, 0.1, t0=0.5)
        assert metrics["freezeout/lr_first_layer"].item() == pytest.approx(want, rel=1e-6)
        head = closed_form_lr(global_step, total, None, n, 0.1)
        assert metrics["freezeout/lr_head"].item() == pytest.approx(head, rel=1e-6)
    assert seen >= {0, 1, 2, 3}
