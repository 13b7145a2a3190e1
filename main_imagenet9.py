"""Train a consistency model on ImageNet-9 (or on your own folder of images), from one GPU to many.

    python main_imagenet9.py --data-root /data/imagenet/train --out runs/in9
    torchrun --nproc_per_node=8 main_imagenet9.py --data-root /data/imagenet/train --batch-size 512
    python main_imagenet9.py --dataset folder --data-root my_images/ --image-size 32   # class sub-folders optional

ImageNet-9 = the 9 super-classes dog, cat, frog, turtle, bird, monkey, fish, crab, insect (42 ImageNet-1k classes, see
consistency/data.py), taken from an ImageNet-1k folder with one sub-folder per WordNet id. Images are resized,
center-cropped to --image-size, randomly flipped (--no-flip for data a mirror changes: digits, text) and scaled to
[-1, 1]. The model is class-conditional when the data has classes (--no-class-conditional ignores them).
--batch-size is the global batch.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from consistency.cli.args import Parser, nonneg_float, nonneg_int, positive_int
from consistency.cli.train import add_training_args, main_guard, resolve, train
from consistency.data import IMAGENET9_CLASSES, image_folder_dataset, imagenet9_dataset, in_memory
from consistency.presets import IMAGENET9_CPU, IMAGENET9_GPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog="python main_imagenet9.py", description=__doc__)
    parser.add_argument("--dataset", choices=["imagenet9", "folder"],
                        help="imagenet9: the 9 super-classes from an ImageNet-1k folder; folder: any folder of images "
                             "(default imagenet9; a resumed run: its own)")
    parser.add_argument("--data-root", help="ImageNet-1k train (or val) folder, or your image folder (required, but "
                        "for a resumed run: its own)")
    parser.add_argument("--image-size", type=positive_int, help="side of the square training images (default 64; a "
                        "resumed run: its own)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="random horizontal flips of the training images (default on; a resumed run keeps its "
                             "own). Turn them off (--no-flip) where a mirror image is another thing: digits, letters")
    parser.add_argument("--data-memory-gb", type=nonneg_float, help="decode image folders up to this many GiB once "
                        "(cached beside the data), keep them on the training device (default 4; 0 = read the files)")
    workers = min(4, max((os.cpu_count() or 1) - 1, 0))
    parser.add_argument("--num-workers", type=nonneg_int, default=workers,
                        help=f"data-loading processes per rank (default {workers} on this machine)")
    add_training_args(parser, cpu=IMAGENET9_CPU, gpu=IMAGENET9_GPU, out="runs/imagenet9")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None):
    args = parse_args(argv)
    config = resolve(args, cpu=IMAGENET9_CPU, gpu=IMAGENET9_GPU, out="runs/imagenet9")  # a resumed run fills args
    if not args.data_root:
        raise ValueError("--data-root is required: the ImageNet-1k train folder, or your image folder")
    args.data_root, args.dataset = str(Path(args.data_root).expanduser().absolute()), args.dataset or "imagenet9"
    args.image_size = args.image_size or 64
    config = replace(config, flip=config.flip is not False)  # flips are on unless --no-flip (or the resumed run's)
    make = imagenet9_dataset if args.dataset == "imagenet9" else image_folder_dataset
    return train(config, lambda: in_memory(make(args.data_root, args.image_size, flip=config.flip),
                                           max_bytes=config.data_memory_gb * 2**30),
                 image_shape=(3, args.image_size, args.image_size),
                 classes=IMAGENET9_CLASSES if args.dataset == "imagenet9" else None,  # None: the folder's own
                 data={"dataset": args.dataset, "data_root": args.data_root, "image_size": args.image_size})


if __name__ == "__main__":
    main_guard(run)
