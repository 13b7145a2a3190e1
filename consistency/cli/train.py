"""The training command line shared by main.py and main_imagenet9.py: flags -> RunConfig -> recipe.build_trainer -> train.

Where a setting comes from, strongest first: the flag the user gave; on --resume, the resumed run's own setting; the
preset for the device (consistency.presets); RunConfig's default (consistency.recipe). A flag whose dest is a RunConfig
field reaches the run with no other code: adding a trainer option to the command line is one add_argument line.
config.json records the result and which settings the preset filled.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shlex
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import read_checkpoint
from ..methods import DISTANCES, METHODS
from ..methods.cd import SOLVERS
from ..presets import Preset, merge
from ..recipe import RUN_FIELDS, RunConfig, build_trainer, plan, planned_run, release_memory, teacher_path, validate
from ..runtime import RunLock, TrainingInterrupted
from ..trainer import ConsistencyTrainer
from ..utils import resolve_device
from .args import float_tuple, int_tuple, nonneg_int, positive_float, positive_int, unit_interval
from .doctor import torchvision_problem

# Flags that choose a method option (the name is the method's keyword); --method-arg passes any other keyword.
OPTION_FLAGS = ("s1", "distance", "num_scales", "solver", "mu")
# Settings a resumed run keeps unless a flag says otherwise (not where it runs or for how long).
NOT_INHERITED = {"out", "resume", "overwrite", "steps", "total_steps", "epochs", "minutes", "device", "progress",
                 "progress_label", "num_workers", "tensorboard", "wandb"}


def add_training_args(parser: argparse.ArgumentParser, cpu: Preset, gpu: Preset, out: str) -> None:
    """The flags every training script has. Every default is None: see `resolve` for where values come from."""

    def preset_help(text: str, key: str) -> str:
        a, b = getattr(gpu, key), getattr(cpu, key)
        show = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else v  # noqa: E731
        return f"{text} (preset: {show(a)} on a GPU, {show(b)} on a CPU)"

    g = parser.add_argument_group("run")
    g.add_argument("--out", help=f"output folder: config.json, checkpoint.pt, log.jsonl, loss_curve.png, samples/ "
                   f"(default {out})")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="replace a run already in --out (without it, a folder holding a checkpoint is refused)")
    g.add_argument("--steps", dest="total_steps", type=positive_int,
                   help=preset_help("total training steps; sets the curriculum", "total_steps"))
    g.add_argument("--epochs", type=positive_float, help="train this many passes over the data instead of --steps")
    g.add_argument("--minutes", type=positive_float,
                   help="wall-clock budget: stop, save and sample when it runs out (without --steps the step count "
                        "is fitted to the budget from the speed of the first steps)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto = cuda if available (default auto)")
    g.add_argument("--seed", type=nonneg_int, help="seed for weights, noise and data order (default 0)")
    g.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                   help="continue a run from CKPT (default OUT/checkpoint.pt; without --out, in CKPT's folder) with "
                   "its own settings; flags override")
    g.add_argument("--sample-every", type=nonneg_int, help=preset_help("write sample grids every this many steps, 0 = "
                   "only at the end", "sample_every"))
    g.add_argument("--checkpoint-every", type=nonneg_int, help=preset_help("write checkpoint.pt every this many steps, "
                   "0 = only at the end", "checkpoint_every"))
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="log lines instead of a progress bar")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help='also write TensorBoard logs (loss, lr, curriculum, images/s, samples) to OUT/tensorboard '
                        '(pip install "consistency-models[tb]")')
    g.add_argument("--wandb", action="store_true", default=None, help='also log to Weights & Biases (files in OUT/wandb; '
                   'WANDB_MODE=offline keeps them local; pip install "consistency-models[wandb]")')

    g = parser.add_argument_group("method")
    g.add_argument("--method", choices=list(METHODS),
                   help="ict = improved consistency training (default); ct = CM's consistency training; ect = easy "
                        "consistency tuning of --teacher (or training from scratch without one); cd = consistency "
                        "distillation of --teacher; scm = sCM's continuous-time consistency training (from --teacher "
                        "if given); scd = sCM's distillation of --teacher; meanflow = MeanFlow; edm = an EDM "
                        "diffusion model (the teacher for cd, ect, scm, scd)")
    g.add_argument("--teacher", metavar="CKPT", help="cd and scd (required), ect and scm (tuned from it, as "
                   "published): a checkpoint written by --method edm")
    g.add_argument("--teacher-share", type=share, metavar="F",
                   help="train an EDM teacher first, for this share of the budget (--minutes, --steps or --epochs), "
                        "into OUT/teacher, then --method from it for the rest (cd, scd, ect, scm); 0 = no teacher "
                        "phase")
    g.add_argument("--s1", type=positive_int, help="ict, ct: final number of discretisation intervals of the "
                   f"curriculum (iCT paper 1280, CM 150; preset {cpu.method_options.get('ict', {}).get('s1')} for ict "
                   "on a CPU)")
    g.add_argument("--distance", choices=sorted(DISTANCES),
                   help="consistency distance (default pseudo_huber; l2 for ct)")
    g.add_argument("--num-scales", type=int_at_least_2, help="cd: N discretisation levels (CM 18; preset "
                   f"{cpu.method_options.get('cd', {}).get('num_scales')} on a CPU)")
    g.add_argument("--solver", choices=sorted(SOLVERS), help="cd: the teacher's ODE solver (default heun)")
    g.add_argument("--mu", type=unit_interval, help="cd: fixed target-network decay (default CM's 0.95)")
    g.add_argument("--method-arg", action="append", metavar="KEY=VALUE", default=None,
                   help="any other keyword of the method's constructor, e.g. --method-arg p_mean=-1.0 (repeatable)")

    g = parser.add_argument_group("network")
    g.add_argument("--width", type=positive_int, help=preset_help("UNet base channels", "width"))
    g.add_argument("--channel-mult", type=int_tuple, help=preset_help("channel multipliers per level", "channel_mult"))
    g.add_argument("--num-res-blocks", type=positive_int, help=preset_help("residual blocks per level", "num_res_blocks"))
    g.add_argument("--dropout", type=unit_interval, help=preset_help("dropout in the residual blocks", "dropout"))
    g.add_argument("--class-conditional", action=argparse.BooleanOptionalAction, default=None,
                   help="condition on the class label (default: when the data has more than one class; samples then "
                        "cycle through the classes); --no-class-conditional ignores the labels")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, help=preset_help("global batch (split over processes)", "batch_size"))
    g.add_argument("--lr", type=positive_float, help=preset_help("Adam learning rate", "lr"))
    g.add_argument("--lr-schedule", choices=["constant", "cosine"],
                   help=preset_help("constant (the papers) or cosine decay to 5%% over the run", "lr_schedule"))
    g.add_argument("--ema-decay", type=unit_interval, help=preset_help("decay of the sampling EMA", "ema_decay"))
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="warm the sampling EMA's decay up as min(decay, (1 + k) / (10 + k)) (default on)")
    g.add_argument("--warmup-steps", type=nonneg_int, help="linear learning-rate warm-up over this many steps (default 0)")
    g.add_argument("--label-dropout", type=unit_interval, help="share of labels dropped to a null class, so the model "
                   "can be guided (classifier-free guidance; 0.1 in MeanFlow's code; default 0)")
    g.add_argument("--sample-guidance", type=float_tuple, metavar="W,W", help="guidance scales of the sample grids, "
                   "a grid each (needs --label-dropout, or a guided teacher's student); default unguided")
    g.add_argument("--precision", choices=["fp32", "bf16"], help=preset_help("bf16 = autocast; the loss and EMAs stay "
                   "fp32", "precision"))
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help=preset_help("torch.compile the network (GPUs; the first steps compile it)", "compile"))
    g.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory layout (GPUs)")


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a share of the budget in [0, 1), got {value}")
    return value


def int_at_least_2(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 levels, got {value}")
    return value


def parse_method_args(items: list[str] | None) -> dict[str, Any]:
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--method-arg {item!r}: expected KEY=VALUE, e.g. --method-arg p_mean=-1.0")
        words = {"true": True, "false": False, "none": None, "nan": float("nan"), "inf": float("inf")}
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            # true / false / none in any case, as a user types them; nan / inf so that the checks name them
            options[key] = words.get(value.strip().lower(), value)  # else a plain string
    return options


def resolve(args: argparse.Namespace, *, cpu: Preset, gpu: Preset, out: str) -> RunConfig:
    """Merge the flags, the resumed run's settings (on --resume) and the device's preset into one RunConfig."""
    given = {k: v for k, v in vars(args).items() if v is not None and k in RUN_FIELDS}
    options = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k, None) is not None}
    for key, value in parse_method_args(getattr(args, "method_arg", None)).items():
        if key in options and options[key] != value:
            raise ValueError(f"--{key.replace('_', '-')} {options[key]} and --method-arg {key}={value} contradict each "
                             "other: give one")
        options[key] = value
    if getattr(args, "resume", None) not in (None, "auto") and "out" not in given:
        given["out"] = str(Path(args.resume).parent)  # --resume RUN/checkpoint.pt continues in RUN, not the default
    out_dir = given.setdefault("out", out)
    inherited: dict[str, Any] = {}
    inherited_filled: list[str] = []
    if getattr(args, "resume", None):
        path = Path(out_dir) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        planned = planned_run(out_dir) if args.resume == "auto" and not path.exists() else None
        if planned:  # a two-phase run cut in its teacher phase: the run as it was planned
            path, saved = teacher_path(out_dir), planned
        else:
            saved = read_checkpoint(path).config
        inherited = {k: v for k, v in saved.get("run", {}).items() if k in RUN_FIELDS and k not in NOT_INHERITED}
        trained_with = inherited.get("method") or saved.get("method", {}).get("name")
        if "method" in given and trained_with and given["method"] != trained_with:
            raise ValueError(f"the run in {path} was trained with --method {trained_with}: resume it with that "
                             f"method (drop --method {given['method']}), or start a new run with another --out")
        for key, value in saved.get("data", {}).items():  # where the run read its data, unless given again
            if getattr(args, key, "given") is None:
                setattr(args, key, value)
        inherited_filled = [k for k in saved.get("preset", {}).get("filled", []) if k.split(".")[-1] not in given
                            and k.split(".")[-1] not in options and k != "steps"]
        given["resume"] = str(path)
    preset = gpu if resolve_device(given.get("device", "auto")).type == "cuda" else cpu
    return merge(preset, {**given, "method_options": options}, inherited=inherited, inherited_filled=inherited_filled,
                 resuming="resume" in given)


def check(config: RunConfig, image_shape: tuple[int, int, int]) -> list:
    """Every check that can run before any data is read, for every phase of the run; returns the phases with the
    teacher each has read (a teacher still to be trained is checked when its phase begins)."""
    phases = plan(config)
    return [(phase, validate(phase.config, image_shape, read_teacher=i == 0)) for i, phase in enumerate(phases)]


def train(config: RunConfig, dataset: Callable[[], Any], *, image_shape: tuple[int, int, int],
          classes: list[str] | None, data: dict[str, Any]) -> ConsistencyTrainer:
    """Check the run, read the data (`dataset()`; its own `classes` unless given), then train each phase (one, or a
    teacher and then the method from it: recipe.plan) and report. Returns the last phase's trainer."""
    problem = torchvision_problem()  # a mismatched torch / torchvision pair fails late and looks like other errors
    if problem:
        raise ValueError(problem)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 holds the lock for all
    with RunLock(config.out) if main_rank else contextlib.nullcontext():  # one run at a time in a folder
        return _train_phases(config, dataset, image_shape=image_shape, classes=classes, data=data)


