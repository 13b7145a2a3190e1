"""Zero-shot editing with an MNIST consistency model: one figure row per task (input, degraded, results).

    python examples/editing.py --checkpoint runs/mnist/checkpoint.pt --data-root /path/to/mnist --out editing.png
    python examples/editing.py --data-root /path/to/mnist --train-minutes 10      # no checkpoint: train one first

Rows: inpainting (lower half), super-resolution (x4 from 7x7), stroke-guided generation (a digit's blurred,
thickened outline lifted to t=5), denoising (sigma 0.5), interpolation between two latents. Colorization needs an
RGB model and is skipped for MNIST.
"""

import argparse
import sys

import torch
import torch.nn.functional as F

import consistency as cm
from consistency import editing
from consistency.data import load_mnist_arrays
from consistency.images import from_uint8

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--checkpoint", default=None, help="a trainer checkpoint; without one a model is trained first")
parser.add_argument("--data-root", default="data")
parser.add_argument("--train-minutes", type=float, default=10.0, help="training budget when no checkpoint is given")
parser.add_argument("--out", default="editing.png")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

if args.checkpoint is None:  # an unconditional model with main.py's CPU settings
    preset = cm.presets.MNIST_CPU
    method = preset.method("ict")
    trainer = cm.ConsistencyTrainer(method.wrap(preset.unet(1)), cm.mnist(args.data_root, batch_size=preset.batch_size),
                                    method=method, **preset.trainer_options(), total_steps=None, out_dir="runs/editing")
    trainer.train(minutes=args.train_minutes)
    args.checkpoint = str(trainer.save())
try:
    model = cm.load_model(args.checkpoint)
    images_u8, digits = load_mnist_arrays(args.data_root, "test")
except (OSError, ValueError) as exc:  # a missing, damaged or foreign checkpoint; MNIST not found: one line, no traceback
    sys.exit(f"error: {exc}")
x = from_uint8(images_u8[:6]).unsqueeze(1)  # (6, 1, 28, 28)
# A class-conditional model (main.py's default) is told which digit each image shows; an unconditional one is not.
y = digits[:6].long() if model.num_classes else None
g = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731
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
