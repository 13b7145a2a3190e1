import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from consistency import ConsistencyTrainer, ConsistencyTraining, ImprovedConsistencyTraining, load_model, make_loader
from consistency.checkpoint import atomic_save, read_checkpoint
from tests.conftest import ReconstructionLoss, synthetic_images, tiny_model


def make_trainer(loader, out_dir=None, loss=None, dropout=0.1, **kw):
    options = dict(lr=1e-3, total_steps=8, ema_decay=0.9, device="cpu", progress=False, log_every=1, seed=0,
                   sample_every=0, checkpoint_every=10**9, num_sample_images=4)
    options.update(kw)
    return ConsistencyTrainer(tiny_model(dropout=dropout), loader, loss=loss or ConsistencyTraining(), out_dir=out_dir, **options)


def test_trainer_lowers_the_loss_on_one_batch():
    x = synthetic_images(8)
    batch = (x, torch.zeros(8, dtype=torch.long))
    trainer = make_trainer([batch], loss=ReconstructionLoss(), dropout=0.0, lr=3e-3)
    first = trainer.step(batch)
    for _ in range(40):
        last = trainer.step(batch)
    assert last < 0.5 * first


@pytest.mark.parametrize("warmup", [True, False])
def test_sampling_ema_warmup(warmup):
    x = synthetic_images(8)
    trainer = make_trainer([x], loss=ReconstructionLoss(), dropout=0.0, ema_decay=0.999, ema_warmup=warmup)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.step(x)
    # update k = 0: warm-up decay (1 + 0) / (10 + 0) = 0.1, else the fixed 0.999
    decay = 0.1 if warmup else 0.999
    for e, p0, p1 in zip(trainer.ema.module.parameters(), before, trainer.model.parameters()):
        torch.testing.assert_close(e, decay * p0 + (1 - decay) * p1.detach())
    trainer.step_count = 50_000
    assert trainer.sampling_ema_decay() == 0.999  # capped at ema_decay
    trainer.step_count = 90
    assert trainer.sampling_ema_decay() == pytest.approx(0.91 if warmup else 0.999)
    assert trainer.config["ema_decay"] == 0.999 and trainer.config["ema_warmup"] is warmup


def test_exact_resume_continues_the_same_run(tmp_path):
    def loader():  # 4 batches per epoch: the interruption at step 3 falls mid-epoch, the run crosses an epoch
        return make_loader(TensorDataset(synthetic_images(32), torch.zeros(32, dtype=torch.long)), batch_size=8, seed=3)

    full = make_trainer(loader())
    full.train()
    first = make_trainer(loader(), out_dir=tmp_path / "a")
    first.train(3)
    resumed = make_trainer(loader(), out_dir=tmp_path / "b")
    resumed.load(tmp_path / "a" / "checkpoint.pt")
    assert resumed.step_count == 3
    resumed.train(5)
    assert resumed.history["loss"] == full.history["loss"]  # bit-identical, target EMA and dropout included
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(full.target.parameters(), resumed.target.parameters()):
        assert torch.equal(a, b)


