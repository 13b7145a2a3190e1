"""One list of settings (TrainerOptions), presets as overrides of RunConfig, and the run built by the library
(recipe.build_trainer) exactly as main.py builds it."""

import json
from dataclasses import asdict, fields

import pytest
import torch

from consistency import ConsistencyTrainer, RunConfig, TrainerOptions, build_trainer, mnist_dataset
from consistency.presets import MNIST_CPU, Preset
from consistency.recipe import plan
from tests.conftest import tiny_model
from tests.test_cli import TINY, main_py, succeeds
from tests.test_trainer import loader_of


def test_the_trainer_records_every_option_and_keywords_override_options(tmp_path):
    options = TrainerOptions(lr=3e-3, lr_schedule="cosine", total_steps=4, device="cpu", progress=False,
                             sample_every=0, warmup_steps=2)
    trainer = ConsistencyTrainer(tiny_model(), loader_of(), options=options, out_dir=tmp_path, lr=2e-3)
    assert trainer.options.lr == 2e-3 and options.lr == 3e-3  # a keyword overrides; the caller's options are untouched
    trainer.train()
    recorded = json.loads((tmp_path / "config.json").read_text())["trainer"]
    assert set(recorded) == {f.name for f in fields(TrainerOptions)}  # nothing can be left out of config.json
    assert recorded == json.loads(json.dumps(asdict(trainer.options)))
    # warm-up then cosine: lr(k) = 2e-3 * min(1, (k + 1) / 2) * (0.05 + 0.95 * (1 + cos(pi k / 4)) / 2)
    assert trainer.history["lr"][0] == pytest.approx(2e-3 * 0.5) and trainer.history["lr"][1] < 2e-3
    with pytest.raises(TypeError, match="unknown option.*learning_rate"):
        ConsistencyTrainer(tiny_model(), loader_of(), learning_rate=1e-3)
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        TrainerOptions(warmup_steps=-1)


def test_presets_are_overrides_of_run_config():
    config = MNIST_CPU.config(lr=5e-4, method="cd")
    assert config.lr == 5e-4 and "lr" not in config.preset_filled and "width" in config.preset_filled
    assert config.width == 32 and config.total_steps == 4000 and config.method_options == {"num_scales": 10}
    assert MNIST_CPU.config(minutes=3).total_steps is None  # a time budget: the step count is fitted to it
    assert MNIST_CPU.batch_size == 64 and MNIST_CPU.warmup_steps == 0  # the preset's value, else RunConfig's default
    assert MNIST_CPU.config(method="cd", method_options={"num_scales": 4}).method_options == {"num_scales": 4}
    assert isinstance(MNIST_CPU.config(), TrainerOptions)  # a RunConfig is a TrainerOptions: no field is repeated
    with pytest.raises(ValueError, match="not RunConfig fields"):
        Preset("bad", {"widht": 3})
    with pytest.raises(TypeError, match="unknown run setting"):
        MNIST_CPU.config(widht=3)
    with pytest.raises(ValueError, match="has no option s1"):
        MNIST_CPU.config(method="cd", method_options={"s1": 3})


def test_a_two_phase_run_is_a_list_of_phases(tmp_path):
    config = MNIST_CPU.config(method="cd", teacher_share=0.6, minutes=10, out=str(tmp_path))
    teacher, student = plan(config)
    assert teacher.config.method == "edm" and teacher.config.minutes == pytest.approx(6)
    assert teacher.config.out == str(tmp_path / "teacher") and teacher.record["recipe"]["run"]["method"] == "cd"
    assert student.config.teacher == str(tmp_path / "teacher" / "checkpoint.pt")
    assert student.config.minutes == pytest.approx(4) and student.config.teacher_share == 0
    with pytest.raises(ValueError, match="recipe.plan"):  # build_trainer builds one run: each phase is one
        build_trainer(config, None, image_shape=(1, 28, 28))
    assert plan(MNIST_CPU.config(method="cd", teacher="t.pt")) == [(MNIST_CPU.config(method="cd", teacher="t.pt"), {},
                                                                     None)]