def _train_phases(config: RunConfig, dataset: Callable[[], Any], *, image_shape: tuple[int, int, int],
                  classes: list[str] | None, data: dict[str, Any]) -> ConsistencyTrainer:
    phases = check(config, image_shape)  # before any data is read
    dataset = dataset()
    classes = list(getattr(dataset, "classes", [])) if classes is None else classes
    for i, (phase, teacher) in enumerate(phases):
        if i:
            release_memory()  # the teacher's graphs and optimizer
        if phase.discard is not None:
            phase.discard.unlink(missing_ok=True)
        config = phase.config
        trainer = build_trainer(config, dataset, image_shape=image_shape, classes=classes, data=data,
                                teacher=teacher, record=phase.record)
        if trainer.ranks.is_main and trainer.device.type == "cpu" and config.preset_filled and not i:
            print("No GPU: " + banner(config))
        if config.resume and trainer.ranks.is_main:
            print(f"Resumed from {config.resume} at step {trainer.step_count} of "
                  f"{trainer.total_steps or '(fitted to the budget)'}.")
        trainer.train(minutes=config.minutes)
        if trainer.ranks.is_main:
            print(json.dumps({"steps": trainer.step_count, "total_steps": trainer.total_steps, **trainer.last_run}))
            print(f"Samples: {trainer.out_dir / 'samples'}  checkpoint: {trainer.out_dir / 'checkpoint.pt'}  "
                  f"log: {trainer.out_dir / 'log.jsonl'}")
    return trainer


