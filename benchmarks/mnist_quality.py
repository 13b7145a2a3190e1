"""The MNIST quality yardstick: FID in a digit classifier's feature space, confidence and class coverage.

    python benchmarks/mnist_quality.py --checkpoint runs/mnist/checkpoint.pt --steps 1 2 --data-root DIR
    python benchmarks/mnist_quality.py --samples samples.npz          # any uint8 (N, 1, 28, 28) array `images`

Generated samples (default 10,000) are compared with the 10,000 MNIST test images. The classifier is trained once on
the train split and cached in benchmarks/.cache/. The floor (10,000 real train images vs test) and a noise reference
(uniform noise images) give the numbers a scale. Results are printed and appended as JSON lines to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency.checkpoint import load_model, read_checkpoint  # noqa: E402
from consistency.data import load_mnist_arrays  # noqa: E402
from consistency.images import from_uint8, to_uint8  # noqa: E402
from consistency.metrics import (  # noqa: E402
    MNISTClassifier,
    class_statistics,
    classifier_outputs,
    frechet_distance,
    train_classifier,
)
from consistency.sampling import SAMPLERS, default_sigmas, generate  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"


def get_classifier(data_root: str) -> MNISTClassifier:
    """The cached classifier, trained on first use (about a minute on two CPU cores)."""
    path = CACHE / "mnist_classifier.pt"
    model = MNISTClassifier()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    images, labels = load_mnist_arrays(data_root, "train")
    t0 = time.time()
    model = train_classifier(from_uint8(images).unsqueeze(1), labels)
    test_x, test_y = load_mnist_arrays(data_root, "test")
    _, probs = classifier_outputs(model, from_uint8(test_x).unsqueeze(1))
    acc = float((probs.argmax(1) == test_y).float().mean())
    print(f"trained the yardstick classifier in {time.time() - t0:.0f}s: test accuracy {acc:.4f}")
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def evaluate(classifier: MNISTClassifier, images_u8: torch.Tensor, reference_feats: torch.Tensor,
             labels: torch.Tensor | None = None) -> dict[str, float]:
    """FID against the reference features plus class statistics, for uint8 images (N, 1, 28, 28).

    With `labels` (the classes a class-conditional model was asked for), also the fraction of samples that the
    classifier assigns to the requested class: confidence alone would not show a model that ignores its label.
    """
    if images_u8.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected MNIST-shaped images (N, 1, 28, 28), got {tuple(images_u8.shape)}")
    feats, probs = classifier_outputs(classifier, from_uint8(images_u8))
    row = {"fid": frechet_distance(feats, reference_feats), **class_statistics(probs), "n": len(images_u8)}
    if labels is not None:
        row["label_agreement"] = float((probs.argmax(1) == labels).float().mean())
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trainer checkpoint (its sampling EMA is used)")
    parser.add_argument("--samples", help="an .npz with uint8 `images` (N, 1, 28, 28) instead of a checkpoint")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2],
                        help="sampling steps to evaluate (for an EDM teacher: Heun levels, 18 = 35 evaluations)")
    parser.add_argument("--n", type=int, default=10_000, help="samples to generate")
    parser.add_argument("--data-root", default="data", help="MNIST folder (see consistency.data.mnist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", choices=("ema", "model"), default="ema",
                        help="the checkpoint's sampling EMA (default) or its online network")
    parser.add_argument("--references", action="store_true", help="also report the floor (train vs test) and noise")
    parser.add_argument("--json", default=None, help="append results as JSON lines to this file")
    parser.add_argument("--tag", default="", help="a label stored with the results")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    classifier = get_classifier(args.data_root)
    test_x, _ = load_mnist_arrays(args.data_root, "test")
    ref_feats, _ = classifier_outputs(classifier, from_uint8(test_x).unsqueeze(1))
    rows = []
    if args.references:
        train_x, _ = load_mnist_arrays(args.data_root, "train")
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(args.seed))[: args.n]
        rows.append({"what": "floor: real train images", **evaluate(classifier, train_x[pick].unsqueeze(1), ref_feats)})
        noise = torch.randint(0, 256, (args.n, 1, 28, 28), generator=torch.Generator().manual_seed(args.seed), dtype=torch.uint8)
        rows.append({"what": "noise: uniform random pixels", **evaluate(classifier, noise, ref_feats)})
    if args.samples:
        data = np.load(args.samples)
        labels = torch.from_numpy(data["labels"]).long() if "labels" in data else None
        rows.append({"what": f"samples {args.samples}", **evaluate(classifier, torch.from_numpy(data["images"]), ref_feats, labels)})
    if args.checkpoint:
        ckpt = read_checkpoint(args.checkpoint)
        model = load_model(ckpt, args.weights, "auto")
        labels = torch.arange(args.n) % ckpt.num_classes if ckpt.num_classes else None
        for k in args.steps:  # sampled the way the checkpoint's method samples (an EDM teacher: Heun, 2k - 1 NFE)
            t0 = time.time()
            images = to_uint8(generate(model, args.n, ckpt.image_shape, steps=k, sampler=ckpt.sampler, seed=args.seed,
                                       class_labels=labels))
            nfe = SAMPLERS[ckpt.sampler].nfe(k)
            rows.append({"what": f"{args.tag or args.checkpoint} {nfe} NFE", "step": ckpt.step, "nfe": nfe,
                         "weights": args.weights, "method": ckpt.method.get("name"),
                         "sigmas": default_sigmas(k, model, ckpt.sampler),
                         **evaluate(classifier, images, ref_feats, labels), "sample_seconds": time.time() - t0})
    print(f"{'what':60s} {'FID':>9s} {'conf':>6s} {'entropy':>7s} {'classes':>7s} {'label ok':>8s}")
    for r in rows:
        agree = f"{r['label_agreement']:8.3f}" if "label_agreement" in r else f"{'-':>8s}"
        print(f"{r['what'][:60]:60s} {r['fid']:9.3f} {r['confidence']:6.3f} {r['class_entropy']:7.3f} {r['classes_seen']:7d} {agree}")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
