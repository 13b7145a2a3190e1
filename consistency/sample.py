"""Draw samples from a checkpoint's sampling EMA.

    python -m consistency.sample --checkpoint runs/mnist/checkpoint.pt --n 10000 --steps 1 --out samples.npz
    python -m consistency.sample --checkpoint runs/mnist/checkpoint.pt --n 64 --steps 2 --grid grid.png

The .npz holds `images`, uint8 (N, C, H, W), and `labels` when the model is class-conditional.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_model, read_checkpoint
from .images import save_grid, to_uint8
from .model import EDMDenoiser
from .sampling import default_sigmas, sample
from .solvers import edm_sampler
from .utils import module_device


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    n: int,
    image_shape: tuple[int, int, int],
    *,
    steps: int = 1,
    sigmas: list[float] | None = None,
    seed: int = 0,
    batch_size: int = 500,
    class_labels: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """n samples as uint8 (n, C, H, W), drawn in batches from one seeded generator.

    A ConsistencyModel takes `steps` evaluations (or the explicit `sigmas`); an EDMDenoiser (a diffusion teacher)
    runs EDM's Heun sampler over `steps` levels (2 steps - 1 evaluations).
    """
    generator = torch.Generator().manual_seed(seed)
    device = module_device(model)
    teacher = isinstance(model, EDMDenoiser)
    if not teacher and sigmas is None:
        sigmas = default_sigmas(steps, model.sigma_min, model.sigma_max)
    out = []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="sample"):
        b = min(batch_size, n - start)
        labels = class_labels[start : start + b].to(device) if class_labels is not None else None
        if teacher:
            x = edm_sampler(model, (b, *image_shape), steps, generator=generator, class_labels=labels,
                            sigma_min=model.sigma_min, sigma_max=model.sigma_max)
        else:
            x = sample(model, (b, *image_shape), sigmas, generator=generator, class_labels=labels)
        out.append(to_uint8(x).cpu())
    return torch.cat(out)


def image_shape_of(checkpoint: dict) -> tuple[int, int, int]:
    """(C, H, W) the checkpoint's model was trained on (recorded by the trainer)."""
    shape = checkpoint.get("image_shape")
    if not shape:
        raise ValueError("the checkpoint does not record its image shape; it predates this version")
    return tuple(shape)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by the trainer")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--steps", type=int, default=1, help="network evaluations (Karras-spaced noise levels); for an "
                        "EDM teacher checkpoint, the levels of its Heun sampler (18 = 35 evaluations)")
    parser.add_argument("--sigmas", type=lambda s: [float(v) for v in s.split(",")], default=None,
                        help="explicit decreasing noise levels, e.g. 80,0.8 (overrides --steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--class-label", type=int, default=None, help="class for every image (class-conditional models); "
                        "default cycles through the classes")
    parser.add_argument("--weights", default="ema", choices=["ema", "model"], help="sampling EMA or online weights")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", default=None, help="write an .npz with `images` uint8 (N, C, H, W)")
    parser.add_argument("--grid", default=None, help="write a PNG grid")
    args = parser.parse_args(argv)
    if not args.out and not args.grid:
        parser.error("give --out samples.npz and/or --grid grid.png")
    try:
        ckpt = read_checkpoint(args.checkpoint)
        model = load_model(args.checkpoint, args.weights, args.device)
        num_classes = model.net.num_classes
        labels = None
        if num_classes:
            if args.class_label is not None and not 0 <= args.class_label < num_classes:
                raise ValueError(f"--class-label must be in 0..{num_classes - 1}")
            labels = torch.full((args.n,), args.class_label) if args.class_label is not None else torch.arange(args.n) % num_classes
        elif args.class_label is not None:
            raise ValueError("--class-label given but the model is not class-conditional")
        images = generate(model, args.n, image_shape_of(ckpt), steps=args.steps, sigmas=args.sigmas, seed=args.seed,
                          batch_size=args.batch_size, class_labels=labels, progress=True)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        extra = {"labels": labels.numpy()} if labels is not None else {}
        np.savez_compressed(args.out, images=images.numpy(), **extra)
        print(f"wrote {args.n} images {tuple(images.shape)} to {args.out}")
    if args.grid:
        save_grid(images.float() / 127.5 - 1, args.grid)
        print(f"wrote grid {args.grid}")


if __name__ == "__main__":
    main()
