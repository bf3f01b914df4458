"""FreezeOutCallback in a real Lightning Trainer on CPU: schedule, freezing, accumulation, exact resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch", reason="the Lightning callback needs the [lightning] extra")

import freezeout  # noqa: E402
from freezeout.accel.fold import is_folded  # noqa: E402
from freezeout.integrations.lightning import FreezeOutCallback  # noqa: E402

# Lightning's advice for tiny CPU runs, not problems of the code under test.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*number of training batches.*is smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    # Lightning 2.6 still builds torch's LeafSpec, deprecated in torch 2.13: not ours to fix.
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
]
EPOCHS, BATCHES, BS = 2, 6, 8


class Net(pl.LightningModule):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()) for _ in range(3)
        )
        self.fc = nn.Linear(width, 3)

    def freezable_layers(self) -> list[nn.Module]:
        return [self.stem, *self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.fc(x.mean((2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        groups = freezeout.param_groups(self, self.freezable_layers())
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(BATCHES * BS, 3, 6, 6, generator=g), torch.arange(48) % 3)
    return torch.utils.data.DataLoader(data, batch_size=BS, shuffle=False)


class Recorder(pl.Callback):
    """Runs after FreezeOutCallback: LRs, step counts, and each layer's state right after it froze."""

    def __init__(self, fo: FreezeOutCallback) -> None:
        self.fo, self.rows, self.frozen_at, self.fused = fo, [], {}, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        c = self.fo.controller
        self.rows.append((trainer.global_step, c.step_count, c.get_last_lr(), dict(trainer.callback_metrics)))
        for i in range(c.num_frozen):
            layer = c.layers[i]
            self.frozen_at.setdefault(i, {k: v.clone() for k, v in layer.state_dict().items()})
            self.fused.setdefault(i, (freezeout.is_frozen(layer), is_folded(layer)))


