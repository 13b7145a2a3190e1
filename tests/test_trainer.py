import json
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from consistency import (
    ConsistencyDistillation,
    ConsistencyModel,
    ConsistencyTrainer,
    ConsistencyTraining,
    EDMDenoiser,
    ImprovedConsistencyTraining,
    Method,
    MethodOutput,
    load_model,
    load_weights,
    make_loader,
)
from consistency.checkpoint import atomic_save, read_checkpoint
from consistency.runtime import TimeBudget
from tests.conftest import ReconstructionLoss, randomize_, synthetic_images, tiny_model, tiny_unet


def make_trainer(loader, out_dir=None, method=None, dropout=0.1, model=None, **kw):
    options = dict(lr=1e-3, total_steps=8, ema_decay=0.9, device="cpu", progress=False, log_every=1, seed=0,
                   sample_every=0, checkpoint_every=10**9, num_sample_images=4)
    options.update(kw)
    return ConsistencyTrainer(model or tiny_model(dropout=dropout), loader, method=method or ConsistencyTraining(),
                              out_dir=out_dir, **options)


def loader_of(n=16, channels=1, labels=False, batch=8, seed=0):
    x = synthetic_images(n, channels)
    data = TensorDataset(x, torch.arange(n) % 3) if labels else TensorDataset(x)
    return make_loader(data, batch_size=batch, seed=seed)


def test_trainer_lowers_the_loss_on_one_batch():
    x = synthetic_images(8)
    batch = (x, torch.zeros(8, dtype=torch.long))
    trainer = make_trainer([batch], method=ReconstructionLoss(), dropout=0.0, lr=3e-3)
    first = trainer.step(batch)
    for _ in range(40):
        last = trainer.step(batch)
    assert last < 0.5 * first


@pytest.mark.parametrize("warmup", [True, False])
def test_sampling_ema_warmup(warmup):
    x = synthetic_images(8)
    trainer = make_trainer([x], method=ReconstructionLoss(), dropout=0.0, ema_decay=0.999, ema_warmup=warmup)
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
    assert trainer.config["trainer"]["ema_decay"] == 0.999 and trainer.config["trainer"]["ema_warmup"] is warmup


@pytest.mark.parametrize("given", ["path", "read checkpoint"])
def test_exact_resume_continues_the_same_run(tmp_path, given):
    def loader():  # 4 batches per epoch: the interruption at step 3 falls mid-epoch, the run crosses an epoch
        return make_loader(TensorDataset(synthetic_images(32), torch.zeros(32, dtype=torch.long)), batch_size=8, seed=3)

    full = make_trainer(loader())
    full.train()
    first = make_trainer(loader(), out_dir=tmp_path / "a")
    first.train(3)
    resumed = make_trainer(loader(), out_dir=tmp_path / "b")
    path = tmp_path / "a" / "checkpoint.pt"
    resumed.load(path if given == "path" else read_checkpoint(path))  # the CLI reads it once and passes it on
    assert resumed.step_count == 3
    resumed.train(5)
    assert resumed.history["loss"] == full.history["loss"]  # bit-identical, target EMA and dropout included
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(full.target.parameters(), resumed.target.parameters()):
        assert torch.equal(a, b)
    rows = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and rows[-1]["loss"] == full.history["loss"][-1]


