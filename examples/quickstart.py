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
args = parser.parse_args()

loader = cm.mnist(args.data_root, batch_size=64)  # images in [-1, 1], (B, 1, 28, 28)
model = cm.ConsistencyModel(cm.UNet(1, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1))
trainer = cm.ConsistencyTrainer(model, loader, loss=cm.ImprovedConsistencyTraining(), lr=4e-4, ema_decay=0.999,
                                total_steps=None, out_dir=args.out)
trainer.train(minutes=args.minutes)  # the step count (and so the curriculum) is fitted to the budget

images = trainer.sample(64, steps=1)  # one network evaluation per image
cm.save_grid(images, f"{args.out}/quickstart_1step.png")
print(f"wrote {args.out}/quickstart_1step.png after {trainer.step_count} steps")
