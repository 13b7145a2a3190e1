"""One command, two phases (--teacher-share): an EDM teacher, then the method from it; --resume in either phase."""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from consistency.checkpoint import read_checkpoint
from consistency.cli.train import share
from consistency.recipe import split_budget
from tests.test_cli import ROOT, TINY, call, main_py, refused, succeeds
from tests.test_faults import same_run, wait_for_step


def budgets(share_, **given):
    config = argparse.Namespace(teacher_share=share_, **{"minutes": None, "total_steps": None, "epochs": None, **given})
    return split_budget(config)


def test_the_budget_is_split_by_the_share():
    teacher, student = budgets(0.6, minutes=20)
    assert teacher["minutes"] == pytest.approx(12) and student["minutes"] == pytest.approx(8)
    assert teacher["total_steps"] is None and student["epochs"] is None
    assert budgets(0.6, total_steps=10) == ({"minutes": None, "total_steps": 6, "epochs": None},
                                            {"minutes": None, "total_steps": 4, "epochs": None})
    assert budgets(0.1, total_steps=3)[0]["total_steps"] == 1 and budgets(0.9, total_steps=3)[1]["total_steps"] == 1
    teacher, student = budgets(0.25, epochs=2.0, minutes=4)
    assert (teacher["epochs"], student["epochs"], teacher["minutes"]) == (0.5, 1.5, 1.0)
    with pytest.raises(ValueError, match="give --minutes, --steps or --epochs"):
        budgets(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        budgets(0.5, total_steps=1)
    assert share("0.6") == 0.6 and share("0") == 0
    for bad in ("1", "-0.1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"in \[0, 1\)"):
            share(bad)


def test_one_command_trains_the_teacher_then_tunes_it(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    proc = succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--method", "ect", "--teacher-share",
                              "0.5", "--steps", "4", "--checkpoint-every", "1", *TINY], capsys)
    teacher, student = read_checkpoint(out / "teacher" / "checkpoint.pt"), read_checkpoint(out / "checkpoint.pt")
    assert teacher.method["name"] == "edm" and teacher.step == teacher.total_steps == 2
    assert student.method["name"] == "ect" and student.step == student.total_steps == 2
    assert student.config["run"]["teacher"] == str(out / "teacher" / "checkpoint.pt")
    assert teacher.config["recipe"]["run"]["teacher_share"] == 0.5 and teacher.config["recipe"]["run"]["total_steps"] == 4
    assert "1/2 teacher (edm) step 2/2" in proc.stdout and "2/2 ect step 2/2" in proc.stdout  # the phase is named
    assert (out / "teacher" / "samples").is_dir() and (out / "loss_curve.png").is_file()
    # a second run into the same folder is refused, naming both ways on
    proc = call(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--method", "ect", "--teacher-share",
                          "0.5", "--steps", "4", *TINY], capsys)
    assert refused(proc, "already holds a run", "--resume", "--overwrite")
    # distillation needs a teacher: the message names both ways to get one
    proc = call(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "cd"), "--method", "cd", "--steps",
                          "2", *TINY], capsys)
    assert refused(proc, "--teacher CKPT", "--teacher-share")


@pytest.mark.parametrize("argv, message", [
    (["--method", "ict", "--teacher-share", "0.5"], "--method ict does not use one: drop --teacher-share"),
    (["--method", "cd", "--teacher-share", "0.5", "--teacher", "t.pt"], "not both"),
    (["--method", "ect", "--teacher-share", "1"], "in [0, 1)"),
    (["--method", "ect", "--teacher-share", "0.5", "--steps", "1"], "at least 2"),
])
def test_bad_two_phase_flags_are_refused(fake_mnist, tmp_path, capsys, argv, message):
    base = ["--data-root", str(fake_mnist), "--out", str(tmp_path / "run"), *TINY]
    proc = call(main_py, [*base, "--steps", "4", *argv] if "--steps" not in argv else [*base, *argv], capsys)
    assert refused(proc, message)
    assert not (tmp_path / "run" / "teacher" / "checkpoint.pt").exists()


