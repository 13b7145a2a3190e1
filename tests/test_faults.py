"""Faults and bad input: every command line refuses bad input in one line and touches nothing; a malicious pickle
never runs; interrupts save and resume the same run; a full disk keeps the last checkpoint; stale temporaries go."""

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from consistency import ConsistencyTrainer, ImprovedConsistencyTraining, load_model, load_weights, make_loader
from consistency.checkpoint import CheckpointWriteError, atomic_save, read_checkpoint
from consistency.cli.colored_mnist import main as colored_main
from consistency.cli.edit import main as edit_main
from consistency.cli.evaluate import main as evaluate_main
from consistency.cli.export import main as export_main
from consistency.cli.sample import main as sample_main
from tests.conftest import synthetic_images, tiny_model
from tests.test_cli import ROOT, TINY, call, imagenet9_py, main_py, refused


def snapshot(root: Path) -> dict:
    """Every file under root with a hash of its bytes: 'nothing on disk changed' is snapshot equality."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding a trained run, an EDM teacher, inputs for the editors, a malicious and a NaN checkpoint."""
    from consistency import EDMLoss, mnist
    from consistency.images import save_grid
    from tests.conftest import write_idx

    root = tmp_path_factory.mktemp("faults")
    import numpy as np

    (root / "mnist").mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("t10k", 8)):
        write_idx(root / "mnist" / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        write_idx(root / "mnist" / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    for name, method in (("run", None), ("teacher", EDMLoss())):
        net = tiny_unet28()
        model = method.wrap(net) if method else ImprovedConsistencyTraining().wrap(net)
        ConsistencyTrainer(model, mnist(root / "mnist", batch_size=8, download=False, with_labels=False), method=method,
                           total_steps=2, device="cpu", progress=False, out_dir=root / name, sample_every=0).train()
    save_grid(torch.zeros(1, 1, 28, 28), root / "digit.png")

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {root / 'PWNED'}",)

    torch.save({"format": "consistency-checkpoint-v2", "evil": Evil()}, root / "evil.pt")
    from consistency.checkpoint import save_checkpoint

    ckpt = read_checkpoint(root / "run" / "checkpoint.pt")  # written as a diverged run writes it (a valid checksum)
    first = next(iter(ckpt.weights["ema"]))
    ckpt.weights["ema"][first] = torch.full_like(ckpt.weights["ema"][first], float("nan"))
    save_checkpoint(ckpt, root / "nan.pt")
    damaged_checkpoints(root)
    return root


def damaged_checkpoints(root: Path) -> None:
    """Checkpoints damaged in the ways a disk, a copy or a hand can damage them (issue 24)."""
    from consistency.checkpoint import save_checkpoint

    good = root / "run" / "checkpoint.pt"
    ckpt = read_checkpoint(good)
    cut = read_checkpoint(good)
    name = next(k for k, v in cut.weights["ema"].items() if v.ndim == 4)
    cut.weights["ema"][name] = cut.weights["ema"][name][:1]  # a weight cut to one channel
    cut.weights["model"][name] = cut.weights["model"][name][:1]
    save_checkpoint(cut, root / "cut.pt")
    ckpt.model["image_shape"] = [1, 28, -28]
    save_checkpoint(ckpt, root / "badshape.pt")
    data = bytearray(good.read_bytes())
    weight = read_checkpoint(good).weights["ema"][name].numpy().tobytes()
    at = bytes(data).find(weight)
    assert at > 0
    data[at + 5] ^= 0x40  # one flipped bit inside a weight: torch.load does not notice
    (root / "flipped.pt").write_bytes(bytes(data))
    (root / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "empty.pt").write_bytes(b"")
    (root / "random.pt").write_bytes(bytes(range(256)) * 8)


def tiny_unet28():
    from consistency import UNet

    return UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1)


def cases(root: Path):
    run, teacher, evil, nan = (str(root / "run" / "checkpoint.pt"), str(root / "teacher" / "checkpoint.pt"),
                               str(root / "evil.pt"), str(root / "nan.pt"))
    data = ["--data-root", str(root / "mnist"), "--out", str(root / "new")]
    digit = str(root / "digit.png")
    train = [
        ([*data, "--lr", "0"], "--lr: must be > 0"),
        ([*data, "--ema-decay", "1"], "must lie in [0, 1)"),
        ([*data, "--steps", "-1"], "must be a positive integer"),
        ([*data, "--width", "0"], "must be a positive integer"),
        ([*data, "--channel-mult", "0,1"], "positive integers"),
        ([*data, "--dropout", "1.5"], "must lie in [0, 1)"),
        ([*data, "--batch-size", "0"], "must be a positive integer"),
        ([*data, "--sample-every", "-1"], "must be >= 0"),
        ([*data, "--checkpoint-every", "x"], "expected an integer"),
        ([*data, "--minutes", "0"], "must be > 0"),
        ([*data, "--epochs", "-2"], "must be > 0"),
        ([*data, "--seed", "-1"], "must be >= 0"),
        ([*data, "--lr", "nan"], "finite number"),
        ([*data, "--method", "gan"], "invalid choice"),
        ([*data, "--s1", "5"], "s1 must be >= s0 = 10"),
        ([*data, "--method-arg", "s1=abc"], "s1 must be a number"),
        ([*data, "--method", "ect", "--method-arg", "q=0.5"], "q must be > 1"),
        ([*data, "--method", "ect", "--method-arg", "nope=1"], "has no option nope"),
        ([*data, "--method", "cd", "--teacher", teacher, "--mu", "1.0"], "must lie in [0, 1)"),
        ([*data, "--method", "cd", "--teacher", teacher, "--num-scales", "1"], "needs at least 2 levels"),
        ([*data, "--teacher", teacher], "does not use one"),
        ([*data, "--method", "cd", "--teacher", str(root / "none.pt")], "does not exist"),
        ([*data, "--method", "cd", "--teacher", run], "not a diffusion teacher"),
        ([*data, "--method", "cd", "--teacher", evil], "not a readable PyTorch checkpoint"),
        ([*data, "--resume", str(root / "none.pt")], "does not exist"),
        ([*data, "--resume", evil], "not a readable PyTorch checkpoint"),
        (["--data-root", str(root / "mnist"), "--out", str(root / "run")], "already holds a run"),
        ([*data, "--channel-mult", "1,2,2,2"], "divisible by 8"),
        (["--data-root", str(root / "mnist"), "--out", "/proc/forbidden/run"], "cannot be written"),
        (["--data-root", str(root / "missing"), "--out", str(root / "new")], "MNIST (train) not found"),
        # issue 24: tracebacks before, or wrong in silence
        ([*data, "--width", "3"], "must be even"),
        ([*data, "--method-arg", "p_std=1e999"], "finite"),
        ([*data, "--method-arg", "p_mean=1e300"], "p_mean must be such that"),
        ([*data, "--method-arg", "sigma_max=-1"], "sigma_max must be >"),
        ([*data, "--method-arg", "rho=0"], "rho must be > 0"),
        ([*data, "--method", "edm", "--method-arg", "sigma_min=5", "--method-arg", "sigma_max=1"],
         "sigma_max must be > sigma_min"),
        ([*data, "--method", "meanflow", "--method-arg", "sigma_max=-5"], "sigma_max must be >"),
        ([*data, "--method-arg", "sigma_data=0"], "sigma_data must be > 0"),
        ([*data, "--s1", "320", "--method-arg", "s1=1280"], "contradict"),
        ([*data, "--method", "ct", "--distance", "l2", "--method-arg", "distance=l1"], "contradict"),
        ([*data, "--method", "scm", "--method-arg", "adaptive_weighting=maybe"], "True or False"),
        ([*data, "--resume", str(root / "cut.pt"), "--no-class-conditional"], "do not fit"),
        ([*data, "--resume", str(root / "badshape.pt")], "image shape [1, 28, -28]"),
        ([*data, "--resume", str(root / "flipped.pt")], "checksum"),
        ([*data, "--resume", str(root / "truncated.pt")], "truncated or not a checkpoint"),
        ([*data, "--resume", str(root / "empty.pt")], "truncated or not a checkpoint"),
        ([*data, "--resume", str(root / "random.pt")], "truncated or not a checkpoint"),
        ([*data, "--resume", str(root / "run")], "is a folder"),
        ([*data, "--resume", nan, "--no-class-conditional"], "non-finite"),
        ([*data, "--resume", run, "--method", "cd"], "resume it with that method"),
        ([*data, "--resume", run, "--width", "16", "--steps", "4"], "(set by --width)"),
        (["--data-root", digit, "--out", str(root / "new")], "is a file"),
        # the third trial (guidance, model folders): refused before any training
        ([*data, "--sample-guidance", "2"], "(--sample-guidance) 2: this model cannot be guided"),
        ([*data, "--label-dropout", "0.1", "--sample-guidance", "-1,2"], "(--sample-guidance) -1: the guidance scale"),
        ([*data, "--lr", "-1e-3"], "argument --lr: must be > 0"),
        ([*data, "--method", "cd", "--teacher", teacher, "--method-arg", "guidance=(1.0,)"], "give a scale w >= 0"),
        ([*data, "--method", "cd", "--teacher", teacher, "--method-arg", "guidance=(4.0, 1.0)"], "w_min <= w_max"),
        ([*data, "--method", "meanflow", "--method-arg", "t_start=-0.5"], "t_start must be in [0, 1]"),
        ([*data, "--method", "meanflow", "--method-arg", "omega=nan"], "omega must be a finite number"),
    ]
    in9 = [
        (["--dataset", "folder", "--data-root", str(root / "none"), "--out", str(root / "new"), "--image-size", "8"],
         "does not exist"),
        (["--data-root", str(root), "--out", str(root / "new"), "--image-size", "8"], "ImageNet-9 class folders"),
        (["--dataset", "folder", "--data-root", str(root), "--out", str(root / "new"), "--image-size", "0"],
         "must be a positive integer"),
        (["--dataset", "folder", "--data-root", str(root), "--out", str(root / "new"), "--image-size", "30",
          "--channel-mult", "1,2,2"], "divisible by 4"),
        (["--dataset", "folder", "--data-root", str(root), "--out", str(root / "new"), "--num-workers", "-1"],
         "must be >= 0"),
        (["--dataset", "folder", "--data-root", str(root), "--out", str(root / "new"), "--image-size", "4096"],
         "needs about"),
        (["--dataset", "folder", "--data-root", digit, "--out", str(root / "new"), "--image-size", "8"], "is a file"),
    ]
    sample = [
        (["--checkpoint", run, "--n", "0", "--out", str(root / "s.npz")], "must be a positive integer"),
        (["--checkpoint", run, "--steps", "0", "--out", str(root / "s.npz")], "must be a positive integer"),
        (["--checkpoint", run, "--sigmas", "1,2", "--out", str(root / "s.npz")], "strictly decreasing"),
        (["--checkpoint", run, "--sigmas", "80,0.0001", "--out", str(root / "s.npz")], "sigma_min"),
        (["--checkpoint", run, "--sigmas", "200,1", "--out", str(root / "s.npz")], "sigma_max=80.0"),
        (["--checkpoint", run, "--sigmas", "80,x", "--out", str(root / "s.npz")], "comma-separated numbers"),
        (["--checkpoint", run, "--class-label", "3", "--out", str(root / "s.npz")], "not class-conditional"),
        (["--checkpoint", run, "--out", str(root / "nowhere" / "x" / "s.npz"), "--grid", "/proc/g.png"],
         "cannot be written"),
        (["--checkpoint", run, "--grid", run], "destroy the input"),
        (["--checkpoint", evil, "--out", str(root / "s.npz")], "not a readable PyTorch checkpoint"),
        (["--checkpoint", nan, "--out", str(root / "s.npz")], "non-finite ema weights"),
        (["--checkpoint", str(root / "digit.png"), "--out", str(root / "s.npz")], "not a readable PyTorch checkpoint"),
        (["--checkpoint", run, "--batch-size", "0", "--out", str(root / "s.npz")], "must be a positive integer"),
        (["--checkpoint", run], "give --out"),
        (["--checkpoint", run, "--grid", str(root / "g.txt")], "not an image extension"),
        (["--checkpoint", run, "--grid", str(root / "gridfile")], "not an image extension"),
        (["--checkpoint", run, "--out", str(root / "s.npz"), "--grid", str(root / "s.npz")], "not an image extension"),
        (["--checkpoint", run, "--out", str(root / "mysamples")], "end the name with .npz"),
        (["--checkpoint", run, "--sigmas", "nan", "--out", str(root / "s.npz")], "finite"),
        (["--checkpoint", str(root / "cut.pt"), "--out", str(root / "s.npz")], "do not fit"),
        (["--checkpoint", str(root / "badshape.pt"), "--out", str(root / "s.npz")], "image shape"),
        (["--checkpoint", str(root / "flipped.pt"), "--out", str(root / "s.npz")], "checksum"),
        (["--checkpoint", str(root / "truncated.pt"), "--out", str(root / "s.npz")], "truncated or not a checkpoint"),
        (["--checkpoint", str(root / "empty.pt"), "--out", str(root / "s.npz")], "truncated or not a checkpoint"),
        (["--checkpoint", str(root / "random.pt"), "--out", str(root / "s.npz")], "truncated or not a checkpoint"),
        (["--checkpoint", str(root / "run"), "--out", str(root / "s.npz")], "is a folder"),
        (["--checkpoint", run, "--guidance", "1e9", "--out", str(root / "s.npz")], "from 0 to 50"),
        (["--checkpoint", run, "--guidance", "-1", "--out", str(root / "s.npz")], "from 0 to 50"),
        (["--checkpoint", str(root / "nonexistent") + "/", "--out", str(root / "s.npz")], "does not exist"),
        (["--checkpoint", "pretrained/nope", "--out", str(root / "s.npz")], "no such model comes with"),
    ]
    evaluate = [  # checked before the data set and the yardstick's classifier (minutes) are touched
        (["--checkpoint", run, "--data-root", str(root / "mnist"), "--guidance", "nan"], "from 0 to 50"),
        (["--samples", str(root / "none.npz"), "--data-root", str(root / "mnist")], "no such file"),
    ]
    export = [
        (["--checkpoint", run, "--out", str(root / "run")], "holds a training run"),
        (["--checkpoint", run, "--out", str(root / "m"), "--guidance", "nan"], "from 0 to 50"),
        (["--checkpoint", run, "--out", str(root / "m"), "--steps", "0"], "must be a positive integer"),
        (["--checkpoint", run, "--out", str(root / "m"), "--metrics", digit], "--metrics"),
        (["--checkpoint", run, "--out", str(root / "m"), "--metrics", str(root / "none.jsonl")], "--metrics"),
    ]
    inp = ["--input", digit, "--out", str(root / "o.png")]
    edit = [
        (["super-resolve", "--checkpoint", run, *inp, "--factor", "0"], "must be a positive integer"),
        (["inpaint", "--checkpoint", run, *inp, "--box", "0,14,28,28", "--steps", "0"], "must be a positive integer"),
        (["interpolate", "--checkpoint", run, "--out", str(root / "o.png"), "--num", "0"], "must be a positive integer"),
        (["denoise", "--checkpoint", run, *inp, "--sigma", "0"], "must be > 0"),
        (["denoise", "--checkpoint", run, *inp, "--sigma", "500"], "sigma must lie in"),
        (["stroke", "--checkpoint", run, *inp, "--t-start", "500"], "t_start must lie in"),
        (["inpaint", "--checkpoint", run, *inp, "--box", "0,0,40,40"], "does not fit"),
        (["inpaint", "--checkpoint", run, *inp, "--mask", str(root / "none.png")], "No such file"),
        (["inpaint", "--checkpoint", run, "--input", str(root / "none.png"), "--out", str(root / "o.png"), "--box",
          "0,14,28,28"], "No such file"),
        (["inpaint", "--checkpoint", run, "--input", digit, "--out", digit, "--box", "0,14,28,28"], "destroy the input"),
        (["denoise", "--checkpoint", teacher, *inp], "not a consistency model"),
        (["denoise", "--checkpoint", run, *inp, "--class-label", "1"], "not class-conditional"),
        (["denoise", "--checkpoint", evil, *inp], "not a readable PyTorch checkpoint"),
        (["denoise", "--checkpoint", nan, *inp], "non-finite ema weights"),
        (["colorize", "--checkpoint", run, *inp], "RGB"),
        (["denoise", "--checkpoint", run, "--input", digit, "--out", str(root / "o.txt")], "not an image extension"),
        (["denoise", "--checkpoint", str(root / "flipped.pt"), *inp], "checksum"),
    ]
    colored = [(["--data-root", str(root / "mnist"), "--out", str(root / "new"), "--size", "20000"], "28..512")]
    return ([(main_py, a, m) for a, m in train] + [(imagenet9_py, a, m) for a, m in in9]
            + [(sample_main, a, m) for a, m in sample] + [(edit_main, a, m) for a, m in edit]
            + [(colored_main, a, m) for a, m in colored] + [(evaluate_main, a, m) for a, m in evaluate]
            + [(export_main, a, m) for a, m in export])


def test_bad_input_to_every_command_line_is_one_line_and_touches_nothing(workdir, capsys):
    before = snapshot(workdir)
    for main, argv, message in cases(workdir):
        proc = call(main, [*(TINY if main in (main_py, imagenet9_py) else []), *argv], capsys)  # the case wins
        assert "Traceback" not in proc.stderr, (argv, proc.stderr)
        assert refused(proc, message), (main.__module__, argv)
        assert len(proc.stderr.strip().splitlines()) == 1, (argv, proc.stderr)
        assert snapshot(workdir) == before, (main.__module__, argv)
    assert not (workdir / "PWNED").exists()


def test_a_malicious_pickle_never_runs_through_any_entry_point(workdir):
    evil = workdir / "evil.pt"
    for load in (read_checkpoint, load_model, lambda p: load_weights(tiny_model(), p),
                 lambda p: ConsistencyTrainer(tiny_model(), make_loader(
                     torch.utils.data.TensorDataset(synthetic_images(8)), batch_size=8), device="cpu").load(p)):
        with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
            load(evil)
    assert not (workdir / "PWNED").exists()


def test_a_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    loader = make_loader(torch.utils.data.TensorDataset(synthetic_images(16)), batch_size=8)
    trainer = ConsistencyTrainer(tiny_model(), loader, total_steps=4, device="cpu", progress=False, out_dir=tmp_path,
                                 sample_every=0, checkpoint_every=2)
    trainer.train(2)
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/12: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr("consistency.utils._free_bytes", lambda path: 1024)  # as a full disk reports
    with pytest.raises(CheckpointWriteError, match="the disk is full: the previous checkpoint there is intact. Free some space and resume"):
        trainer.train(2)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
    with pytest.raises(OSError, match="disk full"):  # and any OSError keeps its message
        def broken(obj, f, *a, **k):
            raise OSError("disk full")

        monkeypatch.setattr(torch, "save", broken)
        atomic_save({"a": 1}, tmp_path / "x.pt")
    for error, fix in ((PermissionError(errno.EACCES, "Permission denied"), "Fix the folder's permission and resume"),
                       (OSError(errno.ELOOP, "Too many levels of symbolic links"), "Fix what it names and resume")):
        def failing(obj, f, *a, error=error, **k):
            raise error

        monkeypatch.setattr(torch, "save", failing)
        with pytest.raises(CheckpointWriteError, match=fix) as caught:  # the advice fits the cause: not "free space"
            atomic_save({"a": 1}, tmp_path / "y.pt")
        assert "space" not in str(caught.value)


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    loader = make_loader(torch.utils.data.TensorDataset(synthetic_images(16)), batch_size=8)
    (tmp_path / ".checkpoint.pt.tmp4242").write_bytes(b"half a checkpoint")
    ConsistencyTrainer(tiny_model(), loader, total_steps=1, device="cpu", progress=False, out_dir=tmp_path,
                       sample_every=0).train()
    assert not (tmp_path / ".checkpoint.pt.tmp4242").exists() and (tmp_path / "checkpoint.pt").is_file()


def start(out: Path, mnist: Path, steps: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "main.py", "--data-root", str(mnist), "--out", str(out), "--steps",
                             str(steps), "--checkpoint-every", "1", "--lr-schedule", "constant", *TINY, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_step(out: Path, step: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        log = out / "log.jsonl"
        if log.is_file() and log.read_text().count("\n") >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step}")


def same_run(a: Path, b: Path) -> bool:
    x, y = read_checkpoint(a / "checkpoint.pt"), read_checkpoint(b / "checkpoint.pt")
    return x.step == y.step and x.history["loss"] == y.history["loss"] and all(
        torch.equal(v, y.weights["model"][k]) for k, v in x.weights["model"].items())


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_an_interrupt_saves_the_step_and_resume_continues_the_same_run(fake_mnist, tmp_path, sig, capsys):
    steps = 40
    proc = start(tmp_path / "cut", fake_mnist, steps)
    wait_for_step(tmp_path / "cut", 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"stopped by {sig.name} at step" in err and "Resume with: python main.py" in err and "--resume" in err
    cut = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert 3 <= cut.step < steps
    call(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "cut"), "--resume", "--no-progress"], capsys)
    call(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "full"), "--steps", str(steps),
                   "--checkpoint-every", "1", "--lr-schedule", "constant", *TINY], capsys)
    assert same_run(tmp_path / "cut", tmp_path / "full")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_bit_for_bit(fake_mnist, tmp_path, capsys):
    """Killed without warning (a save may be half-written): the checkpoint always loads and the run resumes exactly."""
    import random

    steps, rng = 30, random.Random(0)
    call(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "full"), "--steps", str(steps),
                   "--checkpoint-every", "1", "--lr-schedule", "constant", *TINY], capsys)
    out = tmp_path / "killed"
    proc = start(out, fake_mnist, steps)
    for _ in range(4):
        wait_for_step(out, 2)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.communicate()
        read_checkpoint(out / "checkpoint.pt")  # always loadable
        proc = start(out, fake_mnist, steps, "--resume")
    assert proc.wait(timeout=300) == 0
    assert same_run(out, tmp_path / "full")


