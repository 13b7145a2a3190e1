"""Quickstart: train a one-step MNIST generator with improved consistency training (iCT) and save samples.

    python examples/quickstart.py --data-root /path/to/mnist --minutes 5

On two CPU cores, 20 minutes give recognisable digits; on a GPU raise --minutes and the width for better ones.
"""

import argparse

import consistency as cm

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data-root", default="data", help="folder with the MNIST idx files, or where to download them")
parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget")
parser.add_argument("--out", default="runs/quickstart")
parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the network (default: the preset's; it pays after a minute or so)")
args = parser.parse_args()

preset = cm.presets.MNIST_CPU  # main.py's CPU settings: width 32, lr 1e-3 with cosine decay, iCT with s1 = 320
loader = cm.mnist(args.data_root, batch_size=preset.batch_size)  # (B, 1, 28, 28) in [-1, 1], digit labels
method = preset.method("ict")  # ImprovedConsistencyTraining(s1=320)
model = method.wrap(preset.unet(1, num_classes=10))  # the UNet in the consistency parameterisation, f(x, eps) = x
options = cm.TrainerOptions(**preset.trainer_options(), total_steps=None)  # fitted to the time budget below
if args.compile is not None:
    options.compile = args.compile
trainer = cm.ConsistencyTrainer(model, loader, method=method, options=options, out_dir=args.out)
trainer.train(minutes=args.minutes)  # the step count (and so the curriculum) is fitted to the budget

images = trainer.sample(64, steps=1)  # one network evaluation per image; the digits 0..9 in turn
cm.save_grid(images, f"{args.out}/quickstart_1step.png")
print(f"wrote {args.out}/quickstart_1step.png after {trainer.step_count} steps")
