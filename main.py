"""Train a consistency model on MNIST (iCT by default) and write samples, checkpoints and a loss curve.

    python main.py                                   # GPU preset, or a CPU preset that gives digits in ~20 minutes
    python main.py --data-root /path/to/mnist --minutes 20 --out runs/mnist
    python main.py --recipe ct --steps 20000         # the original CM consistency training
    python main.py --resume --minutes 10             # continue runs/mnist/checkpoint.pt
    python main.py --mode teacher --out runs/teacher # an EDM diffusion teacher (35-NFE Heun samples)
    python main.py --mode distill --teacher runs/teacher/checkpoint.pt --out runs/cd   # consistency distillation
    python main.py --no-class-conditional            # an unconditional model (the default is conditioned on the digit)
    torchrun --nproc_per_node=4 main.py --batch-size 512       # DDP; --batch-size is the global batch
"""

from __future__ import annotations

import argparse
import sys

from consistency.cli import add_training_args, cpu_has_fast_bf16, per_rank_batch, run
from consistency.data import mnist

# A GPU preset: the papers' constant learning rate and iCT curriculum, a full-width UNet, ~20k steps.
GPU = dict(width=64, channel_mult=(1, 2, 2), num_res_blocks=2, dropout=0.1, batch_size=128, lr=2e-4, lr_schedule="constant",
           s1=None, num_scales=18, ema_decay=0.9999, precision="fp32", default_steps=20_000, sample_every=2000,
           checkpoint_every=2000)
# A CPU preset, tuned so that a 20-minute run on two cores gives recognisable one-step digits (see README): a small
# UNet, a high learning rate with cosine decay, an iCT curriculum that stops at 321 levels instead of 1281, and
# for distillation N = 10 teacher steps instead of CM's 18 (fewer links to propagate through in ~1,000 steps).
# bf16 autocast doubles the speed on CPUs with native bf16 (AVX512-BF16, AMX); elsewhere it would slow things down.
CPU = dict(width=32, channel_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, batch_size=64, lr=1e-3, lr_schedule="cosine",
           s1=320, num_scales=10, ema_decay=0.999, precision="bf16" if cpu_has_fast_bf16() else "fp32", default_steps=4000,
           sample_every=500, checkpoint_every=500)

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data",
                        help="folder with the four MNIST idx files (.gz or not), or where torchvision may download them")
    parser.add_argument("--class-conditional", action=argparse.BooleanOptionalAction, default=True,
                        help="condition the UNet on the digit label (the default: samples cycle through the digits, and "
                             "a 20-minute CPU run gives far cleaner digits; see README); --no-class-conditional trains "
                             "the unconditional model")
    add_training_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.default_steps = None  # filled from the preset

    def loader(a: argparse.Namespace):
        return mnist(a.data_root, batch_size=per_rank_batch(a.batch_size, a.world_size), seed=a.seed,
                     rank=a.rank, world_size=a.world_size)

    try:
        run(args, loader, image_shape=(1, 28, 28), num_classes=10 if args.class_conditional else None, gpu=GPU, cpu=CPU)
    except (FileNotFoundError, ValueError, FloatingPointError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