def banner(config: RunConfig) -> str:
    """The preset's values as flags that can be pasted back."""
    shown = [k for k in config.preset_filled if not k.startswith("method_options.") and k != "total_steps"]
    flags = []
    for key in shown:
        value, flag = getattr(config, key), f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags.append(f"{flag} {','.join(map(str, value)) if isinstance(value, tuple) else value}")
    flags += [f"--{k.split('.', 1)[1].replace('_', '-')} {config.method_options[k.split('.', 1)[1]]}"
              for k in config.preset_filled if k.startswith("method_options.")]
    return f"preset {config.preset}: " + " ".join(flags) + " (any flag overrides it)"


def resume_command(argv: list[str]) -> str:
    """The command that continues an interrupted run: the same flags, --resume, never --overwrite."""
    args = [a for a in argv if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return "python " + " ".join(shlex.quote(a) for a in args)


class Terminated(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
    """SIGTERM outside a training loop (loading a teacher, building the next phase): the last checkpoint stands."""


def _terminated(signum, frame):
    raise Terminated()


def main_guard(fn, *args, **kwargs):
    """Run fn; a user error (bad input, missing file, diverged run, full disk) ends as one line on stderr, not a
    traceback; an interrupt ends with the line that resumes the run (exit status 130 for SIGINT, 143 for SIGTERM);
    under torchrun, a failed collective (another process died) ends with a line saying so, within the process group's
    timeout."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # training loops take it over while they run (runtime.py)
    try:
        return fn(*args, **kwargs)
    except TrainingInterrupted as exc:
        print(f"stopped by {exc}. Resume with: {resume_command(sys.argv)}", file=sys.stderr)
        sys.exit(130 if exc.signal_name == "SIGINT" else 143)
    except (KeyboardInterrupt, Terminated) as exc:  # outside a training loop: the last checkpoint stands
        name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        print(f"stopped by {name} (no training step was lost). Resume with: {resume_command(sys.argv)}",
              file=sys.stderr)
        sys.exit(143 if name == "SIGTERM" else 130)
    except (OSError, ValueError, TypeError, FloatingPointError) as exc:
        sys.exit(f"error: {exc}")
    except RuntimeError as exc:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise
        first = " ".join(str(exc).split())[:200]
        print(f"error: rank {dist.get_rank()}: a collective among the torchrun processes failed ({first}): another "
              f"process stopped or died. Checkpoints are written atomically, so the last one is intact; resume with: "
              f"torchrun ... {' '.join(shlex.quote(a) for a in resume_command(sys.argv).split()[1:])}",
              file=sys.stderr, flush=True)
        os._exit(1)  # not sys.exit: tearing down a process group whose peer is gone can block
