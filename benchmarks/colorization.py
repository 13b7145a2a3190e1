"""Colorization with an RGB consistency model (CM Algorithm 4, keeping luminance), measured on held-out images.

    python -m consistency.cli.colored_mnist --data-root DIR --out data/colored_mnist
    python main_imagenet9.py --dataset folder --data-root data/colored_mnist/train --image-size 32 --minutes 20 --out runs/rgb
    python benchmarks/colorization.py --checkpoint runs/rgb/checkpoint.pt --data-root data/colored_mnist/test

--n held-out images, drawn at random (--seed), are turned to grayscale (luminance kept, as colorization's A) and
coloured again with `steps` Karras levels; a class-conditional model is told each image's class (its folder). The
error is the RMSE between recovered and true RGB values in [0, 1], next to a trivial baseline that keeps the
luminance and gives every pixel the mean chroma of the evaluated images (the best constant guess, given the answers'
statistics). The luminance of every result equals the input's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency.checkpoint import load_model, read_checkpoint  # noqa: E402
from consistency.data import image_folder_dataset  # noqa: E402
from consistency.editing import LUMA, color_op, colorize  # noqa: E402
from consistency.images import save_grid  # noqa: E402
from consistency.sampling import default_sigmas  # noqa: E402


def rmse(x: torch.Tensor, y: torch.Tensor) -> float:
    """RGB RMSE in [0, 1] units for images in [-1, 1]."""
    return float(((x.clamp(-1, 1) - y) / 2).square().mean().sqrt())


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an RGB model (e.g. trained on colored MNIST)")
    parser.add_argument("--data-root", required=True, help="held-out images in class folders (the test/ tree)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "colorization"))
    args = parser.parse_args(argv)
    ckpt = read_checkpoint(args.checkpoint)
    model = load_model(ckpt, "ema", "auto")
    data = image_folder_dataset(args.data_root, ckpt.image_shape[-1], flip=False)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.n].tolist()
    truth = torch.stack([data[i][0] for i in pick])  # (N, 3, H, W) in [-1, 1]
    labels = torch.tensor([data[i][1] for i in pick]) if ckpt.num_classes else None
    grey = torch.einsum("c,bchw->bhw", LUMA, truth).unsqueeze(1).expand_as(truth).contiguous()
    op = color_op()
    mean_chroma = op.forward(truth).mean(dim=(0, 2, 3))[1:]  # the best constant chroma (here: of these images)
    baseline = op.forward(grey)
    baseline[:, 1:] = mean_chroma.view(1, 2, 1, 1)
    baseline = op.inverse(baseline)
    rows = [{"what": "grayscale input (no colour)", "rmse": rmse(grey, truth)},
            {"what": "luminance + the mean chroma (trivial baseline)", "rmse": rmse(baseline, truth)}]
    figure = [truth[:12], grey[:12], baseline[:12].clamp(-1, 1)]
    for k in args.steps:
        out = torch.cat([colorize(model, chunk, default_sigmas(k, model), class_labels=None if labels is None else
                                  labels[i * 250 : (i + 1) * 250], generator=torch.Generator().manual_seed(args.seed + i))
                         for i, chunk in enumerate(grey.split(250))]).cpu()
        luma_error = float((torch.einsum("c,bchw->bhw", LUMA, out) - torch.einsum("c,bchw->bhw", LUMA, grey)).abs().max())
        rows.append({"what": f"consistency colorization, {k} step(s)", "steps": k, "rmse": rmse(out, truth),
                     "luminance_error": luma_error})
        figure.append(out[:12].clamp(-1, 1))
    for r in rows:
        print(f"{r['what']:50s} RMSE {r['rmse']:.4f}")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"checkpoint": args.checkpoint, "n": len(pick), "rows": rows}, indent=2))
    save_grid(torch.cat(figure), path.with_suffix(".png"), nrow=12)
    print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.png')} (rows: truth, grey, baseline, then steps)")
    return rows


if __name__ == "__main__":
    main()
