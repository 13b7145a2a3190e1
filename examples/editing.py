"""Zero-shot editing with an MNIST consistency model: one figure row per task (input, degraded, results).

    python examples/editing.py                                      # the pretrained model that comes with the package
    python examples/editing.py --checkpoint runs/mnist/checkpoint.pt --data-root /path/to/mnist --out editing.png
    python examples/editing.py --data-root /path/to/mnist --train-minutes 10      # train your own first

The images edited are MNIST's first test digits when --data-root holds MNIST, else digits the model draws itself.

Rows: inpainting (lower half), super-resolution (x4 from 7x7), stroke-guided generation (a digit's blurred,
thickened outline lifted to t=5), denoising (sigma 0.5), interpolation between two latents. Colorization needs an
RGB model and is skipped for MNIST.
"""

import argparse
import math
import sys

import torch
import torch.nn.functional as F

import consistency as cm
from consistency import editing
from consistency.data import load_mnist_arrays
from consistency.images import check_image_path, from_uint8
from consistency.model import guided

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--checkpoint", default=None,
                    help="a trainer checkpoint, a model folder or a hub id (default: the bundled pretrained/mnist)")
parser.add_argument("--data-root", default="data")
parser.add_argument("--train-minutes", type=float, default=None, help="train a model for this long first")
parser.add_argument("--out", default="editing.png")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
try:
    check_image_path(args.out, "--out")
    if args.train_minutes is not None and not (args.train_minutes > 0 and math.isfinite(args.train_minutes)):
        raise ValueError(f"--train-minutes must be a positive number, got {args.train_minutes}")
    if args.train_minutes is not None and args.checkpoint is not None:
        raise ValueError("give --checkpoint (a model to edit with) or --train-minutes (train one first), not both")
except ValueError as exc:
    sys.exit(f"error: {exc}")

if args.checkpoint is None and args.train_minutes is None:
    args.checkpoint = "pretrained/mnist"
if args.checkpoint is None:  # an unconditional model with main.py's CPU settings
    preset = cm.presets.MNIST_CPU
    method = preset.method("ict")
    trainer = cm.ConsistencyTrainer(method.wrap(preset.unet(1)), cm.mnist(args.data_root, batch_size=preset.batch_size),
                                    method=method, **preset.trainer_options(), total_steps=None, out_dir="runs/editing")
    trainer.train(minutes=args.train_minutes)
    args.checkpoint = str(trainer.save())
try:
    model = guided(cm.load_model(args.checkpoint), None)  # a student that takes a guidance scale: w = 1
except (OSError, ValueError) as exc:  # a missing, damaged or foreign checkpoint: one line, no traceback
    sys.exit(f"error: {exc}")
g = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731
try:
    images_u8, digits = load_mnist_arrays(args.data_root, "test")
    x, digits = from_uint8(images_u8[:6]).unsqueeze(1), digits[:6].long()  # (6, 1, 28, 28)
except (OSError, ValueError):  # no MNIST here: edit digits the model draws (0 to 5 when it takes a class)
    print(f"no MNIST in {args.data_root!r}: editing digits the model draws itself (--data-root DIR for real ones)")
    digits = torch.arange(6)
    x = cm.generate(model, 6, steps=2, class_labels=digits if model.num_classes else None, seed=args.seed)
# A class-conditional model (main.py's default) is told which digit each image shows; an unconditional one is not.
y = digits if model.num_classes else None
sigmas = cm.default_sigmas(4, model)

mask = torch.zeros(1, 1, 28, 28)
mask[..., 14:, :] = 1
inpainted = editing.inpaint(model, x, mask, sigmas, generator=g(), class_labels=y)
low = F.avg_pool2d(x, 4)  # (6, 1, 7, 7)
upscaled = editing.super_resolve(model, low, 4, sigmas, generator=g(), class_labels=y)
strokes = (F.max_pool2d(F.avg_pool2d(x, 3, 1, 1), 3, 1, 1) > -0.2).float() * 2 - 1  # rough, thick strokes
stroked = editing.stroke_edit(model, strokes, t_start=5.0, steps=3, generator=g(), class_labels=y)
noisy = x + 0.5 * torch.randn(x.shape, generator=g())
denoised = editing.denoise(model, noisy, 0.5, class_labels=y)
z = torch.randn(2, 1, 1, 28, 28, generator=g())
path = editing.interpolate(model, z[0], z[1], torch.linspace(0, 1, 8).tolist(),
                          class_labels=None if y is None else y[:1])[:, 0]  # (8, 1, 28, 28)

blank = torch.ones(1, 1, 28, 28)  # white separator
rows = [
    [x, torch.where(mask.bool(), torch.full_like(x, -1), x), inpainted],
    [x, low.repeat_interleave(4, -1).repeat_interleave(4, -2), upscaled],
    [x, strokes, stroked],
    [x, noisy.clamp(-1, 1), denoised],
]
grid = [torch.cat([torch.cat([col[i:i + 1] for col in cols] + [blank]) for i in range(2)]) for cols in rows]
grid.append(path)
cm.save_grid(torch.cat(grid).cpu(), args.out, nrow=8)
print(f"wrote {args.out}: rows inpaint, super-resolve x4, stroke, denoise (each: input, degraded, result, twice), "
      "interpolation")
