"""Write colored MNIST as class-per-folder trees of PNGs (train/ and test/), generated deterministically from MNIST.

    python -m consistency.cli.colored_mnist --data-root data --out data/colored_mnist
    python main_imagenet9.py --dataset folder --data-root data/colored_mnist/train --image-size 32 --no-flip --minutes 20

Each digit is drawn in one colour on a background of another (consistency.data.colored_mnist): an RGB data set with
ten classes that trains on a CPU, and the data set colorization is shown on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..data import colored_mnist, load_mnist_arrays, write_image_tree
from .args import Parser, check_writable, nonneg_int, positive_int


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m consistency.cli.colored_mnist", description=__doc__)
    parser.add_argument("--data-root", default="data", help="the MNIST folder (the four idx files; default data)")
    parser.add_argument("--out", required=True, help="where train/ and test/ are written")
    parser.add_argument("--n-train", type=positive_int, default=None, help="the first N training digits (default all)")
    parser.add_argument("--n-test", type=positive_int, default=None, help="the first N test digits (default all)")
    parser.add_argument("--size", type=positive_int, default=32, help="image side, 28 to 512 (default 32)")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="default 0")
    args = parser.parse_args(argv)
    try:
        if not 28 <= args.size <= 512:
            raise ValueError(f"--size must lie in 28..512 (the digits are 28x28, padded with the background), got "
                             f"{args.size}")
        out = Path(args.out)
        if any((out / split).exists() for split in ("train", "test")):
            raise ValueError(f"{out} already holds train/ or test/: choose another --out")
        check_writable(str(out / "train" / "x.png"), "--out")
        for split, n, offset in (("train", args.n_train, 0), ("test", args.n_test, 10_000_000)):
            images, labels = load_mnist_arrays(args.data_root, split, download=False)
            images, labels = images[:n], labels[:n]
            write_image_tree(colored_mnist(images, seed=args.seed, size=args.size, offset=offset), labels,
                             [str(d) for d in range(10)], out / split)
            print(f"wrote {len(images)} {split} images to {out / split}")
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