def trainer(callbacks, **kw) -> pl.Trainer:
    opts = dict(max_epochs=EPOCHS, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    opts.update(deterministic=True, enable_model_summary=False, accelerator="cpu", log_every_n_steps=1)
    return pl.Trainer(callbacks=callbacks, **{**opts, **kw})


def fit(t0=0.3, ckpt=None, callbacks=(), **kw):
    pl.seed_everything(0, verbose=False)
    model = Net()
    fo = FreezeOutCallback(t0=t0, schedule="linear", scale_lr=False, fuse=True)
    rec = Recorder(fo)
    tr = trainer([fo, rec, *callbacks], **kw)
    tr.fit(model, loader(), ckpt_path=ckpt)
    return model, fo, rec, tr


def test_lrs_follow_the_schedule_and_frozen_layers_stay_bit_identical():
    model, fo, rec, _ = fit()
    c = fo.controller
    total = EPOCHS * BATCHES
    assert c.total_steps == total and c.step_count == total and c.num_frozen == 4
    for global_step, count, lrs, metrics in rec.rows:
        assert count == global_step
        want = freezeout.learning_rates(global_step, total, c.times, c.base_lrs, scale_lr=False)
        assert lrs == pytest.approx(want, abs=0, rel=1e-12)
        assert metrics["freezeout/num_frozen"].item() == freezeout.num_frozen_at(global_step, total, c.times)
        assert metrics["freezeout/lr_head"].item() == pytest.approx(want[-1], rel=1e-6)
        training = want[freezeout.num_frozen_at(global_step, total, c.times) :]  # frozen layers (LR 0) left out
        assert metrics["freezeout/lr_max"].item() == pytest.approx(max(training), rel=1e-6)
        assert metrics["freezeout/lr_min"].item() == pytest.approx(min(training), rel=1e-6)
    # partly frozen steps, where the minimum over all groups (0) and over the training ones differ
    assert {freezeout.num_frozen_at(r[0], total, c.times) for r in rec.rows} >= {1, 2, 3}
    assert sorted(rec.frozen_at) == [0, 1, 2, 3]
    for i, snap in rec.frozen_at.items():
        now = model.freezable_layers()[i].state_dict()
        assert all(torch.equal(v, now[k]) for k, v in snap.items()), f"layer {i} moved after freezing"
    # every block's Conv -> BN ran folded (the stem has no BatchNorm): the checks above held with folding on
    assert [rec.fused[i] for i in range(4)] == [(True, False), (True, True), (True, True), (True, True)]
    # the end of fit closed FreezeOut: the module as it was handed in, with its trained weights
    assert not any(freezeout.is_frozen(m) or is_folded(m) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_gradient_accumulation_counts_optimizer_steps():
    _, fo, rec, _ = fit(accumulate_grad_batches=2)
    assert fo.controller.total_steps == EPOCHS * BATCHES // 2 == fo.controller.step_count
    assert [r[1] for r in rec.rows] == [r[0] for r in rec.rows] == [(i + 1) // 2 for i in range(EPOCHS * BATCHES)]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resuming into it: intended
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def ckpt(sub):
        return ModelCheckpoint(dirpath=tmp_path / sub, save_top_k=-1, every_n_epochs=1, filename="{epoch}")

    straight, fo_a, _, _ = fit(callbacks=[ckpt("a")], enable_checkpointing=True)
    first = tmp_path / "a" / "epoch=0.ckpt"
    saved = torch.load(first, weights_only=False)
    assert saved["callbacks"]["FreezeOutCallback"]["step_count"] == BATCHES
    assert saved["global_step"] == BATCHES
    resumed, fo_b, rec_b, _ = fit(ckpt=str(first), callbacks=[ckpt("a")], enable_checkpointing=True)
    assert fo_b.controller.step_count == fo_a.controller.step_count == EPOCHS * BATCHES
    assert rec_b.rows[0][0] == BATCHES + 1  # continued from the checkpoint's step, not from 0
    a, b = straight.state_dict(), resumed.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), f"resumed run differs in {k}"


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resuming into it: intended
def test_resume_with_another_configuration_is_refused(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def save():  # the same callback again on resume, as Lightning expects
        return ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")

    fit(t0=0.3, callbacks=[save()], enable_checkpointing=True)
    # Same run length, other t0: continuing would splice two different schedules together.
    with pytest.raises(ValueError, match=r"saved with a different configuration: t0: saved 0\.3, now 0\.5$"):
        fit(t0=0.5, ckpt=str(tmp_path / "epoch=0.ckpt"), callbacks=[save()], enable_checkpointing=True)


def test_layout_and_configuration_errors():
    class NoFreezable(Net):
        freezable_layers = None

        def configure_optimizers(self):
            return torch.optim.SGD(freezeout.param_groups(self, [self.stem, *self.blocks]), lr=0.1)

    class OneGroup(Net):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class WithScheduler(Net):
        def configure_optimizers(self):
            opt = super().configure_optimizers()
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    cases = [
        (NoFreezable, "needs a freezable_layers"),
        (WithScheduler, "return no lr_scheduler"),
    ]
    for cls, msg in cases:
        with pytest.raises(ValueError, match=msg):
            trainer([FreezeOutCallback()]).fit(cls(), loader())
    fo = FreezeOutCallback(t0=0.3)
    trainer([fo]).fit(OneGroup(), loader())  # a single group spanning every layer: split per layer
    assert len(fo.controller.optimizer.param_groups) == 5 and fo.controller.group_layers == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="needs a finite run"):
        trainer([FreezeOutCallback()], max_epochs=-1).fit(Net(), loader())


def test_used_with_non_lightning_objects():
    with pytest.raises(ValueError, match="layers must be None"):
        FreezeOutCallback(layers=3)
    cb = FreezeOutCallback(layers=lambda m: m.freezable_layers())
    with pytest.raises(ValueError, match=r"needs a lightning\.pytorch\.Trainer, got object"):
        cb.on_train_start(object(), Net())
    with pytest.raises(ValueError, match=r"needs a lightning\.pytorch\.LightningModule, got Linear"):
        cb.setup(trainer([cb]), nn.Linear(2, 2), "fit")


class Validated(Net):
    """With a validation loop: Lightning puts the module in eval mode for it and restores each module's mode by
    writing ``.training`` back (no ``train()`` call)."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y), batch_size=BS)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resuming into it: intended
def test_with_a_validation_loop_and_folding_resume_equals_the_uninterrupted_run(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(ckpt=None):
        pl.seed_everything(0, verbose=False)
        model = Validated()
        fo = FreezeOutCallback(t0=0.3, schedule="linear", scale_lr=False, fuse=True)
        rec = Recorder(fo)
        save = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
        tr = trainer([fo, rec, save], enable_checkpointing=True, val_check_interval=3)
        tr.fit(model, loader(), val_dataloaders=loader(), ckpt_path=ckpt)
        return model, rec

    straight, rec = run()
    assert rec.fused[1] == (True, True)  # the folds ran, through the validation loop's mode restores
    resumed, _ = run(str(tmp_path / "epoch=0.ckpt"))
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), f"resumed run differs in {k}"


def test_a_second_fit_runs_freezeout_afresh():
    model, fo, _, _ = fit()
    first = fo.controller
    assert first.closed and all(p.requires_grad for p in model.parameters())
    snapshot = {k: v.clone() for k, v in model.stem.state_dict().items()}
    rec = Recorder(fo)
    trainer([fo, rec]).fit(model, loader())
    assert fo.controller is not first and fo.controller.step_count == EPOCHS * BATCHES
    assert rec.rows[0][1] == 1  # its schedule began at step 0 again
    assert any(not torch.equal(v, model.stem.state_dict()[k]) for k, v in snapshot.items())  # the stem trained


def test_the_callbacks_options_reach_its_controller_with_the_users_single_group_optimizer():
    class OneGroup(Net):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)  # as built: split per layer

    callback = FreezeOutCallback(None, 0.5, "linear", warmup_steps=2, fuse=False)
    trainer([callback], max_epochs=1).fit(OneGroup(), loader())
    c = callback.controller
    assert c.options == freezeout.FreezeOutOptions(0.5, "linear", warmup_steps=2, fuse=False)
    assert c.times == freezeout.freeze_times(4, 0.5, "linear") and c.closed
