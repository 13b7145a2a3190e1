"""The training command line shared by main.py and main_imagenet9.py: flags -> one RunConfig -> a trained run.

Where a setting comes from, strongest first: the flag the user gave; on --resume, the resumed run's own setting; the
preset for the device (consistency.presets); the default below. config.json records the result and which settings
the preset filled.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_checkpoint
from ..data import make_loader
from ..methods import DISTANCES, METHODS, build_method, method_options, needs_teacher, takes_teacher
from ..methods.cd import SOLVERS
from ..presets import Preset
from ..runtime import TrainingInterrupted, check_compile_with_jvp
from ..trainer import ConsistencyTrainer
from ..unet import UNet
from ..utils import resolve_device
from .args import check_writable, int_tuple, nonneg_int, positive_float, positive_int, unit_interval
from .two_phase import check_fresh, is_two_phase, planned_run, split_budget, teacher_path, train_two_phase

# Flags that choose a method option (the name is the method's keyword); --method-arg passes any other keyword.
OPTION_FLAGS = ("s1", "distance", "num_scales", "solver", "mu")
ARCH = ("width", "channel_mult", "num_res_blocks")
# Settings a resumed run keeps unless a flag says otherwise (not where it runs or for how long).
NOT_INHERITED = {"out", "resume", "overwrite", "steps", "epochs", "minutes", "device", "progress", "num_workers",
                 "tensorboard"}


@dataclass
class RunConfig:
    """Everything a training run is, after flags, resumed settings and the preset are merged."""

    # method
    method: str = "ict"
    teacher: str | None = None
    teacher_share: float = 0.0  # > 0: train an EDM teacher first for this share of the budget (cli/two_phase.py)
    method_options: dict[str, Any] = field(default_factory=dict)
    # network
    width: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    dropout: float = 0.0
    class_conditional: bool | None = None  # None: when the data has more than one class
    # optimisation
    batch_size: int = 128
    lr: float = 2e-4
    lr_schedule: str = "constant"
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    # the run
    out: str = "runs/mnist"
    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    device: str = "auto"
    seed: int = 0
    resume: str | None = None
    overwrite: bool = False
    sample_every: int = 1000
    checkpoint_every: int = 1000
    progress: bool = True
    tensorboard: bool = False
    num_workers: int = 0
    flip: bool | None = None  # image folders: random horizontal flips (main_imagenet9.py; None for MNIST, never flipped)
    preset: str = ""
    preset_filled: list[str] = field(default_factory=list)

    def recorded(self) -> dict[str, Any]:
        """What config.json records: the settings, and apart from them which the preset filled."""
        run = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
               if k not in ("preset", "preset_filled", "resume", "overwrite")}
        return {"run": run, "preset": {"name": self.preset, "filled": sorted(self.preset_filled)}}


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
    g.add_argument("--steps", type=positive_int, help=preset_help("total training steps; sets the curriculum", "steps"))
    g.add_argument("--epochs", type=positive_float, help="train this many passes over the data instead of --steps")
    g.add_argument("--minutes", type=positive_float,
                   help="wall-clock budget: stop, save and sample when it runs out (without --steps the step count "
                        "is fitted to the budget from the speed of the first steps)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto = cuda if available (default auto)")
    g.add_argument("--seed", type=nonneg_int, help="seed for weights, noise and data order (default 0)")
    g.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                   help="continue a run from CKPT (default OUT/checkpoint.pt) with its own settings; flags override")
    g.add_argument("--sample-every", type=nonneg_int, help=preset_help("write sample grids every this many steps, 0 = "
                   "only at the end", "sample_every"))
    g.add_argument("--checkpoint-every", type=nonneg_int, help=preset_help("write checkpoint.pt every this many steps, "
                   "0 = only at the end", "checkpoint_every"))
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="log lines instead of a progress bar")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help='also write TensorBoard logs (loss, lr, curriculum, images/s, samples) to OUT/tensorboard '
                        '(pip install "consistency-models[tb]")')

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
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a plain string
    return options


def resolve(args: argparse.Namespace, *, cpu: Preset, gpu: Preset, out: str) -> RunConfig:
    """Merge the flags, the resumed run's settings (on --resume) and the device's preset into one RunConfig."""
    given = {k: v for k, v in vars(args).items() if v is not None and k in RunConfig.__dataclass_fields__}
    options = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k, None) is not None}
    options.update(parse_method_args(getattr(args, "method_arg", None)))
    out_dir = given.get("out", out)
    inherited: dict[str, Any] = {}
    inherited_filled: list[str] = []
    if getattr(args, "resume", None):
        path = Path(out_dir) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        plan = planned_run(out_dir) if args.resume == "auto" and not path.exists() else None
        if plan:  # a two-phase run cut in its teacher phase: the run as it was planned
            path, saved = teacher_path(out_dir), plan
        else:
            saved = read_checkpoint(path).config
        run = saved.get("run", {})
        inherited = {k: v for k, v in run.items() if k in RunConfig.__dataclass_fields__ and k not in NOT_INHERITED}
        inherited_filled = [k for k in saved.get("preset", {}).get("filled", []) if k.split(".")[-1] not in given
                            and k.split(".")[-1] not in options]
        given["resume"] = str(path)
        options = {**inherited.pop("method_options", {}), **options}
    device = resolve_device(given.get("device", "auto"))
    preset = gpu if device.type == "cuda" else cpu
    defaults = {k: v for k, v in preset.settings().items() if k != "steps"}
    settings = {**defaults, **inherited, **given}
    filled = [k for k in defaults if k not in given and k not in inherited] + inherited_filled
    # The run's length: --steps, else --epochs or --minutes decide, else a resumed run keeps its own, else the preset's.
    if not any(k in given for k in ("steps", "epochs", "minutes")) and not inherited and not given.get("resume"):
        settings["steps"] = preset.steps
        filled.append("steps")
    if "channel_mult" in settings:
        settings["channel_mult"] = tuple(settings["channel_mult"])
    method = settings.get("method", "ict")
    if method not in METHODS:
        raise ValueError(f"--method {method} is unknown: choose one of {', '.join(METHODS)}")
    accepted = method_options(method)
    wrong = sorted(set(options) - accepted)
    if wrong:
        raise ValueError(f"--method {method} takes no {', '.join('--' + k.replace('_', '-') for k in wrong)} "
                         f"(its options: {', '.join(sorted(accepted))})")
    preset_options = {k: v for k, v in preset.method_options.get(method, {}).items() if k not in options}
    filled += [f"method_options.{k}" for k in preset_options]
    settings["method_options"] = {**preset_options, **options}
    settings.setdefault("out", out)
    return RunConfig(**settings, preset=preset.name, preset_filled=filled)


def validate(config: RunConfig, image_shape: tuple[int, int, int]) -> None:
    """Everything that can be checked before any data is read: the output folder, the network against the image
    size, the method's options and the teacher. Each problem is one ValueError naming the flag and the fix."""
    out = Path(config.out)
    if config.teacher_share and config.teacher and not is_two_phase(config):
        raise ValueError("--teacher-share trains a teacher first; with --teacher yours is used: give one, not both")
    if config.teacher_share and not takes_teacher(config.method):
        raise ValueError(f"--teacher-share trains a teacher for cd, scd, ect or scm; --method {config.method} does "
                         "not use one: drop --teacher-share")
    if is_two_phase(config) and not config.resume:
        check_fresh(config)
        split_budget(config)
    if not config.resume and (out / "checkpoint.pt").exists() and not config.overwrite:
        raise ValueError(f"{out} already holds a run (checkpoint.pt). Continue it with --resume, train a new one "
                         "with a fresh --out, or replace it with --overwrite")
    check_writable(str(out / "checkpoint.pt"), "--out")
    levels = len(config.channel_mult)
    side = 2 ** (levels - 1)
    if image_shape[1] % side or image_shape[2] % side:
        raise ValueError(f"--channel-mult {','.join(map(str, config.channel_mult))} halves the images {levels - 1} "
                         f"times, so their side must be divisible by {side}; the images are {image_shape[1]}x"
                         f"{image_shape[2]}: use fewer levels (or another --image-size)")
    if needs_teacher(config.method) and not config.teacher and not config.teacher_share:
        raise ValueError(f"--method {config.method} distils a teacher: pass --teacher CKPT (train one with "
                         "--method edm), or train one first in the same run with --teacher-share 0.6")
    if config.teacher and not takes_teacher(config.method):
        raise ValueError(f"--teacher is for distillation or tuning; --method {config.method} does not use one")
    if config.teacher:
        ckpt = read_checkpoint(config.teacher)
        if ckpt.sampler != "edm":
            raise ValueError(f"--teacher {config.teacher} holds a model trained with --method "
                             f"{ckpt.method.get('name')}, not a diffusion teacher: pass a checkpoint written by "
                             "--method edm")
    # the options' kinds and ranges (a stand-in for the teacher: only the constructor's checks run)
    method = build_method(config.method, teacher=torch.nn.Identity() if config.teacher or config.teacher_share else None,
                          **config.method_options)
    check_compile_with_jvp(config.compile, uses_jvp=method.uses_jvp, method_name=method.name,
                           has_dropout=config.dropout > 0)


