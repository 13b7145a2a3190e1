"""Command-line plumbing shared by main.py and main_imagenet9.py: the common flags and the run itself."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import load_model, read_checkpoint
from .distillation import ConsistencyDistillation, EDMLoss, student_from_teacher
from .losses import ConsistencyTraining, EasyConsistencyTraining, ImprovedConsistencyTraining
from .model import ConsistencyModel, EDMDenoiser
from .trainer import ConsistencyTrainer
from .unet import UNet
from .utils import resolve_device


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (where bf16 autocast runs about twice as fast as fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2, got {text!r}") from None


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Flags every training script has. A default of None means 'chosen for the device' (see resolve_defaults)."""
    g = parser.add_argument_group("run")
    g.add_argument("--out", default="runs/mnist", help="output folder: config.json, checkpoint.pt, samples/, loss_curve.png")
    g.add_argument("--steps", type=int, default=None, help="total training steps (sets the curriculum length)")
    g.add_argument("--epochs", type=float, default=None, help="train this many passes over the data instead of --steps")
    g.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget: stop, save and sample when it runs out (without --steps the step count "
                        "is estimated from the speed of the first steps)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, noise and data order")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue a run from CKPT (default: OUT/checkpoint.pt)")
    g.add_argument("--sample-every", type=int, default=None, help="write sample grids every this many steps")
    g.add_argument("--checkpoint-every", type=int, default=None, help="write checkpoint.pt every this many steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    g = parser.add_argument_group("method")
    g.add_argument("--recipe", default="ict", choices=["ict", "ct", "ect"],
                   help="ict = improved consistency training (Song & Dhariwal 2023); ct = original CM Algorithm 3; "
                        "ect = easy consistency tuning's continuous-time curriculum (Geng et al. 2024), from scratch")
    g.add_argument("--s1", type=int, default=None, help="final number of discretisation steps of the curriculum "
                   "(paper: 1280 for iCT, 150 for CT)")
    g.add_argument("--distance", default=None, choices=["pseudo_huber", "l2", "l1"],
                   help="consistency distance (default: pseudo_huber for ict, l2 for ct)")

    g = parser.add_argument_group("distillation mode")
    g.add_argument("--mode", default="ct", choices=["ct", "teacher", "distill"],
                   help="ct = consistency training in isolation (see --recipe); teacher = train an EDM diffusion "
                        "teacher; distill = consistency distillation of --teacher (CM Algorithm 2)")
    g.add_argument("--teacher", default=None, metavar="CKPT", help="distill: checkpoint written by --mode teacher")
    g.add_argument("--solver", default="heun", choices=["heun", "euler"], help="distill: teacher ODE solver")
    g.add_argument("--num-scales", type=int, default=None,
                   help="distill: N discretisation levels (default CM's 18; main.py's CPU preset uses 10, which "
                        "converges faster in a short run)")
    g.add_argument("--mu", type=float, default=0.95, help="distill: fixed target-network decay (CM: 0.95)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=None, help="images per step")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    g.add_argument("--lr-schedule", default=None, choices=["constant", "cosine"],
                   help="constant (the papers) or cosine decay to 5%% over the run (helps short runs)")
    g.add_argument("--ema-decay", type=float, default=None, help="decay of the sampling EMA")
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="warm the sampling EMA's decay up as min(decay, (1 + k) / (10 + k)) (default on)")
    g.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="bf16 autocast (loss and EMA stay fp32)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training forward/backward")
    g.add_argument("--channels-last", action="store_true", help="NHWC memory layout (helps convolutions on GPUs)")

    g = parser.add_argument_group("network")
    g.add_argument("--width", type=int, default=None, help="UNet base channels")
    g.add_argument("--channel-mult", type=int_tuple, default=None, help="channel multipliers per level, e.g. 1,2,2")
    g.add_argument("--num-res-blocks", type=int, default=None, help="residual blocks per level")
    g.add_argument("--dropout", type=float, default=None, help="dropout in the residual blocks (iCT: 0.3 on CIFAR-10)")


