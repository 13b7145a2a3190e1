"""Zero-shot editing from the command line, PNG in, PNG out.

    python -m consistency.cli.edit inpaint --checkpoint ckpt.pt --input examples/digit.png --box 0,14,28,28 --out filled.png
    python -m consistency.cli.edit inpaint --checkpoint ckpt.pt --input digit.png --mask mask.png --out filled.png
    python -m consistency.cli.edit colorize --checkpoint rgb.pt --input grey.png --out colour.png
    python -m consistency.cli.edit super-resolve --checkpoint ckpt.pt --input small.png --factor 4 --out big.png
    python -m consistency.cli.edit stroke --checkpoint ckpt.pt --input strokes.png --t-start 5 --out result.png
    python -m consistency.cli.edit denoise --checkpoint ckpt.pt --input noisy.png --sigma 0.5 --out clean.png
    python -m consistency.cli.edit interpolate --checkpoint ckpt.pt --num 8 --out path.png

A mask is white (255) where pixels are generated. --box x0,y0,x1,y1 marks the rectangle [x0, x1) x [y0, y1).
The output PNG holds the result, or with --compare a strip: input, degraded input (or mask), result.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .. import editing
from ..checkpoint import load_model
from ..images import check_image_path, load_image, save_grid
from ..model import check_guidance, guided
from ..pretrained import read_model
from ..sampling import SAMPLERS, default_sigmas
from .args import Parser, check_writable, nonneg_int, positive_float, positive_int

TASKS = ("inpaint", "colorize", "super-resolve", "stroke", "denoise", "interpolate")


def box_mask(box: str, height: int, width: int) -> torch.Tensor:
    try:
        x0, y0, x1, y1 = (int(v) for v in box.split(","))
    except ValueError:
        raise ValueError(f"--box must be x0,y0,x1,y1 in pixels, got {box!r}") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"--box {box} does not fit a {width}x{height} image (need 0 <= x0 < x1 <= W, 0 <= y0 < y1 <= H)")
    mask = torch.zeros(1, 1, height, width)
    mask[..., y0:y1, x0:x1] = 1
    return mask


def run_task(args: argparse.Namespace, model: torch.nn.Module, shape: tuple[int, int, int]) -> torch.Tensor:
    """Returns the images to write: (N, C, H, W) in [-1, 1]."""
    channels, height, width = shape
    g = torch.Generator().manual_seed(args.seed)
    labels = torch.tensor([args.class_label]) if args.class_label is not None else None
    if model.num_classes and labels is None:
        raise ValueError(f"this model is class-conditional: pass --class-label (0..{model.num_classes - 1})")
    if labels is not None and not model.num_classes:
        raise ValueError("--class-label given but the model is not class-conditional")
    if labels is not None and not 0 <= args.class_label < model.num_classes:
        raise ValueError(f"--class-label must be in 0..{model.num_classes - 1}, got {args.class_label}")
    sigmas = default_sigmas(args.steps, model)
    if args.task == "interpolate":
        z1 = torch.randn(1, *shape, generator=g)
        z2 = torch.randn(1, *shape, generator=g)
        alphas = torch.linspace(0, 1, args.num).tolist()
        return editing.interpolate(model, z1, z2, alphas, class_labels=labels)[:, 0]
    if not args.input:
        raise ValueError(f"{args.task} needs --input IMAGE.png")
    image = load_image(args.input, channels).unsqueeze(0)
    if args.task != "super-resolve" and image.shape[-2:] != (height, width):
        raise ValueError(f"{args.input} is {image.shape[-1]}x{image.shape[-2]} but the model makes {width}x{height} images")
    if args.task == "inpaint":
        if bool(args.mask) == bool(args.box):
            raise ValueError("inpaint needs exactly one of --mask MASK.png or --box x0,y0,x1,y1")
        mask = load_image(args.mask, 1).unsqueeze(0).add(1).div(2) if args.mask else box_mask(args.box, height, width)
        result = editing.inpaint(model, image, mask, sigmas, generator=g, class_labels=labels)
        degraded = torch.where(mask > 0.5, torch.zeros_like(image), image)
    elif args.task == "colorize":
        if channels != 3:
            raise ValueError("colorization needs an RGB model; this checkpoint's model has 1 channel (grayscale)")
        grey = torch.einsum("c,bchw->bhw", editing.LUMA, image).unsqueeze(1).expand_as(image)
        degraded = grey
        result = editing.colorize(model, grey, sigmas, generator=g, class_labels=labels)
    elif args.task == "super-resolve":
        f = args.factor
        if height % f or width % f or image.shape[-2:] != (height // f, width // f):
            raise ValueError(f"super-resolve by {f} needs a {width // f}x{height // f} input for this {width}x{height} model "
                             f"(and a factor that divides the size); got {image.shape[-1]}x{image.shape[-2]}")
        degraded = image.repeat_interleave(f, -2).repeat_interleave(f, -1)
        result = editing.super_resolve(model, image, f, sigmas, generator=g, class_labels=labels)
        image = degraded
    elif args.task == "stroke":
        degraded = image
        result = editing.stroke_edit(model, image, args.t_start, args.steps, generator=g, class_labels=labels)
    else:  # denoise
        degraded = image
        result = editing.denoise(model, image, args.sigma, class_labels=labels)
    if args.compare:
        return torch.cat([image, degraded, result.cpu()])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m consistency.cli.edit", description=__doc__)
    parser.add_argument("task", help="one of: " + ", ".join(TASKS))
    parser.add_argument("--checkpoint", required=True, help="a trainer checkpoint (checkpoint.pt), a model folder (save_pretrained, "
                        "cli.export) or a Hugging Face Hub id owner/name")
    parser.add_argument("--input", help="input PNG/JPEG")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--mask", help="inpaint: PNG, white = generate")
    parser.add_argument("--box", help="inpaint: rectangle x0,y0,x1,y1 to generate")
    parser.add_argument("--factor", type=positive_int, default=2, help="super-resolve: integer upscaling factor "
                        "(default 2)")
    parser.add_argument("--t-start", type=positive_float, default=5.0,
                        help="stroke: noise level the strokes are lifted to (default 5)")
    parser.add_argument("--sigma", type=positive_float, default=0.5,
                        help="denoise: noise standard deviation in [-1, 1] units (default 0.5)")
    parser.add_argument("--num", type=positive_int, default=8, help="interpolate: images along the path (default 8)")
    parser.add_argument("--steps", type=positive_int, default=4,
                        help="noise levels of Algorithm 4, Karras-spaced from T (default 4)")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="default 0")
    parser.add_argument("--class-label", type=int, default=None, help="class for class-conditional models")
    parser.add_argument("--guidance", type=float, default=None, metavar="W",
                        help="classifier-free guidance scale of every step (1 = unguided, the default)")
    parser.add_argument("--compare", action="store_true", help="write input, degraded and result side by side")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    if args.task not in TASKS:
        parser.error(f"unknown task {args.task!r}: choose one of {', '.join(TASKS)}")
    try:
        check_writable(args.out, "--out", not_same_as=(args.input or args.checkpoint, "--input" if args.input else "--checkpoint"))
        check_image_path(args.out, "--out")
        if args.mask:
            check_writable(args.out, "--out", not_same_as=(args.mask, "--mask"))
        ckpt = read_model(args.checkpoint)
        if not SAMPLERS[ckpt.sampler].edits:
            raise ValueError(f"{args.checkpoint} holds a model trained with --method {ckpt.method.get('name')}, which "
                             "is not a consistency model: editing (CM Algorithm 4) needs one")
        model = load_model(ckpt, "ema", args.device)
        check_guidance(model, args.guidance, ckpt.method)
        images = run_task(args, guided(model, args.guidance), ckpt.image_shape)
        save_grid(images, args.out, nrow=len(images))
    except (OSError, ValueError) as exc:  # OSError: a missing or unreadable image or checkpoint, a full disk
        sys.exit(f"error: {exc}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
