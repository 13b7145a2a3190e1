"""A training run, built by the library: what `main.py` trains, callable from a notebook.

    config = cm.presets.MNIST_CPU.config(method="cd", teacher="runs/teacher/checkpoint.pt", minutes=8, out="runs/cd")
    trainer = cm.build_trainer(config, cm.mnist_dataset("data"), image_shape=(1, 28, 28), classes=list("0123456789"))
    trainer.train(minutes=config.minutes)

RunConfig is every setting of a run: the trainer's options (it extends TrainerOptions, so a new trainer option is a
run setting, a preset key and a config.json entry at once) and what is built around the trainer (the method, the
network, the batch, the budget, the output folder). build_trainer() reads a teacher once, builds the student's network
from it (the student starts from the teacher's weights, so it takes its architecture and time embedding), the data
loader (sharded under torchrun), the model, the method and the trainer, and resumes a run when asked. A run with a
teacher share is a list of phases (plan()), each an ordinary run: an EDM teacher, then the method from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .checkpoint import Checkpoint, load_model, read_checkpoint
from .data import make_loader
from .distributed import setup
from .methods import Method, build_method, needs_teacher, takes_teacher
from .methods.teacher import TIME_EMBEDDING
from .options import TrainerOptions
from .runtime import check_compile_with_jvp
from .trainer import ConsistencyTrainer
from .unet import UNet
from .utils import check_writable, resolve_device

ARCH = {"width": "base_channels", "channel_mult": "channel_mult", "num_res_blocks": "num_res_blocks"}  # flag: UNet
BUDGETS = ("minutes", "total_steps", "epochs")  # what a run's length is given by


@dataclass
class RunConfig(TrainerOptions):
    """Every setting of a training run: TrainerOptions' fields (the trainer's), and what is built around the trainer."""

    total_steps: int | None = None  # the run's length (sets the curriculum); or epochs, or minutes (then fitted)
    # the method
    method: str = "ict"  # a key of consistency.methods.METHODS
    teacher: str | None = None  # an EDM checkpoint: cd and scd distil it, ect and scm tune from it
    teacher_share: float = 0.0  # > 0: train an EDM teacher first, for this share of the budget (plan())
    method_options: dict[str, Any] = field(default_factory=dict)  # keywords of the method's constructor
    # the network (a consistency.UNet; a student of a teacher takes the teacher's)
    width: int = 64  # base channels
    channel_mult: tuple[int, ...] = (1, 2, 2)  # channel multipliers per level (each level halves the image)
    num_res_blocks: int = 2  # residual blocks per level
    dropout: float = 0.0  # in the residual blocks
    class_conditional: bool | None = None  # None: when the data has more than one class
    # the data
    batch_size: int = 128  # the global batch (split over torchrun's processes)
    num_workers: int = 0  # data-loading processes per rank (a data set read from files)
    data_memory_gb: float = 4.0  # image folders up to this size are decoded once, cached, kept on the device; 0: never
    flip: bool | None = None  # image folders: random horizontal flips (None where a data set is never flipped)
    # the run
    out: str = "runs/run"  # its folder: config.json, checkpoint.pt, log.jsonl, loss_curve.png, samples/
    epochs: float | None = None  # passes over the data, in place of total_steps
    minutes: float | None = None  # wall-clock budget
    resume: str | None = None  # continue the run of this checkpoint
    overwrite: bool = False  # replace a run already in `out`
    preset: str = ""  # the preset the settings started from
    preset_filled: list[str] = field(default_factory=list)  # the settings the preset filled

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.teacher_share < 1:
            raise ValueError(f"teacher_share must lie in [0, 1), got {self.teacher_share}")
        if self.width % 2:
            raise ValueError(f"--width must be even (the UNet's time embedding has width // 2 frequencies), got "
                             f"{self.width}")

    def recorded(self) -> dict[str, Any]:
        """What config.json records: the settings, and apart from them which the preset filled."""
        run = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
               if k not in ("preset", "preset_filled", "resume", "overwrite")}
        return {"run": run, "preset": {"name": self.preset, "filled": sorted(self.preset_filled)}}

    def trainer_options(self, **changes: Any) -> TrainerOptions:
        """The TrainerOptions of this run."""
        return TrainerOptions.of(self, **changes)


RUN_FIELDS = {f.name for f in fields(RunConfig)}


# ---------------------------------------------------------------------------------------------------- checks
def validate(config: RunConfig, image_shape: tuple[int, int, int], *, read_teacher: bool = True) -> Checkpoint | None:
    """Everything that can be checked before any data is read: the output folder, the network against the image size,
    the method's options and the teacher. Each problem is one ValueError naming the flag and the fix. Returns the
    teacher's checkpoint, read here once (None without one, or with read_teacher=False: a teacher still to be trained).
    """
    out = Path(config.out)
    if config.teacher_share:
        raise ValueError("a run with a teacher share is two runs (an EDM teacher, then the method from it): build "
                         "each phase of recipe.plan(config)")
    if not config.resume and (out / "checkpoint.pt").exists() and not config.overwrite:
        raise ValueError(f"{out} already holds a run (checkpoint.pt). Continue it with --resume, train a new one "
                         "with a fresh --out, or replace it with --overwrite")
    check_writable(str(out / "checkpoint.pt"), "--out")
    levels, side = len(config.channel_mult), 2 ** (len(config.channel_mult) - 1)
    if image_shape[1] % side or image_shape[2] % side:
        raise ValueError(f"--channel-mult {','.join(map(str, config.channel_mult))} halves the images {levels - 1} "
                         f"times, so their side must be divisible by {side}; the images are {image_shape[1]}x"
                         f"{image_shape[2]}: use fewer levels (or another --image-size)")
    need, have = step_memory(config, image_shape), memory_available(config.device)
    if need > have:
        raise ValueError(f"one training step with --batch-size {config.batch_size} on {image_shape[1]}x{image_shape[2]} "
                         f"images needs about {need / 2**30:.0f} GiB for the network's activations; this device has "
                         f"{have / 2**30:.0f} GiB: lower --image-size or --batch-size (or the network: --width, "
                         "--channel-mult)")
    if needs_teacher(config.method) and not config.teacher:
        raise ValueError(f"--method {config.method} distils a teacher: pass --teacher CKPT (train one with "
                         "--method edm), or train one first in the same run with --teacher-share 0.6")
    if config.teacher and not takes_teacher(config.method):
        raise ValueError(f"--teacher is for distillation or tuning; --method {config.method} does not use one")
    teacher = read_teacher_checkpoint(config.teacher, image_shape) if config.teacher and read_teacher else None
    # the options' kinds and ranges (a stand-in for the teacher: only the constructor's checks run), and whether a
    # teacher to guide has a null class (one still to be trained gets one with --label-dropout)
    stand_in = nn.Identity() if config.teacher else None
    if stand_in is not None:
        stand_in.null_class = (0 if (teacher.model.get("net") or {}).get("null_class") else None) if teacher else \
            (0 if config.label_dropout else None)
    method = build_method(config.method, teacher=stand_in, **config.method_options)
    if getattr(method, "guided", False) and not config.label_dropout:
        raise ValueError(f"--method {config.method}'s training-time guidance (omega, kappa) needs a null class: add "
                         "--label-dropout 0.1 (its code's class dropout)")
    check_compile_with_jvp(config.compile, uses_jvp=method.uses_jvp, method_name=method.name,
                           has_dropout=config.dropout > 0)
    return teacher


def step_memory(config: RunConfig, image_shape: tuple[int, int, int]) -> float:
    """A rough estimate of the bytes one training step keeps for backward: about ten feature maps per residual block
    at its level's resolution, fp32 (within 20% of the measured peak of the ImageNet-9 GPU preset, 50 GiB). bf16 and
    compilation need about a third of it."""
    per_image = 0.0
    for level, mult in enumerate(config.channel_mult):
        blocks = 2 * config.num_res_blocks + 1
        per_image += 10 * blocks * config.width * mult * (image_shape[1] * image_shape[2] / 4**level)
    factor = 0.35 if config.precision == "bf16" or config.compile else 1.0
    return 4 * per_image * config.batch_size * factor


def memory_available(device: str) -> float:
    """The memory of the device a run trains on: the GPU's, else the machine's."""
    import os

    if resolve_device(device).type == "cuda":
        return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def read_teacher_checkpoint(path: str, image_shape: tuple[int, int, int]) -> Checkpoint:
    """A diffusion teacher's checkpoint (--method edm), read and checked against the data's image shape."""
    ckpt = read_checkpoint(path)
    if ckpt.sampler != "edm":
        raise ValueError(f"--teacher {path} holds a model trained with --method {ckpt.method.get('name')}, not a "
                         "diffusion teacher: pass a checkpoint written by --method edm")
    if ckpt.model.get("image_shape") and list(ckpt.model["image_shape"]) != list(image_shape):
        raise ValueError(f"--teacher {path} was trained on images of shape {ckpt.model['image_shape']}, "
                         f"but this data has shape {list(image_shape)}")
    return ckpt


def teacher_model(ckpt: Checkpoint, path: str, num_classes: int | None) -> nn.Module:
    """The teacher's sampling EMA, checked against the run's classes."""
    if ckpt.num_classes != num_classes:
        raise ValueError(f"--teacher {path} has num_classes={ckpt.num_classes} but this run uses {num_classes}: pass "
                         "--class-conditional or --no-class-conditional as the teacher was trained")
    return load_model(ckpt, "ema")


# ---------------------------------------------------------------------------------------------------- building
def student_network(config: RunConfig, method: Method, in_channels: int, num_classes: int | None, *,
                    teacher: nn.Module | None = None, resumed: Checkpoint | None = None) -> UNet:
    """The UNet a run trains: the config's, or the teacher's architecture for a student that starts from its weights
    (a flag that asks for another one is refused), with the time embedding the method (or the teacher) needs."""
    arch = {unet: getattr(config, flag) for flag, unet in ARCH.items()}
    arch["null_class"] = bool(config.label_dropout and num_classes)  # a null class to drop labels to (guidance)
    if teacher is not None and hasattr(teacher, "net"):  # the student starts from the teacher's weights (CM)
        theirs = {k: teacher.net.config[k] for k in ("base_channels", "channel_mult", "num_res_blocks", "attn_levels")}
        theirs["null_class"] = bool(teacher.net.config.get("null_class"))
        for flag, key in ARCH.items():
            mine = list(arch[key]) if key == "channel_mult" else arch[key]
            if flag not in config.preset_filled and mine != theirs[key]:
                raise ValueError(f"--{flag.replace('_', '-')} {mine} differs from the teacher's {theirs[key]}: the "
                                 "student starts from the teacher's weights and keeps its architecture; drop the flag")
        arch = {**theirs, "channel_mult": tuple(theirs["channel_mult"])}
    net_options = dict(method.net_options)
    if resumed is not None:  # a run keeps its time embedding (EDM teachers scaled it 1000x before 0.2)
        resumed_net = resumed.model.get("net") or {}
        net_options.update({k: resumed_net[k] for k in TIME_EMBEDDING if k in resumed_net})
    return UNet(in_channels, **{**arch, **net_options}, dropout=config.dropout, num_classes=num_classes)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """batch_size is the global batch: split evenly over the ranks."""
    if global_batch % world_size:
        raise ValueError(f"--batch-size {global_batch} is not divisible by the {world_size} processes")
    return global_batch // world_size


def build_trainer(config: RunConfig, dataset: Any, *, image_shape: tuple[int, int, int], classes: list[str] = (),
                  data: dict[str, Any] | None = None, teacher: Checkpoint | None = None,
                  record: dict[str, Any] | None = None) -> ConsistencyTrainer:
    """The trainer of `config` on `dataset` (images of `image_shape`, labelled with `classes`): data loader, teacher,
    method, network and trainer, resumed from config.resume when set. `teacher` is its checkpoint if validate() has
    read it already; `data` and `record` go into config.json (what the data set is; a two-phase run's plan)."""
    if teacher is None:
        teacher = validate(config, image_shape)
    rank, world_size, device = setup(config.device)
    classes = list(classes)
    if config.class_conditional and len(classes) < 2:
        raise ValueError(f"--class-conditional needs labelled data with at least 2 classes; this data has {len(classes)}")
    num_classes = len(classes) if len(classes) > 1 and config.class_conditional is not False else None
    if config.label_dropout and not num_classes:
        raise ValueError("--label-dropout trains a class-conditional model to also work without its class (for "
                         "guidance); this run is unconditional: drop --label-dropout")
    loader = make_loader(dataset, per_rank_batch(config.batch_size, world_size), seed=config.seed,
                         num_workers=config.num_workers, rank=rank, world_size=world_size, device=resolve_device(device))
    total_steps = max(1, round(config.epochs * len(loader))) if config.epochs is not None else config.total_steps
    torch.manual_seed(config.seed)  # the initial weights follow the seed (and agree across torchrun ranks)
    teacher_net = teacher_model(teacher, config.teacher, num_classes) if teacher is not None else None
    method = build_method(config.method, teacher_net, **config.method_options)
    resumed = read_checkpoint(config.resume) if config.resume else None  # read once: sizes, weights, state
    net = student_network(config, method, image_shape[0], num_classes, teacher=teacher_net, resumed=resumed)
    trainer = ConsistencyTrainer(
        method.wrap(net), loader, method=method, out_dir=config.out, image_shape=image_shape,
        options=config.trainer_options(total_steps=total_steps, device=device),
        config={**config.recorded(), "data": {**(data or {}), "classes": classes}, **(record or {})})
    if resumed is not None:
        resume(trainer, resumed, config, total_steps)
    return trainer


def resume(trainer: ConsistencyTrainer, ckpt: Checkpoint, config: RunConfig, total_steps: int | None) -> None:
    """Continue the run of `ckpt`: its state, then its length: a new total_steps moves its curriculum; a finished run
    is extended by a time budget (its length fitted again), and without either is refused with the way to extend it."""
    trainer.load(ckpt, path=config.resume)
    finished = trainer.total_steps is not None and trainer.step_count >= trainer.total_steps
    if total_steps is not None:
        trainer.total_steps = total_steps
    elif finished and config.minutes is not None:
        trainer.total_steps = None
    elif finished:
        raise ValueError(f"the run in {config.resume} is finished (step {trainer.step_count} of "
                         f"{trainer.total_steps}): extend it with --steps N (a new total) or --minutes M")


# ---------------------------------------------------------------------------------------------------- two phases
class Phase(NamedTuple):
    """One ordinary run of a plan: its settings, what its config.json records besides, and a checkpoint of an earlier
    run to delete before it starts (a consistency model must not outlive the teacher it came from)."""

    config: RunConfig
    record: dict[str, Any]
    discard: Path | None = None


def teacher_path(out: str | Path) -> Path:
    return Path(out) / "teacher" / "checkpoint.pt"


def is_two_phase(config: RunConfig) -> bool:
    """A run that trains its own teacher first: a teacher share, and no --teacher but the run's own OUT/teacher."""
    return bool(config.teacher_share) and (
        not config.teacher or Path(config.teacher).resolve() == teacher_path(config.out).resolve())


def plan(config: RunConfig) -> list[Phase]:
    """The runs `config` asks for: itself, or with a teacher share an EDM teacher in OUT/teacher for that share of the
    budget (--minutes, --steps or --epochs), then config.method from it in OUT for the rest.

    The teacher's config.json records the whole run ("recipe"), so a resumed two-phase run continues whichever phase
    was cut, with the budgets planned when it began: an unfinished teacher resumes and the second phase then starts
    with its planned budget; once the second phase has begun, OUT/checkpoint.pt is a run of its own.
    """
    if config.teacher_share and not takes_teacher(config.method):
        raise ValueError(f"--teacher-share trains a teacher for cd, scd, ect or scm; --method {config.method} does "
                         "not use one: drop --teacher-share")
    if config.teacher_share and config.teacher and not is_two_phase(config):
        raise ValueError("--teacher-share trains a teacher first; with --teacher yours is used: give one, not both")
    if not is_two_phase(config):
        return [Phase(config, {})]
    out, teacher_ckpt, student_ckpt = Path(config.out), teacher_path(config.out), Path(config.out) / "checkpoint.pt"
    if config.resume:
        planned = planned_run(out)
        if planned is None:
            raise ValueError(f"{out} holds no two-phase run to resume ({teacher_ckpt} is missing or was not written "
                             "by one): start it without --resume")
        config = replace(config, teacher_share=planned["run"]["teacher_share"],
                         **{k: planned["run"].get(k) for k in BUDGETS})
    else:
        check_fresh(config)
    teacher_budget, student_budget = split_budget(config)
    phases = []
    # the teacher is done once it finished, or once the second phase began from it
    teacher_done = bool(config.resume) and (student_ckpt.is_file() or finished(teacher_ckpt))
    if not teacher_done:
        filled = [k for k in config.preset_filled if not k.startswith("method_options.")]
        teacher = replace(config, method="edm", method_options={}, teacher=None, teacher_share=0.0,
                          out=str(teacher_ckpt.parent), preset_filled=filled, progress_label="1/2 teacher (edm)",
                          resume=str(teacher_ckpt) if config.resume else None,
                          **(left_of(teacher_ckpt, teacher_budget) if config.resume else teacher_budget))
        phases.append(Phase(teacher, {"recipe": config.recorded()},
                            student_ckpt if config.overwrite and not config.resume else None))
    resume_from = None
    if teacher_done and student_ckpt.is_file():
        if finished(student_ckpt):
            raise ValueError(f"both phases of the run in {out} are finished: extend the second with --resume and "
                             "--minutes M or --steps N (a new total), without --teacher-share")
        resume_from, student_budget = str(student_ckpt), left_of(student_ckpt, student_budget)
    student = replace(config, teacher=str(teacher_ckpt), teacher_share=0.0, resume=resume_from,
                      progress_label=f"2/2 {config.method}", **student_budget)
    return [*phases, Phase(student, {})]


def split_budget(config: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(teacher's, method's) budgets: the share of each of minutes, total_steps and epochs given, and the rest."""
    share = config.teacher_share
    teacher, student = {}, {}
    for key in BUDGETS:
        total = getattr(config, key)
        if total is None:
            teacher[key] = student[key] = None
        elif key == "total_steps":
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
    recipe = read_checkpoint(path).config.get("recipe")
    if recipe is not None and "steps" in recipe.get("run", {}):  # written by 0.2, where total_steps was "steps"
        recipe["run"]["total_steps"] = recipe["run"].pop("steps")
    return recipe


def check_fresh(config: RunConfig) -> None:
    """A new two-phase run: neither phase's folder may hold a run unless --overwrite."""
    for path in (Path(config.out) / "checkpoint.pt", teacher_path(config.out)):
        if path.exists() and not config.overwrite:
            raise ValueError(f"{path.parent} already holds a run (checkpoint.pt). Continue it with --resume, train "
                             "a new one with a fresh --out, or replace it with --overwrite")


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
    """Free a finished phase's memory (its compiled graphs, its optimizer) before the next phase builds its own."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

