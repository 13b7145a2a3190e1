"""Train a class-conditional consistency model on ImageNet-9 (or on your own folder of images), from one GPU to many.

    python main_imagenet9.py --data-root /data/imagenet/train --out runs/in9
    torchrun --nproc_per_node=8 main_imagenet9.py --data-root /data/imagenet/train --batch-size 512 --precision bf16
    python main_imagenet9.py --dataset folder --data-root my_images/ --image-size 32   # class sub-folders optional

ImageNet-9 = the 9 super-classes dog, cat, frog, turtle, bird, monkey, fish, crab, insect (42 ImageNet-1k classes, see
consistency/data.py), taken from an ImageNet-1k folder with one sub-folder per WordNet id. Images are resized,
center-cropped to --image-size, randomly flipped and scaled to [-1, 1]. --batch-size is the global batch.
"""

from __future__ import annotations

import argparse
import sys

from consistency.cli import add_training_args, per_rank_batch, run
from consistency.data import IMAGENET9_CLASSES, image_folder_dataset, imagenet9_dataset, make_loader

# GPU: a 64 px UNet (64-32-16-8, attention at 8 px), bf16; CPU: a small one, only to try the pipeline.
GPU = dict(width=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, dropout=0.1, batch_size=256, lr=2e-4,
           lr_schedule="constant", s1=None, ema_decay=0.9999, precision="bf16", default_steps=200_000,
           sample_every=5000, checkpoint_every=5000)
CPU = dict(width=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, dropout=0.0, batch_size=32, lr=4e-4,
           lr_schedule="cosine", s1=320, ema_decay=0.999, precision="fp32", default_steps=2000,
           sample_every=500, checkpoint_every=500)

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="imagenet9", choices=["imagenet9", "folder"],
                        help="imagenet9: the 9 super-classes from an ImageNet-1k folder; folder: any folder of images")
    parser.add_argument("--data-root", required=True, help="ImageNet-1k train (or val) folder, or your image folder")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square training images")
    parser.add_argument("--unconditional", action="store_true", help="ignore the labels")
    parser.add_argument("--num-workers", type=int, default=4, help="data-loading processes per rank")
    add_training_args(parser)
    parser.set_defaults(out="runs/imagenet9")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.default_steps = None  # filled from the preset
    try:
        make = imagenet9_dataset if args.dataset == "imagenet9" else image_folder_dataset
        dataset = make(args.data_root, args.image_size)
        classes = IMAGENET9_CLASSES if args.dataset == "imagenet9" else list(getattr(dataset, "classes", []))
        num_classes = len(classes) if len(classes) > 1 and not args.unconditional else None

        def loader(a: argparse.Namespace):
            return make_loader(dataset, per_rank_batch(a.batch_size, a.world_size), seed=a.seed,
                               num_workers=a.num_workers, rank=a.rank, world_size=a.world_size)

        run(args, loader, image_shape=(3, args.image_size, args.image_size), num_classes=num_classes, gpu=GPU, cpu=CPU)
    except (FileNotFoundError, ValueError, FloatingPointError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
