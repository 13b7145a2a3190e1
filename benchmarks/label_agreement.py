"""Label agreement in detail, on a labelled image folder: how mirroring reads, and each class of a model's samples.

    python benchmarks/label_agreement.py --data-root data/colored_mnist/test --holdout 0.5 \
        --checkpoint runs/rgb/checkpoint.pt --n 2000 --steps 1 2

First the yardstick's held-out images as they are, all mirrored, and every other one mirrored: the last is the best a
model of a flipped training set can score, where a mirror changes the class (digits). Then, for each checkpoint
(class-conditional), the fraction of its samples read as the class asked for, per class. The yardstick is the one
`python -m consistency.evaluate` uses (cached in DATA_ROOT/.consistency-yardstick).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency.checkpoint import load_model, read_checkpoint  # noqa: E402
from consistency.images import to_uint8  # noqa: E402
from consistency.sampling import generate  # noqa: E402
from consistency.yardstick import Yardstick, classifier_outputs, folder_splits  # noqa: E402


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="a folder of class sub-folders (e.g. the colored-MNIST test/)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--holdout", type=float, default=0.1, help="as for consistency.evaluate (default 0.1)")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="class-conditional checkpoints to break down")
    parser.add_argument("--n", type=int, default=2000, help="samples per checkpoint and step count")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="append the rows to this file")
    args = parser.parse_args(argv)
    splits = folder_splits(args.data_root, args.image_size, holdout=args.holdout)
    yardstick = Yardstick.load_or_train(splits, Path(args.data_root) / ".consistency-yardstick")
    real, labels = splits.test_images, splits.test_labels
    every_other = real.clone()
    every_other[::2] = every_other[::2].flip(-1)
    rows = [{"what": f"held-out images, {name}", "n": len(real),
             "label_agreement": yardstick.score(images, labels)["label_agreement"]}
            for name, images in (("as they are", real), ("all mirrored", real.flip(-1)),
                                 ("every other mirrored", every_other))]
    for path in args.checkpoint:
        ckpt = read_checkpoint(path)
        if not ckpt.num_classes:
            raise SystemExit(f"{path} is not class-conditional: there is no class asked for to agree with")
        model = load_model(ckpt, "ema", "cpu")
        asked = torch.arange(args.n) % ckpt.num_classes
        for k in args.steps:
            images = to_uint8(generate(model, args.n, ckpt.image_shape, steps=k, sampler=ckpt.sampler, seed=args.seed,
                                       class_labels=asked))
            right = (classifier_outputs(yardstick.classifier, images)[1].argmax(1) == asked).float()
            rows.append({"what": f"{path}, {k} step(s)", "n": args.n, "label_agreement": float(right.mean()),
                         "per_class": [float(right[asked == c].mean()) for c in range(ckpt.num_classes)]})
    for row in rows:
        per_class = " ".join(f"{v:.2f}" for v in row.get("per_class", []))
        print(f"{row['what']:<70} {row['label_agreement']:.3f}  {per_class}")
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


if __name__ == "__main__":
    main()
