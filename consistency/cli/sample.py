"""Draw samples from a checkpoint's sampling EMA, the way its training method samples.

    python -m consistency.cli.sample --checkpoint runs/mnist/checkpoint.pt --n 10000 --steps 1 --out samples.npz
    python -m consistency.cli.sample --checkpoint runs/mnist/checkpoint.pt --n 64 --steps 2 --grid grid.png

The .npz holds `images`, uint8 (N, C, H, W), and `labels` when the model is class-conditional. For an EDM teacher
checkpoint --steps is the number of Karras levels of its Heun sampler (18 = 35 evaluations).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..images import check_image_path, save_grid, to_uint8
from ..model import check_guidance
from ..pretrained import read_model
from ..sampling import check_sigmas, generate
from ..utils import atomic_write
from .args import Parser, check_writable, nonneg_int, positive_int


def parse_sigmas(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 80,0.8, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite noise levels such as 80,0.8, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m consistency.cli.sample", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a trainer checkpoint (checkpoint.pt), a model folder (save_pretrained, "
                        "cli.export) or a Hugging Face Hub id owner/name")
    parser.add_argument("--n", type=positive_int, default=64, help="number of images (default 64)")
    parser.add_argument("--steps", type=positive_int, default=1, help="sampling steps (default 1)")
    parser.add_argument("--sigmas", type=parse_sigmas, default=None,
                        help="explicit decreasing noise levels, e.g. 80,0.8 (overrides --steps)")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="default 0")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="images per forward pass (default 500)")
    parser.add_argument("--class-label", type=int, default=None, help="class for every image (class-conditional "
                        "models); by default the classes take turns")
    parser.add_argument("--weights", default="ema", choices=["ema", "model"], help="sampling EMA (default) or online")
    parser.add_argument("--guidance", type=float, default=None, metavar="W",
                        help="classifier-free guidance scale (1 = unguided; default: a model folder's recommended "
                             "scale, else 1; needs a model trained with --label-dropout, or a guided teacher's student)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    parser.add_argument("--out", default=None, help="write an .npz with `images` uint8 (N, C, H, W)")
    parser.add_argument("--grid", default=None, help="write a PNG grid")
    args = parser.parse_args(argv)
    if not args.out and not args.grid:
        parser.error("give --out samples.npz and/or --grid grid.png")
    try:
        for path, flag in ((args.out, "--out"), (args.grid, "--grid")):
            if path:
                check_writable(path, flag, not_same_as=(args.checkpoint, "--checkpoint"))
        if args.out and Path(args.out).suffix != ".npz":
            raise ValueError(f"--out {args.out}: the samples are written as an .npz archive: end the name with .npz")
        if args.grid:
            check_image_path(args.grid, "--grid")
        if args.out and args.grid and Path(args.out).resolve() == Path(args.grid).resolve():
            raise ValueError("--out and --grid name the same file: give each its own")
        ckpt = read_model(args.checkpoint)
        model = load_model(ckpt, args.weights, args.device)
        labels = None
        if ckpt.num_classes:
            if args.class_label is not None and not 0 <= args.class_label < ckpt.num_classes:
                raise ValueError(f"--class-label must be in 0..{ckpt.num_classes - 1}, got {args.class_label}")
            labels = (torch.full((args.n,), args.class_label) if args.class_label is not None
                      else torch.arange(args.n) % ckpt.num_classes)
        elif args.class_label is not None:
            raise ValueError("--class-label given but the model is not class-conditional")
        if args.sigmas is not None:
            check_sigmas(args.sigmas, model, ckpt.sampler)  # before any sampling
        if args.guidance is None and ckpt.config.get("pretrained", {}).get("default_guidance") is not None:
            args.guidance = ckpt.config["pretrained"]["default_guidance"]  # a model folder's recommended scale
            print(f"guidance w = {args.guidance:g}, the model folder's default (--guidance 1: unguided)")
        check_guidance(model, args.guidance, ckpt.method)
        images = generate(model, args.n, ckpt.image_shape, steps=args.steps, sigmas=args.sigmas, sampler=ckpt.sampler,
                          seed=args.seed, batch_size=args.batch_size, class_labels=labels, progress=True,
                          guidance=args.guidance)
        extra = {"labels": labels.numpy()} if labels is not None else {}
        if args.out:  # written to a temporary file, then renamed: a full disk leaves no truncated archive
            atomic_write(args.out, lambda tmp: np.savez_compressed(tmp, images=to_uint8(images).numpy(), **extra))
            print(f"wrote {args.n} images {tuple(images.shape)} to {args.out}")
        if args.grid:
            save_grid(images, args.grid)
            print(f"wrote grid {args.grid}")
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