def test_resume_warns_when_the_method_settings_differ(tmp_path):
    loader = loader_of()
    make_trainer(loader, out_dir=tmp_path, method=ImprovedConsistencyTraining(s1=320)).train(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_trainer(loader, method=ImprovedConsistencyTraining(s1=320)).load(tmp_path / "checkpoint.pt")  # silent
    with pytest.warns(UserWarning, match=r"other ict settings.*'s1': \(320, 1280\)"):
        make_trainer(loader, method=ImprovedConsistencyTraining()).load(tmp_path / "checkpoint.pt")
    with pytest.warns(UserWarning, match=r"'distance_name': \('pseudo_huber', 'l2'\)"):
        make_trainer(loader, method=ImprovedConsistencyTraining(s1=320, distance="l2")).load(tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="trained with method 'ict', not 'ct'"):
        make_trainer(loader, method=ConsistencyTraining()).load(tmp_path / "checkpoint.pt")


def test_checkpoint_round_trip_and_outputs(tmp_path):
    trainer = make_trainer(loader_of(), out_dir=tmp_path, method=ImprovedConsistencyTraining(), sample_steps=(1, 2))
    trainer.train(4)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # loadable without pickled code
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt.step == 4 and ckpt.weights["target"] is None and ckpt.image_shape == (1, 8, 8)
    assert ckpt.method["name"] == "ict" and ckpt.sampler == "consistency" and raw["format"].endswith("v2")
    for name in ("config.json", "loss_curve.png", "log.jsonl", "samples/final_1step.png", "samples/final_2step.png",
                 "run.json"):
        assert (tmp_path / name).is_file(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"]["name"] == "ict" and config["trainer"]["total_steps"] == 8
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 4
    model = load_model(tmp_path / "checkpoint.pt")
    assert model.image_shape == (1, 8, 8)
    for a, b in zip(model.parameters(), trainer.ema.module.parameters()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_version_1_checkpoints_still_load(tmp_path):
    """A checkpoint written by consistency 0.1 (layout rebuilt here) loads for sampling and resumes training."""
    trainer = make_trainer(loader_of(), out_dir=tmp_path, method=ImprovedConsistencyTraining(s1=320), dropout=0.0)
    trainer.train(2)
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    net = dict(ckpt.model["net"])
    v1 = {"format": "consistency-checkpoint-v1",
          "model_config": {"wrapper": "ConsistencyModel", "net": net, "sigma_data": 0.5, "sigma_min": 0.002,
                           "sigma_max": 80.0},
          "image_shape": [1, 8, 8], "config": {"loss": {"name": "ImprovedConsistencyTraining", "s1": 320}, "lr": 1e-3},
          "model": ckpt.weights["model"], "ema": ckpt.weights["ema"], "target": None, "optimizer": ckpt.optimizer,
          "step": 2, "total_steps": 8, "history": {"step": [1, 2], "loss": [1.0, 0.5]}, "rng_cpu": ckpt.rng["cpu"],
          "rng_cuda": []}
    atomic_save(v1, tmp_path / "v1.pt")
    old = load_model(tmp_path / "v1.pt")
    assert all(torch.equal(a, b) for a, b in zip(old.parameters(), trainer.ema.module.parameters()))
    resumed = make_trainer(loader_of(), method=ImprovedConsistencyTraining(s1=320), dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load(tmp_path / "v1.pt")
    assert resumed.step_count == 2 and resumed.history["loss"] == [1.0, 0.5]
    resumed.train(1)


def test_a_model_of_your_own_trains_saves_and_loads(tmp_path):
    class Tiny(nn.Module):  # any network with the documented call and declared interface
        in_channels, num_classes = 1, None

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, sigma, class_labels=None):
            return self.conv(x)

    trainer = ConsistencyTrainer(Tiny(), loader_of(), method=ReconstructionLoss(), total_steps=3, device="cpu",
                                 progress=False, out_dir=tmp_path, sample_every=0)
    trainer.train()
    assert read_checkpoint(tmp_path / "checkpoint.pt").image_shape == (1, 8, 8)
    mine = load_weights(Tiny(), tmp_path / "checkpoint.pt")
    assert all(torch.equal(a, b) for a, b in zip(mine.parameters(), trainer.ema.module.parameters()))
    with pytest.raises(ValueError, match="model of your own.*load_weights"):
        load_model(tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="declares no in_channels"):
        ConsistencyTrainer(nn.Sequential(nn.Conv2d(1, 1, 1)), loader_of(), device="cpu")


def test_a_method_with_parameters_of_its_own_is_optimised_and_checkpointed(tmp_path):
    class LearnedScale(nn.Module, Method):  # a loss with a trainable parameter (like sCM's adaptive weighting)
        name = "learned-scale"

        def __init__(self):
            super().__init__()
            self.log_scale = nn.Parameter(torch.zeros(()))

        def __call__(self, model, target, x, class_labels=None, *, step, total_steps):
            err = (model(x * 0.5, torch.ones(len(x))) - x).square().flatten(1).mean(1)
            return MethodOutput(err * self.log_scale.exp() - self.log_scale)

    method = LearnedScale()
    trainer = make_trainer(loader_of(), method=method, dropout=0.0, out_dir=tmp_path, total_steps=4)
    trainer.train()
    assert method.log_scale.item() != 0.0  # the optimizer moved it
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(ckpt.weights["method"]["log_scale"], method.log_scale.detach())
    fresh = LearnedScale()
    make_trainer(loader_of(), method=fresh, dropout=0.0).load(tmp_path / "checkpoint.pt")
    assert torch.equal(fresh.log_scale, method.log_scale)


def recording(method_class):
    """A subclass of a method that records the online and target outputs of one shared pass per step."""
    from consistency.methods import consistency_pair

    class Recording(method_class):
        seen = []

        def __call__(self, model, target, x, class_labels=None, *, step, total_steps):
            t = torch.ones(len(x), device=x.device)
            online, target_out = consistency_pair(model, target, x, t, x, t, class_labels)
            self.seen.append((online.detach(), target_out))
            return super().__call__(model, target, x, class_labels, step=step, total_steps=total_steps)

    return Recording


def test_cd_target_network_shares_dropout_masks_with_the_student():
    """The defect: a student copied from an eval-mode teacher had an eval-mode target, so dropout ran online only."""
    teacher = EDMDenoiser(randomize_(tiny_unet())).eval()
    method = recording(ConsistencyDistillation)(teacher, num_scales=4)
    student = method.wrap(tiny_unet(dropout=0.5)).eval()  # built in eval mode, as load_model returns teachers
    trainer = make_trainer(loader_of(), method=method, model=student)
    trainer.step(next(iter(trainer.loader)))
    online, target_out = method.seen[0]
    assert trainer.target.training
    assert torch.equal(online, target_out)  # the target equals the student at step 0: same masks, same output


def test_nonfinite_step_never_reaches_the_weights():
    x = synthetic_images(8)
    trainer = make_trainer([x], dropout=0.0)
    trainer.step(x)
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    ema = [p.detach().clone() for p in trainer.ema.module.parameters()]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite at step 2.*skipped"):
        trainer.step(bad)
    assert all(torch.equal(a, b) for a, b in zip(weights, trainer.model.parameters()))
    assert all(torch.isfinite(p).all() for p in trainer.ema.module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ema, trainer.ema.module.parameters()))
    assert all(torch.isfinite(p).all() for p in trainer.target.module.parameters())


def test_a_diverging_run_stops_with_the_last_good_checkpoint_intact(tmp_path):
    x = synthetic_images(16)
    x[0, 0, 0, 0] = float("nan")  # the first batch of the second epoch holds it
    clean = make_loader(TensorDataset(synthetic_images(16)), batch_size=8)
    trainer = make_trainer(clean, out_dir=tmp_path, checkpoint_every=1, log_every=10)
    trainer.train(2)  # two good steps, checkpointed
    good = read_checkpoint(tmp_path / "checkpoint.pt")
    trainer.loader = make_loader(TensorDataset(x), batch_size=16)
    trainer._batches_per_epoch = 1
    with pytest.raises(FloatingPointError, match=f"non-finite at step 3.*{tmp_path}.*untouched"):
        trainer.train(3)
    after = read_checkpoint(tmp_path / "checkpoint.pt")
    assert after.step == 2 and all(torch.equal(good.weights["model"][k], v) for k, v in after.weights["model"].items())


def test_checkpoint_of_another_model_is_refused(tmp_path):
    loader = loader_of()
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


def test_a_method_with_another_noise_range_is_refused():
    with pytest.raises(ValueError, match="sigma_min is 0.01 but the model's is 0.002"):
        make_trainer(loader_of(), method=ImprovedConsistencyTraining(sigma_min=0.01))
    model = ConsistencyModel(tiny_unet(), sigma_min=0.01)
    make_trainer(loader_of(), method=ImprovedConsistencyTraining(sigma_min=0.01), model=model)  # matching: fine


def test_wrong_data_is_a_clear_error():
    trainer = make_trainer(loader_of(channels=3))
    with pytest.raises(ValueError, match="3 channels but the model expects 1"):
        trainer.train(1)
    trainer = make_trainer(loader_of(), model=tiny_model(num_classes=3))
    with pytest.raises(ValueError, match="class-conditional.*no labels"):
        trainer.train(1)
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        make_trainer(loader_of(), ema_decay=1.0)
    with pytest.raises(ValueError, match="lr must be a positive"):
        make_trainer(loader_of(), lr=0)


def test_time_budget_sets_the_curriculum_length():
    trainer = make_trainer(loader_of(), total_steps=None)
    trainer.train(minutes=0.1)
    assert trainer.total_steps is not None and trainer.step_count >= 10
    assert trainer.step_count <= trainer.total_steps + 1
    with pytest.raises(ValueError, match="curriculum"):
        make_trainer(loader_of(), total_steps=None).train()


@pytest.mark.parametrize("minutes, later, fits", [
    # 25 timed steps (t = 1001.5 to 1051.5), 2 s each; again when 10% of the budget (120 s) has passed
    (20.0, 2.0, {38: 38 + int(0.95 * (1200 - 51.5) / 2.0), 73: 73 + int(0.95 * (1200 - 121.5) / 2.0)}),
    (20.0, 1.5, {38: 38 + int(0.95 * (1200 - 51.5) / 2.0), 84: 84 + int(0.95 * (1200 - 120.5) / 1.5)}),  # faster later
    (2.0, 2.0, {16: 16 + int(0.95 * (120 - 7.5) / 2.0), 19: 19 + int(0.95 * (120 - 13.5) / 2.0)}),  # 5% came first
])
def test_time_budget_fits_the_run_to_the_measured_speed(monkeypatch, minutes, later, fits):
    clock = [1000.0]
    monkeypatch.setattr("consistency.runtime.time.monotonic", lambda: clock[0])
    budget = TimeBudget(10, steps=None, minutes=minutes, total_steps=None)
    fitted = {}
    first = min(fits)
    for step in range(11, 200):
        # 3 quick warm-up steps (not timed), then 2 s a step from step 13, and `later` s a step after the first fit
        clock[0] += 0.5 if step <= 13 else 2.0 if step <= first else later
        fitted[step] = budget.calibrate(step)
    assert {k: v for k, v in fitted.items() if v is not None} == fits  # twice, then never again
    total = fits[max(fits)]
    clock[0] = 1001.0  # before the deadline: the fitted step count ends the run
    assert budget.end_step == total and budget.running(total - 1) and not budget.running(total)
    clock[0] = 1000.0 + 60 * minutes
    assert not budget.running(first)  # past the deadline
    clock[0] = 1000.0
    capped = TimeBudget(0, steps=50, minutes=minutes, total_steps=None)  # train(steps=50, minutes=M): at most 50
    for step in range(1, 200):
        clock[0] += 2.0
        capped.calibrate(step)
    assert capped.end_step == 50
    fixed = TimeBudget(0, steps=40, minutes=None, total_steps=None)  # no deadline: nothing to fit
    assert all(fixed.calibrate(step) is None for step in range(1, 41)) and fixed.end_step == 40


def test_a_step_count_without_total_steps_trains_to_the_end():
    trainer = make_trainer(loader_of(), total_steps=None)
    trainer.train(30)  # past the 28 steps a time budget would time
    assert trainer.step_count == 30 and trainer.total_steps == 30


def test_sample_uses_the_ema_and_is_seeded():
    trainer = make_trainer(loader_of())
    trainer.train(2)
    a, b = trainer.sample(3, steps=2, seed=5), trainer.sample(3, steps=2, seed=5)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b) and a.abs().max() <= 1
    assert not torch.equal(trainer.sample(3, use_ema=False), trainer.sample(3))
    assert math.isfinite(trainer.last_run["images_per_s"])
    rng = torch.get_rng_state()
    trainer.sample(2, seed=None)
    assert torch.equal(rng, torch.get_rng_state())  # sampling leaves the training noise stream alone


def test_cosine_learning_rate_schedule():
    trainer = make_trainer(loader_of(), total_steps=100, lr=1e-3, lr_schedule="cosine")
    assert trainer.current_lr() == pytest.approx(1e-3)
    trainer.step_count = 50
    assert trainer.current_lr() == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    trainer.step_count = 100
    assert trainer.current_lr() == pytest.approx(5e-5)
    trainer.step_count = 0
    trainer.train(2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 100))))
    assert trainer.history["lr"][:2] == [pytest.approx(1e-3), trainer.optimizer.param_groups[0]["lr"]]
    with pytest.raises(ValueError, match="lr_schedule"):
        make_trainer(loader_of(), lr_schedule="step")


@pytest.mark.slow
def test_compiled_training_shares_dropout_masks_with_the_target():
    """--compile with dropout: online and target passes both run compiled, so they draw the same masks."""
    method = recording(ConsistencyTraining)()
    trainer = make_trainer(loader_of(), method=method, model=randomize_(tiny_model(dropout=0.5)), compile=True)
    trainer.step(next(iter(trainer.loader)))
    online, target_out = method.seen[0]
    assert (online - target_out).abs().max() < 1e-5  # an eager target draws other masks: differences of order 1
