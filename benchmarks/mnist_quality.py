"""The MNIST quality yardstick: FID in a digit classifier's feature space, confidence and class coverage.

    python benchmarks/mnist_quality.py --checkpoint runs/mnist/checkpoint.pt --steps 1 2 --data-root DIR
    python benchmarks/mnist_quality.py --samples samples.npz --data-root DIR     # any uint8 (N, 1, 28, 28) `images`

The same yardstick as `python -m consistency.evaluate --dataset mnist` (consistency/yardstick.py), with the
classifier cached in benchmarks/.cache: generated samples (default 10,000) against the 10,000 MNIST test images.
--references adds the floor (10,000 real train images) and uniform noise. Results are printed and appended as JSON
lines to --json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency.cli.evaluate import main as evaluate  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--data-root" not in argv:
        argv += ["--data-root", "data"]
    return evaluate(["--dataset", "mnist", "--cache-dir", str(CACHE), *argv])


if __name__ == "__main__":
    main()
