"""Does bf16 autocast train like fp32? Same seed, same data, same steps; the loss curves side by side.

    python benchmarks/bf16_vs_fp32.py --data-root DIR --steps 300

Trains main.py's MNIST CPU-preset model (class-conditional, iCT with s1 = 320, lr 1e-3 with cosine decay) twice
(fp32, then bf16 autocast: the loss and the EMAs stay fp32) and prints the mean loss over consecutive windows of steps for both, with their ratio and the speed of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency import ConsistencyTrainer, mnist  # noqa: E402
from consistency.presets import MNIST_CPU  # noqa: E402


def run(precision: str, args) -> tuple[list[float], float]:
    torch.manual_seed(0)
    method = MNIST_CPU.method("ict")
    trainer = ConsistencyTrainer(method.wrap(MNIST_CPU.unet(1, num_classes=10)),
                                 mnist(args.data_root, batch_size=MNIST_CPU.batch_size), method=method,
                                 **{**MNIST_CPU.trainer_options(), "precision": precision},
                                 total_steps=args.total_steps, device=args.device, progress=False)
    t0 = time.time()
    trainer.train(args.steps)
    return trainer.history["loss"], args.steps * MNIST_CPU.batch_size / (time.time() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--total-steps", type=int, default=4000, help="curriculum length (as in a 20-minute CPU run)")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    curves, speed = {}, {}
    for precision in ("fp32", "bf16"):
        curves[precision], speed[precision] = run(precision, args)
    print(f"{'steps':>11s} {'fp32 loss':>10s} {'bf16 loss':>10s} {'bf16/fp32':>9s}")
    rows = []
    for start in range(0, args.steps, args.window):
        a = sum(curves["fp32"][start : start + args.window]) / args.window
        b = sum(curves["bf16"][start : start + args.window]) / args.window
        rows.append({"steps": [start + 1, start + args.window], "fp32": a, "bf16": b})
        print(f"{start + 1:5d}-{start + args.window:5d} {a:10.4f} {b:10.4f} {b / a:9.3f}")
    print(f"images/s: fp32 {speed['fp32']:.0f}, bf16 {speed['bf16']:.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "images_per_s": speed}, indent=2))


if __name__ == "__main__":
    main()