def banner(config: RunConfig) -> str:
    """The preset's values as flags that can be pasted back."""
    shown = [k for k in config.preset_filled if not k.startswith("method_options.") and k != "steps"]
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


def setup_distributed(device: str) -> tuple[int, int, str]:
    """Under torchrun (RANK and WORLD_SIZE set) join the process group: NCCL on GPUs, gloo on CPUs.

    Returns (rank, world_size, device); each rank takes the GPU of its LOCAL_RANK. Without torchrun: (0, 1, device).
    Under torchrun the model is trained with DistributedDataParallel even by a single process.
    """
    if "RANK" not in os.environ:
        return 0, 1, device
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def load_teacher(path: str | None, image_shape: tuple[int, int, int], num_classes: int | None):
    """The sampling EMA of a diffusion checkpoint (--method edm), checked against the data it will be distilled on."""
    from ..checkpoint import load_model

    if not path:
        raise ValueError("this method distils a teacher: pass --teacher CKPT (train one with --method edm)")
    ckpt = read_checkpoint(path)
    if ckpt.sampler != "edm":
        raise ValueError(f"--teacher {path} holds a model trained with --method {ckpt.method.get('name')}, not a "
                         "diffusion teacher: pass a checkpoint written by --method edm")
    if ckpt.model.get("image_shape") and list(ckpt.model["image_shape"]) != list(image_shape):
        raise ValueError(f"--teacher {path} was trained on images of shape {ckpt.model['image_shape']}, "
                         f"but this data has shape {list(image_shape)}")
    if ckpt.num_classes != num_classes:
        raise ValueError(f"--teacher {path} has num_classes={ckpt.num_classes} but this run uses {num_classes}: pass "
                         "--class-conditional or --no-class-conditional as the teacher was trained")
    return load_model(ckpt, "ema")


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """--batch-size is the global batch: split evenly over the ranks."""
    if global_batch % world_size:
        raise ValueError(f"--batch-size {global_batch} is not divisible by the {world_size} processes")
    return global_batch // world_size