def test_resume_warns_when_the_loss_differs(tmp_path):
    import warnings

    loader = make_loader(TensorDataset(synthetic_images(16)), batch_size=8)
    make_trainer(loader, out_dir=tmp_path, loss=ImprovedConsistencyTraining(s1=320)).train(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_trainer(loader, loss=ImprovedConsistencyTraining(s1=320)).load(tmp_path / "checkpoint.pt")  # same: silent
    with pytest.warns(UserWarning, match=r"another loss.*'s1': \(320, 1280\)"):
        make_trainer(loader, loss=ImprovedConsistencyTraining()).load(tmp_path / "checkpoint.pt")
    with pytest.warns(UserWarning, match=r"'distance_name': \('pseudo_huber', 'l2'\)"):
        make_trainer(loader, loss=ImprovedConsistencyTraining(s1=320, distance="l2")).load(tmp_path / "checkpoint.pt")
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["loss"]["distance_name"]  # a checkpoint from before the config recorded it
    atomic_save(ckpt, tmp_path / "old.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_trainer(loader, loss=ImprovedConsistencyTraining(s1=320)).load(tmp_path / "old.pt")


def test_checkpoint_round_trip_and_outputs(tmp_path):
    loader = make_loader(TensorDataset(synthetic_images(16)), batch_size=8)
    trainer = make_trainer(loader, out_dir=tmp_path, loss=ImprovedConsistencyTraining(), sample_steps=(1, 2))
    trainer.train(4)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # loadable without pickled code
    assert ckpt["step"] == 4 and ckpt["target"] is None and ckpt["image_shape"] == [1, 8, 8]
    assert {"model", "ema", "optimizer", "rng_cpu", "config", "history"} <= set(ckpt)
    for name in ("config.json", "loss_curve.png", "samples/final_1step.png", "samples/final_2step.png", "run.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "config.json").read_text())["loss"]["name"] == "ImprovedConsistencyTraining"
    model = load_model(tmp_path / "checkpoint.pt")
    for a, b in zip(model.parameters(), trainer.ema.module.parameters()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"a": 1}, path)

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_nan_loss_is_a_clear_error(tmp_path):
    x = synthetic_images(16)
    x[0, 0, 0, 0] = float("nan")
    trainer = make_trainer(make_loader(TensorDataset(x), batch_size=16), out_dir=tmp_path)
    with pytest.raises(FloatingPointError, match="loss became nan at step 1.*learning rate"):
        trainer.train(3)
    assert not (tmp_path / "checkpoint.pt").exists()  # nothing corrupt was written


def test_checkpoint_of_another_model_is_refused(tmp_path):
    loader = make_loader(TensorDataset(synthetic_images(16)), batch_size=8)
    trainer = make_trainer(loader, out_dir=tmp_path)
    trainer.train(1)
    other = ConsistencyTrainer(tiny_model(num_classes=10), loader, device="cpu", progress=False)
    with pytest.raises(ValueError, match="different model"):
        other.load(tmp_path / "checkpoint.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a consistency checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")


def test_wrong_channel_count_is_a_clear_error():
    loader = make_loader(TensorDataset(synthetic_images(16, channels=3)), batch_size=8)
    trainer = make_trainer(loader)
    with pytest.raises(ValueError, match="3 channels but the model expects 1"):
        trainer.train(1)


def test_time_budget_sets_the_curriculum_length():
    loader = make_loader(TensorDataset(synthetic_images(16)), batch_size=8)
    trainer = make_trainer(loader, total_steps=None)
    trainer.train(minutes=0.1)
    assert trainer.total_steps is not None and trainer.step_count >= 10
    assert trainer.step_count <= trainer.total_steps + 1
    with pytest.raises(ValueError, match="curriculum"):
        make_trainer(loader, total_steps=None).train()


def test_sample_uses_the_ema_and_is_seeded():
    loader = make_loader(TensorDataset(synthetic_images(16)), batch_size=8)
    trainer = make_trainer(loader)
    trainer.train(2)
    a, b = trainer.sample(3, steps=2, seed=5), trainer.sample(3, steps=2, seed=5)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b) and a.abs().max() <= 1
    assert not torch.equal(trainer.sample(3, use_ema=False), trainer.sample(3))
    assert math.isfinite(trainer.last_run["images_per_s"])


def test_cosine_learning_rate_schedule():
    loader = make_loader(TensorDataset(synthetic_images(16)), batch_size=8)
    trainer = make_trainer(loader, total_steps=100, lr=1e-3, lr_schedule="cosine")
    assert trainer.current_lr() == pytest.approx(1e-3)
    trainer.step_count = 50
    assert trainer.current_lr() == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    trainer.step_count = 100
    assert trainer.current_lr() == pytest.approx(5e-5)
    trainer.step_count = 0
    trainer.train(2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 100))))
    with pytest.raises(ValueError, match="lr_schedule"):
        make_trainer(loader, lr_schedule="step")
