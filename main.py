"""Train a consistency model on MNIST (iCT by default) and write samples, checkpoints, a log and a loss curve.

    python main.py                                   # GPU preset, or a CPU preset that gives digits in ~20 minutes
    python main.py --data-root /path/to/mnist --minutes 20 --out runs/mnist
    python main.py --method ct --steps 20000         # the original CM consistency training
    python main.py --resume --minutes 10             # continue (or extend) runs/mnist/checkpoint.pt
    python main.py --method edm --out runs/teacher   # an EDM diffusion teacher (35-NFE Heun samples)
    python main.py --method cd --teacher runs/teacher/checkpoint.pt --out runs/cd   # consistency distillation
    python main.py --no-class-conditional            # an unconditional model (the default is conditioned on the digit)
    torchrun --nproc_per_node=4 main.py --batch-size 512       # DDP; --batch-size is the global batch
"""

from __future__ import annotations

import argparse
from pathlib import Path

from consistency.cli.args import Parser
from consistency.cli.train import add_training_args, main_guard, resolve, train
from consistency.data import mnist_dataset
from consistency.presets import MNIST_CPU, MNIST_GPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog="python main.py", description=__doc__)
    parser.add_argument("--data-root", help="folder with the four MNIST idx files (.gz or not), or where torchvision "
                        "may download them (default data; a resumed run: its own)")
    add_training_args(parser, cpu=MNIST_CPU, gpu=MNIST_GPU, out="runs/mnist")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None):
    args = parse_args(argv)
    config = resolve(args, cpu=MNIST_CPU, gpu=MNIST_GPU, out="runs/mnist")  # a resumed run fills args.data_root
    root = str(Path(args.data_root or "data").expanduser().absolute())
    return train(config, lambda: mnist_dataset(root), image_shape=(1, 28, 28), classes=[str(d) for d in range(10)],
                 data={"dataset": "mnist", "data_root": root})


if __name__ == "__main__":
    main_guard(run)