def train(config: RunConfig, dataset: Any, *, image_shape: tuple[int, int, int], classes: list[str],
          data: dict[str, Any], label: str = "train", recipe: dict[str, Any] | None = None) -> ConsistencyTrainer:
    """Build the loader, method, model and trainer for `config`, resume if asked, train, and report.

    A run with a teacher share trains its teacher first (cli/two_phase.py); `label` names the phase on the progress
    bar and `recipe` (the two-phase run's settings) goes into the teacher's config.json.
    """
    if is_two_phase(config):
        return train_two_phase(config, partial(train, dataset=dataset, image_shape=image_shape, classes=classes,
                                                data=data))
    rank, world_size, device = setup_distributed(config.device)
    device_type = resolve_device(device).type
    if config.class_conditional and len(classes) < 2:
        raise ValueError(f"--class-conditional needs labelled data with at least 2 classes; this data has {len(classes)}")
    num_classes = len(classes) if len(classes) > 1 and config.class_conditional is not False else None
    out = Path(config.out)
    validate(config, image_shape)
    if rank == 0 and device_type == "cpu" and config.preset_filled:
        print("No GPU: " + banner(config))
    loader = make_loader(dataset, per_rank_batch(config.batch_size, world_size), seed=config.seed,
                         num_workers=config.num_workers, rank=rank, world_size=world_size)
    steps = config.steps
    if config.epochs is not None:
        steps = max(1, round(config.epochs * len(loader)))
    torch.manual_seed(config.seed)  # the initial weights follow --seed (and agree across torchrun ranks)
    teacher = load_teacher(config.teacher, image_shape, num_classes) if config.teacher else None
    method = build_method(config.method, teacher, **config.method_options)
    arch = dict(base_channels=config.width, channel_mult=config.channel_mult, num_res_blocks=config.num_res_blocks)
    if teacher is not None:  # the student starts from the teacher's weights (CM), so it takes its architecture
        theirs = {k: teacher.net.config[k] for k in ("base_channels", "channel_mult", "num_res_blocks", "attn_levels")}
        for flag, key in zip(ARCH, ("base_channels", "channel_mult", "num_res_blocks")):
            mine = list(arch[key]) if key == "channel_mult" else arch[key]
            if flag not in config.preset_filled and mine != theirs[key]:
                raise ValueError(f"--{flag.replace('_', '-')} {mine} differs from the teacher's {theirs[key]}: the "
                                 "student starts from the teacher's weights and keeps its architecture; drop the flag")
        arch = {**theirs, "channel_mult": tuple(theirs["channel_mult"])}
    net_options = dict(method.net_options)
    resumed = read_checkpoint(config.resume) if config.resume else None  # read once: sizes, weights, state
    if resumed is not None:  # a run keeps its time embedding (EDM teachers scaled it 1000x before 0.2)
        resumed_net = resumed.model.get("net") or {}
        net_options.update({k: resumed_net[k] for k in ("time_scale",) if k in resumed_net})
    net = UNet(image_shape[0], **{**arch, **net_options}, dropout=config.dropout, num_classes=num_classes)
    model = method.wrap(net)
    trainer = ConsistencyTrainer(
        model, loader, method=method, lr=config.lr, total_steps=steps, ema_decay=config.ema_decay,
        ema_warmup=config.ema_warmup, device=device, precision=config.precision, out_dir=out,
        sample_every=config.sample_every, checkpoint_every=config.checkpoint_every, seed=config.seed,
        lr_schedule=config.lr_schedule, progress=config.progress, progress_label=label, compile=config.compile,
        channels_last=config.channels_last, image_shape=image_shape, tensorboard=config.tensorboard,
        config={**config.recorded(), "data": {**data, "classes": classes}, **({"recipe": recipe} if recipe else {})},
    )
    remaining = None
    if resumed is not None:
        trainer.load(resumed, path=config.resume)
        resumed = None  # the trainer holds the state now: free the copy read from disk
        finished = trainer.total_steps is not None and trainer.step_count >= trainer.total_steps
        if steps is not None:  # a new total: extending (or shortening) a run moves its curriculum
            trainer.total_steps = steps
        elif finished and config.minutes is not None:  # extend a finished run by the budget: fitted again
            trainer.total_steps = None
        elif finished:
            raise ValueError(f"the run in {config.resume} is finished (step {trainer.step_count} of "
                             f"{trainer.total_steps}): extend it with --steps N (a new total) or --minutes M")
        if rank == 0:
            print(f"Resumed from {config.resume} at step {trainer.step_count} of {trainer.total_steps or '(fitted to the budget)'}.")
    if trainer.total_steps is not None:
        remaining = max(trainer.total_steps - trainer.step_count, 0)
    trainer.train(remaining, minutes=config.minutes)
    if rank == 0:
        summary = {"steps": trainer.step_count, "total_steps": trainer.total_steps, **trainer.last_run}
        print(json.dumps(summary))
        print(f"Samples: {out / 'samples'}  checkpoint: {out / 'checkpoint.pt'}  log: {out / 'log.jsonl'}")
    return trainer


def resume_command(argv: list[str]) -> str:
    """The command that continues an interrupted run: the same flags, --resume, never --overwrite."""
    args = [a for a in argv if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return "python " + " ".join(shlex.quote(a) for a in args)


def main_guard(fn, *args, **kwargs):
    """Run fn; a user error (bad input, missing file, diverged run, full disk) ends as one line on stderr, not a
    traceback; an interrupt ends with the line that resumes the run (exit status 130 for SIGINT, 143 for SIGTERM)."""
    try:
        return fn(*args, **kwargs)
    except TrainingInterrupted as exc:
        print(f"stopped by {exc}. Resume with: {resume_command(sys.argv)}", file=sys.stderr)
        sys.exit(130 if exc.signal_name == "SIGINT" else 143)
    except KeyboardInterrupt:  # outside a training loop (sampling, between two phases): the last checkpoint stands
        print(f"stopped by SIGINT. Resume with: {resume_command(sys.argv)}", file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError, FloatingPointError) as exc:
        sys.exit(f"error: {exc}")
