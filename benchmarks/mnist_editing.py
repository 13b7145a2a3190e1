"""Zero-shot editing on MNIST test digits (CM Algorithm 4), measured: inpainting and super-resolution x4.

    python benchmarks/mnist_editing.py --checkpoint runs/mnist_uncond/checkpoint.pt --data-root DIR \\
        --steps 1 2 4 --t-start 80 20 5 2

Inpainting: the lower half (rows 14-27) of the first --n test digits is removed and regenerated; the yardstick
classifier (mnist_quality.py's) reads each completed digit, against the original images and a trivial fill (the lower
half set to background). Algorithm 4 starts at t_1 = --t-start (80 = T as in CM; below T it is SDEdit-like, starting
from a partly noised guess) and takes `steps` Karras levels down from it. Super-resolution: each digit is averaged to
7x7 and regenerated at 28x28 keeping every 4x4 patch's mean; PSNR against the original, next to bicubic and nearest
upsampling. An unconditional model is required (a class-conditional one would be told the digit). Results are
printed and written as JSON and a figure next to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnist_quality import CACHE  # noqa: E402

from consistency.checkpoint import load_model  # noqa: E402
from consistency.data import load_mnist_arrays  # noqa: E402
from consistency.editing import inpaint, super_resolve  # noqa: E402
from consistency.images import from_uint8, save_grid  # noqa: E402
from consistency.model import noise_range  # noqa: E402
from consistency.sampling import consistency_sigmas  # noqa: E402
from consistency.yardstick import Yardstick, classifier_outputs, mnist_splits  # noqa: E402


def accuracy(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    _, probs = classifier_outputs(classifier, images)
    return float((probs.argmax(1) == labels).float().mean())


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean PSNR over images in [-1, 1], with the data range as the peak (20 log10(2 / RMSE))."""
    mse = (x.clamp(-1, 1) - y).square().flatten(1).mean(1)
    return float((20 * torch.log10(2 / mse.sqrt().clamp(min=1e-8))).mean())


def batched(fn, images: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.cat([fn(chunk, torch.Generator().manual_seed(seed + i)) for i, chunk in enumerate(images.split(250))]).cpu()


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--n", type=int, default=1000, help="test digits to edit")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="Algorithm-4 step counts")
    parser.add_argument("--t-start", type=float, nargs="+", default=[80.0], help="inpainting's first level t_1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=str(CACHE), help="where the yardstick classifier is cached")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "editing"),
                        help="prefix of the .json and .png written")
    args = parser.parse_args(argv)

    classifier = Yardstick.load_or_train(mnist_splits(args.data_root), args.cache_dir).classifier
    images_u8, labels = load_mnist_arrays(args.data_root, "test")
    images, labels = from_uint8(images_u8[: args.n]).unsqueeze(1), labels[: args.n]
    model = load_model(args.checkpoint, "ema", "auto")
    if model.num_classes:
        sys.exit(f"error: {args.checkpoint} is class-conditional; told the digit, it would pass these tests "
                 "trivially. Use an unconditional model (python main.py --no-class-conditional).")
    sigma_min, sigma_max = noise_range(model)
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:, :] = 1  # generate the lower half; the top half is given
    trivial = torch.where(mask.bool(), torch.full_like(images, -1.0), images)
    rows = [{"task": "inpaint", "what": "original test images", "accuracy": accuracy(classifier, images, labels)},
            {"task": "inpaint", "what": "top half + background fill", "accuracy": accuracy(classifier, trivial, labels)}]
    figure = [images[:12], trivial[:12]]
    for t_start in args.t_start:
        for k in args.steps:
            t0 = time.time()
            sigmas = consistency_sigmas(k, sigma_min, min(t_start, sigma_max))
            filled = batched(lambda x, g: inpaint(model, x, mask, sigmas, generator=g), images, args.seed)
            assert torch.equal(filled[..., :14, :], images[..., :14, :])  # the given half is untouched
            rows.append({"task": "inpaint", "what": f"consistency inpainting, t_1 = {t_start:g}, {k} step(s)",
                         "t_start": t_start, "steps": k, "sigmas": sigmas, "seconds": time.time() - t0,
                         "accuracy": accuracy(classifier, filled, labels)})
            figure.append(filled[:12])
    low = F.avg_pool2d(images, 4)  # (N, 1, 7, 7)
    truth_figure = [images[:12], F.interpolate(low[:12], scale_factor=4, mode="nearest")]
    for name, mode in (("nearest", "nearest"), ("bicubic", "bicubic")):
        up = F.interpolate(low, scale_factor=4, mode=mode, **({"align_corners": False} if mode == "bicubic" else {}))
        rows.append({"task": "super-resolve", "what": f"{name} upsampling", "psnr": psnr(up, images)})
        if name == "bicubic":
            truth_figure.append(up[:12].clamp(-1, 1))
    for k in args.steps:
        sigmas = consistency_sigmas(k, sigma_min, sigma_max)
        upscaled = batched(lambda x, g: super_resolve(model, x, 4, sigmas, generator=g), low, args.seed)
        rows.append({"task": "super-resolve", "what": f"consistency super-resolution, {k} step(s)", "steps": k,
                     "psnr": psnr(upscaled, images), "accuracy": accuracy(classifier, upscaled, labels)})
        truth_figure.append(upscaled[:12])
    for r in rows:
        value = f"label kept {r['accuracy']:.3f}" if r["task"] == "inpaint" else f"PSNR {r['psnr']:.2f} dB"
        print(f"{r['task']:14s} {r['what']:52s} {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"checkpoint": args.checkpoint, "n": args.n, "rows": rows}, indent=2))
    save_grid(torch.cat(figure + truth_figure), out.with_suffix(".png"), nrow=12)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return rows


if __name__ == "__main__":
    main()
