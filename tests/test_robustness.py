"""Reliability, second round (issue 24): the notebook API names the problem, one run per folder, SIGTERM between the
phases of a run, a resumed run remembers its data, a full disk while sampling or editing, a dead torchrun rank, the
install checks (`python -m consistency.doctor`)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from consistency import ConsistencyDistillation, UNet, load_weights, read_checkpoint
from consistency.cli.edit import main as edit_main
from consistency.cli.sample import main as sample_main
from tests.conftest import synthetic_images, tiny_model
from tests.test_cli import ROOT, TINY, call, main_py, refused, succeeds
from tests.test_trainer import make_trainer

X = synthetic_images(8)
Y = torch.arange(8) % 3


@pytest.mark.parametrize("batch, error, message", [
    ((X, Y + 3), ValueError, r"lie in 0\.\.2 .* got 3\.\.5"),
    ((X, Y - 1), ValueError, r"lie in 0\.\.2"),
    ((X, Y.view(-1, 1)), ValueError, r"shape \(8,\).*y\.view\(-1\)"),
    ((X, Y.float()), TypeError, r"integer tensor.*y\.long\(\)"),
    (((X * 127.5 + 127.5).to(torch.uint8), Y), TypeError, r"uint8.*x\.float\(\) / 127\.5 - 1"),
    ((X.double(), Y), TypeError, r"float64.*x\.float\(\)"),
    ((X * 127.5 + 127.5, Y), ValueError, r"span \[.*x / 127\.5 - 1"),
])
def test_the_notebook_api_names_the_problem_at_the_first_batch(batch, error, message):
    trainer = make_trainer([batch], model=tiny_model(num_classes=3))
    with pytest.raises(error, match=message):
        trainer.step(batch)
    assert trainer.step_count == 0


def test_the_notebook_api_refuses_what_cannot_work(tmp_path):
    trainer = make_trainer([X])
    with pytest.raises(ValueError, match="steps >= 1"):
        trainer.train(steps=-5)
    with pytest.raises(ValueError, match="minutes > 0"):
        trainer.train(minutes=0)
    with pytest.raises(TypeError, match="nn.Module or a callable"):
        ConsistencyDistillation("a string")
    with pytest.raises(ValueError, match="must be even"):
        UNet(1, base_channels=3)
    make_trainer([X], out_dir=tmp_path).train(1)
    with pytest.raises(ValueError, match=r"wrap it in cm\.ConsistencyModel"):
        load_weights(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1), tmp_path / "checkpoint.pt")


def test_two_runs_cannot_share_a_folder_and_a_dead_runs_lock_is_taken_over(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data-root", str(fake_mnist), "--out", str(out), *TINY]
    first = subprocess.Popen([sys.executable, "main.py", *argv, "--steps", "100000"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / ".lock").is_file(), first.stderr.read() if first.poll() is not None else "no lock"
        proc = call(main_py, [*argv, "--steps", "2", "--overwrite"], capsys)  # even --overwrite waits its turn
        assert refused(proc, "is in use by another run", f"pid {first.pid}", "another --out")
    finally:
        first.kill()  # SIGKILL: no chance to release the lock
        first.wait()
    assert (out / ".lock").is_file()
    proc = succeeds(main_py, [*argv, "--steps", "2", "--overwrite"], capsys)
    assert f"(pid {first.pid}" in proc.stderr and "taking its lock over" in proc.stderr
    assert not (out / ".lock").exists() and read_checkpoint(out / "checkpoint.pt").step == 2


def test_sigterm_between_the_two_phases_stops_with_the_resume_command(fake_mnist, tmp_path, capsys, monkeypatch):
    argv = ["--data-root", str(fake_mnist), "--out", str(tmp_path / "run"), "--method", "cd", "--teacher-share", "0.5",
            "--steps", "4", *TINY]
    monkeypatch.setattr("consistency.cli.train.release_memory", lambda: os.kill(os.getpid(), signal.SIGTERM))
    proc = call(main_py, argv, capsys)
    assert proc.returncode == 143 and "stopped by SIGTERM" in proc.stderr and "--resume" in proc.stderr
    assert read_checkpoint(tmp_path / "run" / "teacher" / "checkpoint.pt").step == 2  # the teacher phase is kept
    monkeypatch.undo()
    succeeds(main_py, [*argv, "--resume"], capsys)
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt").step == 2


def test_a_resumed_run_remembers_its_data(fake_mnist, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--steps", "2", *TINY], capsys)
    assert json.loads((out / "config.json").read_text())["data"]["data_root"] == str(fake_mnist.absolute())
    monkeypatch.chdir(tmp_path)  # no ./data here
    succeeds(main_py, ["--out", str(out), "--resume", "--steps", "3", "--no-progress"], capsys)
    assert read_checkpoint(out / "checkpoint.pt").step == 3


def test_a_full_disk_while_sampling_or_editing_leaves_no_file(fake_mnist, tmp_path, capsys, monkeypatch):
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "run"), "--steps", "1", *TINY], capsys)
    ckpt = str(tmp_path / "run" / "checkpoint.pt")

    def full(*args, **kwargs):  # np.savez_compressed(file, ...) or Image.save(self, file)
        Path(next(a for a in args if isinstance(a, (str, os.PathLike)))).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    proc = call(sample_main, ["--checkpoint", ckpt, "--n", "2", "--out", str(tmp_path / "s.npz")], capsys)
    assert refused(proc, "the disk is full", "nothing was written")
    assert proc.stderr.strip().splitlines()[-1].startswith("error: could not write")  # after the sampling bar: one line
    monkeypatch.setattr("PIL.Image.Image.save", full)
    proc = call(edit_main, ["interpolate", "--checkpoint", ckpt, "--class-label", "1", "--num", "2", "--out",
                            str(tmp_path / "o.png")], capsys)
    assert refused(proc, "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist", "run"]  # no truncated file, no temporary


def test_the_editing_example_refuses_a_malicious_checkpoint_in_one_line(fake_mnist, tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'PWNED'}",)

    torch.save({"format": "consistency-checkpoint-v2", "evil": Evil()}, tmp_path / "evil.pt")
    proc = subprocess.run([sys.executable, "examples/editing.py", "--checkpoint", str(tmp_path / "evil.pt"),
                           "--data-root", str(fake_mnist), "--out", str(tmp_path / "e.png")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "not a readable" in proc.stderr
    assert not (tmp_path / "PWNED").exists()
    for argv, message in ((["--out", str(tmp_path / "e.txt")], "not an image extension"),
                          (["--train-minutes", "nan"], "--train-minutes must be a positive number"),
                          (["--train-minutes", "1", "--checkpoint", "x.pt"], "not both")):
        proc = subprocess.run([sys.executable, "examples/editing.py", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr


def test_install_checks(fake_mnist, tmp_path, capsys, monkeypatch):
    from consistency.cli import doctor

    assert doctor.main(["--data-root", str(fake_mnist)]) == 0
    out = capsys.readouterr().out
    assert f"torch          {torch.__version__}" in out and "works with this torch" in out
    assert f"found in {fake_mnist}" in out
    assert doctor.main(["--data-root", str(tmp_path / "nowhere")]) == 1  # a data root given and empty: a problem
    monkeypatch.setattr("consistency.cli.train.torchvision_problem",
                        lambda: "torchvision 0.1 does not work with torch 9.9: install a matching pair")
    proc = call(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert refused(proc, "does not work with torch 9.9") and not (tmp_path / "run").exists()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
def test_a_dead_rank_stops_the_other_with_a_message_and_the_run_resumes(fake_mnist, tmp_path):
    """Kill one of two gloo ranks mid-run: the other exits within the collective timeout with a message, the last
    checkpoint is intact, and --resume continues the run."""
    out = tmp_path / "run"
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "main.py", "--data-root",
           str(fake_mnist), "--out", str(out), "--checkpoint-every", "2", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONSISTENCY_DIST_TIMEOUT": "30"}
    job = subprocess.Popen([*run, "--steps", "100000"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out / "checkpoint.pt").is_file() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.5)
    assert (out / "checkpoint.pt").is_file(), job.communicate()[1][-2000:]
    workers = _children(job.pid)
    victim = next(p for p in workers if "RANK=1\0" in Path(f"/proc/{p}/environ").read_text())
    began = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    _, err = job.communicate(timeout=240)
    assert time.monotonic() - began < 200 and job.returncode != 0
    assert "rank 0: a collective among the torchrun processes failed" in err and "resume with: torchrun" in err
    ckpt = read_checkpoint(out / "checkpoint.pt")  # intact: written atomically, checksum verified
    assert ckpt.step >= 2
    done = subprocess.run([*run, "--resume", "--steps", str(ckpt.step + 2)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_checkpoint(out / "checkpoint.pt").step == ckpt.step + 2