def setup_distributed(args: argparse.Namespace) -> tuple[int, int]:
    """Under torchrun (RANK and WORLD_SIZE set) join the process group: NCCL on GPUs, gloo on CPUs. Returns (rank, world).

    Each rank takes the GPU of its LOCAL_RANK. Without torchrun this does nothing and returns (0, 1).
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    import torch.distributed as dist

    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    else:
        args.device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """--batch-size is the global batch: split evenly over the ranks."""
    if global_batch % world_size:
        raise ValueError(f"--batch-size {global_batch} is not divisible by the {world_size} processes")
    return global_batch // world_size


def resolve_defaults(args: argparse.Namespace, device: torch.device, gpu: dict[str, Any], cpu: dict[str, Any]) -> list[str]:
    """Fill the flags left at None from the GPU or CPU preset; returns the names that were filled."""
    preset = gpu if device.type == "cuda" else cpu
    filled = []
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
            filled.append(key)
    return filled


def build_unet(args: argparse.Namespace, in_channels: int, num_classes: int | None = None) -> UNet:
    return UNet(in_channels, base_channels=args.width, channel_mult=args.channel_mult, num_res_blocks=args.num_res_blocks,
                dropout=args.dropout, num_classes=num_classes)


def load_teacher(path: str | None, image_shape: tuple[int, int, int], num_classes: int | None) -> EDMDenoiser:
    """The sampling EMA of a `--mode teacher` checkpoint, checked against the data it will be distilled on."""
    if not path:
        raise ValueError("--mode distill needs --teacher CKPT (train one with --mode teacher)")
    ckpt = read_checkpoint(path)
    if ckpt["model_config"]["wrapper"] != "EDMDenoiser":
        raise ValueError(f"--teacher {path} holds a {ckpt['model_config']['wrapper']}, not an EDM teacher: "
                         "pass a checkpoint written by --mode teacher")
    if list(ckpt["image_shape"]) != list(image_shape):
        raise ValueError(f"--teacher {path} was trained on images of shape {ckpt['image_shape']}, "
                         f"but this data has shape {list(image_shape)}")
    if ckpt["model_config"]["net"]["num_classes"] != num_classes:
        raise ValueError(f"--teacher {path} has num_classes={ckpt['model_config']['net']['num_classes']} but this run "
                         f"uses {num_classes}: pass --class-conditional or --no-class-conditional as the teacher was trained")
    return load_model(path, "ema")


def build_model_and_loss(args: argparse.Namespace, in_channels: int, num_classes: int | None,
                         image_shape: tuple[int, int, int]) -> tuple[torch.nn.Module, Any]:
    """The model and the loss object for --mode (and --recipe)."""
    kwargs = {"distance": args.distance} if args.distance else {}
    if args.mode == "teacher":
        return EDMDenoiser(build_unet(args, in_channels, num_classes)), EDMLoss()
    if args.mode == "distill":
        teacher = load_teacher(args.teacher, image_shape, num_classes)
        # The student starts from the teacher's weights (CM), so it takes the teacher's architecture.
        student = student_from_teacher(teacher)
        for flag, key in (("width", "base_channels"), ("channel_mult", "channel_mult"), ("num_res_blocks", "num_res_blocks")):
            given = list(args.channel_mult) if flag == "channel_mult" else getattr(args, flag)
            if flag not in getattr(args, "preset_filled", ()) and given != student.net.config[key]:
                raise ValueError(f"--{flag.replace('_', '-')} {given} differs from the teacher's {student.net.config[key]}: "
                                 "the student starts from the teacher's weights and keeps its architecture; drop the flag")
        if args.num_scales is not None:
            kwargs["num_scales"] = args.num_scales
        loss = ConsistencyDistillation(teacher, solver=args.solver, mu=args.mu, **kwargs)
        return student, loss
    return ConsistencyModel(build_unet(args, in_channels, num_classes)), build_loss(args)


def build_loss(args: argparse.Namespace) -> ConsistencyTraining:
    kwargs = {"distance": args.distance} if args.distance else {}
    if args.s1:
        kwargs["s1"] = args.s1
    if args.recipe == "ect":
        kwargs.pop("s1", None)
        return EasyConsistencyTraining(**kwargs)
    return ImprovedConsistencyTraining(**kwargs) if args.recipe == "ict" else ConsistencyTraining(**kwargs)


def run(
    args: argparse.Namespace,
    make_loader: Callable[[argparse.Namespace], Any],
    image_shape: tuple[int, int, int],
    num_classes: int | None,
    gpu: dict[str, Any],
    cpu: dict[str, Any],
) -> ConsistencyTrainer:
    """Pick defaults for the device, build the loader, model, loss and trainer, resume if asked, train, report."""
    rank, world_size = setup_distributed(args)
    device = resolve_device(args.device)
    # A preset's s1 is tuned for iCT's curriculum only, and its num_scales for distillation only.
    unused = {"s1"} if not (args.mode == "ct" and args.recipe == "ict") else set()
    unused |= {"num_scales"} if args.mode != "distill" else set()
    gpu, cpu = ({k: v for k, v in p.items() if k not in unused} for p in (gpu, cpu))
    filled = resolve_defaults(args, device, gpu, cpu)
    args.rank, args.world_size, args.preset_filled = rank, world_size, filled
    shown = [k for k in filled if k != "default_steps" and getattr(args, k) is not None]
    if device.type == "cpu" and shown and rank == 0:
        print("No GPU: using the CPU preset for " + ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in shown)
              + " (any flag overrides it).")
    loader = make_loader(args)
    steps = args.steps
    if args.epochs is not None:
        steps = max(1, round(args.epochs * len(loader)))
    if steps is None and args.minutes is None:
        steps = args.default_steps
    torch.manual_seed(args.seed)  # the initial weights follow --seed (and agree across torchrun ranks)
    model, loss = build_model_and_loss(args, image_shape[0], num_classes, image_shape)
    trainer = ConsistencyTrainer(
        model, loader, loss=loss, lr=args.lr, sample_steps=(18,) if args.mode == "teacher" else (1, 2),
        total_steps=steps, ema_decay=args.ema_decay, ema_warmup=args.ema_warmup, device=device, precision=args.precision,
        out_dir=args.out,
        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
        lr_schedule=args.lr_schedule, progress=not args.no_progress, compile=args.compile,
        channels_last=args.channels_last, config={"args": dict(vars(args))},
    )
    if args.resume:
        path = Path(args.out) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        trainer.load(path)
        if steps is not None and steps != trainer.total_steps:  # extending (or shortening) a run moves its curriculum
            trainer.total_steps = steps
        if rank == 0:
            print(f"Resumed from {path} at step {trainer.step_count} of {trainer.total_steps}.")
    remaining = None if trainer.total_steps is None else max(trainer.total_steps - trainer.step_count, 0)
    trainer.train(remaining, minutes=args.minutes)
    if rank == 0:
        summary = {"steps": trainer.step_count, "total_steps": trainer.total_steps, "world_size": world_size, **trainer.last_run}
        print(json.dumps(summary))
        print(f"Samples: {Path(args.out) / 'samples'}  checkpoint: {Path(args.out) / 'checkpoint.pt'}")
    return trainer