def test_an_interrupt_before_the_budget_fixed_the_length_leaves_it_open(tmp_path):
    """Cut before the speed was measured, a time-budgeted run is not 'finished': resumed, a budget fits its length."""
    from consistency.runtime import TrainingInterrupted

    loader = make_loader(torch.utils.data.TensorDataset(synthetic_images(16)), batch_size=8)
    trainer = ConsistencyTrainer(tiny_model(), loader, total_steps=None, device="cpu", progress=False,
                                 out_dir=tmp_path, sample_every=0)
    step = trainer._train_step

    def step_then_signal(batch):
        step(batch)
        os.kill(os.getpid(), signal.SIGTERM)

    trainer._train_step = step_then_signal
    with pytest.raises(TrainingInterrupted):
        trainer.train(minutes=1)
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt.step == 1 and ckpt.total_steps is None


def test_method_arg_words_and_a_sigterm_during_start_up(monkeypatch):
    """true / false / none as users type them; a SIGTERM while torchvision loads is not reported as a broken install."""
    import torchvision.utils

    from consistency.cli.doctor import torchvision_problem
    from consistency.cli.train import Terminated, parse_method_args

    assert parse_method_args(["prior_weighting=true", "adaptive_weighting=FALSE", "r=None", "pairs=sorted"]) == {
        "prior_weighting": True, "adaptive_weighting": False, "r": None, "pairs": "sorted"}
    monkeypatch.setattr(torchvision.utils, "make_grid", lambda *a, **k: (_ for _ in ()).throw(Terminated()))
    with pytest.raises(Terminated):
        torchvision_problem()


def test_resume_of_a_checkpoint_path_continues_in_its_folder(fake_mnist, tmp_path, capsys, monkeypatch):
    """`--resume RUN/checkpoint.pt` without --out continues RUN (it went to ./runs/mnist, a second copy, before)."""
    from tests.test_cli import succeeds

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "elsewhere"
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--steps", "2", *TINY], capsys)
    succeeds(main_py, ["--resume", str(out / "checkpoint.pt"), "--steps", "4", "--no-progress"], capsys)
    assert read_checkpoint(out / "checkpoint.pt").step == 4 and not (tmp_path / "runs").exists()