def test_build_trainer_writes_the_config_main_py_writes(fake_mnist, tmp_path, capsys):
    """A notebook builds what main.py trains: the same settings give the same config.json, a teacher's student
    included (its network comes from the teacher), and --warmup-steps reaches the trainer."""
    teacher = tmp_path / "teacher"
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(teacher), "--method", "edm", "--steps", "2", *TINY],
             capsys)
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "cli"), "--method", "cd", "--teacher",
                       str(teacher / "checkpoint.pt"), "--steps", "2", "--warmup-steps", "3", *TINY], capsys)
    config = MNIST_CPU.config(method="cd", teacher=str(teacher / "checkpoint.pt"), total_steps=2, warmup_steps=3,
                              out=str(tmp_path / "lib"), width=8, channel_mult=(1, 2), num_res_blocks=1, batch_size=8,
                              progress=False, sample_every=0, device="cpu", compile=False)
    assert isinstance(config, RunConfig)
    trainer = build_trainer(config, mnist_dataset(fake_mnist), image_shape=(1, 28, 28),
                            classes=[str(d) for d in range(10)], data={"dataset": "mnist", "data_root": str(fake_mnist)})
    trainer.train()
    cli, lib = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("cli", "lib"))
    assert cli["run"].pop("out") != lib["run"].pop("out")
    assert lib == cli
    assert cli["trainer"]["warmup_steps"] == 3 and cli["model"]["net"]["time_scale"] == 1.0  # the teacher's embedding
    assert trainer.history["lr"][0] == pytest.approx(cli["trainer"]["lr"] / 3)
    from consistency import read_checkpoint

    student, taught = read_checkpoint(tmp_path / "cli" / "checkpoint.pt"), read_checkpoint(teacher / "checkpoint.pt")
    assert student.model["net"] == taught.model["net"]
    assert all(torch.equal(a, b) for a, b in zip(student.weights["model"].values(), trainer.model.state_dict().values()))


def test_a_run_written_by_version_0_2_resumes(fake_mnist, tmp_path, capsys):
    """0.2 recorded the run's length as run.steps (preset-filled "steps") and fewer trainer settings: --resume reads it."""
    from consistency.checkpoint import read_checkpoint, save_checkpoint

    out = tmp_path / "run"
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--steps", "2", "--lr", "5e-4", *TINY], capsys)
    ckpt = read_checkpoint(out / "checkpoint.pt")
    old_run = ["method", "teacher", "teacher_share", "method_options", "width", "channel_mult", "num_res_blocks",
               "dropout", "class_conditional", "batch_size", "lr", "lr_schedule", "ema_decay", "ema_warmup",
               "precision", "compile", "channels_last", "out", "epochs", "minutes", "device", "seed", "sample_every",
               "checkpoint_every", "progress", "tensorboard", "num_workers", "flip"]
    run = {k: ckpt.config["run"][k] for k in old_run}
    ckpt.config["run"] = {**run, "steps": 2}
    ckpt.config["preset"]["filled"] = [*ckpt.config["preset"]["filled"], "steps"]
    ckpt.config["trainer"] = {k: ckpt.config["trainer"][k] for k in ("lr", "total_steps", "ema_decay", "ema_warmup",
                                                                     "grad_clip", "warmup_steps", "lr_schedule",
                                                                     "precision", "seed", "compile", "channels_last")}
    save_checkpoint(ckpt, out / "checkpoint.pt")
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--resume", "--steps", "3", "--no-progress"],
             capsys)
    resumed = json.loads((out / "config.json").read_text())
    assert read_checkpoint(out / "checkpoint.pt").step == 3 and resumed["run"]["lr"] == 5e-4
    assert resumed["trainer"]["total_steps"] == 3 and "steps" not in resumed["run"]