def start(out: Path, mnist: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "main.py", "--data-root", str(mnist), "--out", str(out), "--method",
                             "ect", "--teacher-share", "0.5", "--steps", "80", "--checkpoint-every", "1",
                             "--lr-schedule", "constant", *TINY, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def interrupt(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    return err


def test_resume_in_either_phase_continues_the_same_run(fake_mnist, tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    call(main_py, ["--data-root", str(fake_mnist), "--out", str(full), "--method", "ect", "--teacher-share", "0.5",
                   "--steps", "80", "--checkpoint-every", "1", "--lr-schedule", "constant", *TINY], capsys)
    assert read_checkpoint(full / "teacher" / "checkpoint.pt").step == 40
    # cut in the teacher phase: --resume (as the message says) finishes the teacher, then trains the second phase
    proc = start(cut, fake_mnist)
    wait_for_step(cut / "teacher", 3)
    err = interrupt(proc)
    assert "Resume with: python main.py" in err and "--resume" in err
    assert 3 <= read_checkpoint(cut / "teacher" / "checkpoint.pt").step < 40 and not (cut / "checkpoint.pt").exists()
    # resumed with the original flags (the budget among them), and cut again in the second phase
    proc = start(cut, fake_mnist, "--resume")
    wait_for_step(cut, 3)
    err = interrupt(proc)
    assert same_run(cut / "teacher", full / "teacher")
    assert 3 <= read_checkpoint(cut / "checkpoint.pt").step < 40
    command = shlex.split(err.split("Resume with: ")[1])  # python main.py <the flags, --teacher-share too> --resume
    assert command[:2] == ["python", "main.py"] and "--teacher-share" in command
    succeeds(main_py, command[2:], capsys)
    assert same_run(cut, full)
    # finished: --resume alone (the run's own settings) extends the second phase by a new budget
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(cut), "--resume", "--steps", "42"], capsys)
    assert read_checkpoint(cut / "checkpoint.pt").step == 42 and same_run(cut / "teacher", full / "teacher")
    config = json.loads((cut / "config.json").read_text())
    assert config["run"]["teacher"] == str(cut / "teacher" / "checkpoint.pt") and config["trainer"]["total_steps"] == 42


def test_a_time_budget_is_split_and_a_finished_run_says_how_to_extend_it(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data-root", str(fake_mnist), "--out", str(out), "--method", "ect", "--teacher-share", "0.5",
            "--minutes", "0.1", *TINY]
    succeeds(main_py, argv, capsys)
    for phase in (out / "teacher", out):
        run = json.loads((phase / "run.json").read_text())
        assert run["seconds"] < 3.5 and run["step"] == read_checkpoint(phase / "checkpoint.pt").step > 0
    recipe = read_checkpoint(out / "teacher" / "checkpoint.pt").config["recipe"]["run"]
    assert recipe["minutes"] == 0.1 and recipe["method"] == "ect"
    assert json.loads((out / "config.json").read_text())["run"]["minutes"] == pytest.approx(0.05)
    # the same command again with --resume: nothing is retrained, the message says how to extend
    before = {p: p.read_bytes() for p in (out / "checkpoint.pt", out / "teacher" / "checkpoint.pt")}
    proc = call(main_py, [*argv, "--resume"], capsys)
    assert refused(proc, "both phases", "are finished", "without --teacher-share")
    assert all(p.read_bytes() == b for p, b in before.items())


def test_overwrite_starts_both_phases_again(fake_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--data-root", str(fake_mnist), "--out", str(out), "--method", "cd", "--teacher-share", "0.5", *TINY]
    succeeds(main_py, [*argv, "--steps", "4"], capsys)
    old_teacher = read_checkpoint(out / "teacher" / "checkpoint.pt").weights["model"]
    succeeds(main_py, [*argv, "--steps", "6", "--seed", "1", "--overwrite"], capsys)
    teacher, student = read_checkpoint(out / "teacher" / "checkpoint.pt"), read_checkpoint(out / "checkpoint.pt")
    assert teacher.step == 3 and student.step == 3 and student.method["name"] == "cd"
    assert not all(torch.equal(v, old_teacher[k]) for k, v in teacher.weights["model"].items())
