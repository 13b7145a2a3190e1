"""Two phases in one command: an EDM teacher first, then the method started from it (--teacher-share).

    python main.py --minutes 20 --method ect --teacher-share 0.6   # 12 minutes of EDM into OUT/teacher, then 8 of ECT

The run's budget (--minutes, --steps or --epochs) is split: the teacher phase gets the share, the method the rest.
Both phases are ordinary runs with their own checkpoint: the teacher in OUT/teacher, the consistency model in OUT.
The teacher's config.json records the second phase ("recipe"), so `--resume` continues whichever phase was cut:
an unfinished teacher resumes and the second phase then starts with its planned budget; once the second phase has
begun, OUT/checkpoint.pt is a run of its own (its --teacher is OUT/teacher/checkpoint.pt) and resumes as any run.
"""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_checkpoint

BUDGETS = ("minutes", "steps", "epochs")


def is_two_phase(config: Any) -> bool:
    """A run that trains its own teacher first: a teacher share, and no --teacher but the run's own OUT/teacher."""
    return bool(config.teacher_share) and (
        not config.teacher or Path(config.teacher).resolve() == teacher_path(config.out).resolve())


def teacher_path(out: str | Path) -> Path:
    return Path(out) / "teacher" / "checkpoint.pt"


def split_budget(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(teacher's, method's) budgets: the share of each of --minutes, --steps and --epochs given, and the rest."""
    share = config.teacher_share
    teacher, student = {}, {}
    for key in BUDGETS:
        total = getattr(config, key)
        if total is None:
            teacher[key] = student[key] = None
        elif key == "steps":
            if total < 2:
                raise ValueError(f"--steps {total} cannot be split into two phases: give at least 2")
            teacher[key] = min(max(1, round(total * share)), total - 1)
            student[key] = total - teacher[key]
        else:
            teacher[key], student[key] = total * share, total * (1 - share)
    if all(v is None for v in teacher.values()):
        raise ValueError("--teacher-share splits the run's budget: give --minutes, --steps or --epochs")
    return teacher, student


def planned_run(out: str | Path) -> dict[str, Any] | None:
    """The settings of a two-phase run cut in its teacher phase (read from OUT/teacher), or None."""
    path = teacher_path(out)
    if not path.is_file():
        return None
    return read_checkpoint(path).config.get("recipe")


def check_fresh(config: Any) -> None:
    """A new two-phase run: neither phase's folder may hold a run unless --overwrite."""
    for path in (Path(config.out) / "checkpoint.pt", teacher_path(config.out)):
        if path.exists() and not config.overwrite:
            raise ValueError(f"{path.parent} already holds a run (checkpoint.pt). Continue it with --resume, train "
                             "a new one with a fresh --out, or replace it with --overwrite")


def train_two_phase(config: Any, train_one):
    """Train OUT/teacher (EDM), then config.method from it; returns the second phase's trainer.

    `train_one(config, label=..., recipe=...)` trains a single-phase run (consistency.cli.train.train). Resumed, the
    phases keep the budgets planned when the run began (a started phase its own step count), whatever budget the
    command repeats. A finished run is extended as any run: --resume with --minutes or --steps, no --teacher-share.
    """
    out, teacher_ckpt, student_ckpt = Path(config.out), teacher_path(config.out), Path(config.out) / "checkpoint.pt"
    if config.resume:
        plan = planned_run(out)
        if plan is None:
            raise ValueError(f"{out} holds no two-phase run to resume ({teacher_ckpt} is missing or was not written "
                             "by one): start it without --resume")
        config = replace(config, teacher_share=plan["run"]["teacher_share"],
                         **{k: plan["run"].get(k) for k in BUDGETS})
    else:
        check_fresh(config)
    teacher_budget, student_budget = split_budget(config)
    # the teacher is done once it finished, or once the second phase began from it
    teacher_done = bool(config.resume) and (student_ckpt.is_file() or finished(teacher_ckpt))
    if not teacher_done:
        filled = [k for k in config.preset_filled if not k.startswith("method_options.")]
        teacher = replace(config, method="edm", method_options={}, teacher=None, teacher_share=0.0,
                          out=str(teacher_ckpt.parent), preset_filled=filled,
                          resume=str(teacher_ckpt) if config.resume else None,
                          **(left_of(teacher_ckpt, teacher_budget) if config.resume else teacher_budget))
        if config.overwrite and not config.resume:  # a consistency model of an earlier run must not outlive its teacher
            student_ckpt.unlink(missing_ok=True)
        train_one(teacher, label=f"1/2 teacher ({teacher.method})", recipe=config.recorded())
        release_memory()
    resume = None
    if teacher_done and student_ckpt.is_file():
        if finished(student_ckpt):
            raise ValueError(f"both phases of the run in {out} are finished: extend the second with --resume and "
                             "--minutes M or --steps N (a new total), without --teacher-share")
        resume, student_budget = str(student_ckpt), left_of(student_ckpt, student_budget)
    student = replace(config, teacher=str(teacher_ckpt), teacher_share=0.0, resume=resume, **student_budget)
    return train_one(student, label=f"2/2 {student.method}", recipe=None)


def left_of(path: Path, planned: dict[str, Any]) -> dict[str, Any]:
    """The budget of a resumed phase: its own step count, or the planned budget if it was cut before one was fixed."""
    return planned if read_checkpoint(path).total_steps is None else dict.fromkeys(BUDGETS)


def finished(path: Path) -> bool:
    """Whether the run whose checkpoint is `path` completed (its run.json is written at the end of a run)."""
    ckpt = read_checkpoint(path)
    record = path.parent / "run.json"
    if record.is_file() and json.loads(record.read_text()).get("step") == ckpt.step:
        return True
    return ckpt.total_steps is not None and ckpt.step >= ckpt.total_steps


def release_memory() -> None:
    """Free the first phase's memory (its compiled graphs, its optimizer) before the second phase builds its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
