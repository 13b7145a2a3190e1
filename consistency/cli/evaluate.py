"""Score a checkpoint (or an .npz of samples) with the yardstick of its data set; print one table, append JSON lines.

    python -m consistency.evaluate --checkpoint runs/mnist/checkpoint.pt --data-root data --n 10000 --steps 1 2
    python -m consistency.evaluate --checkpoint runs/rgb/checkpoint.pt --dataset folder --data-root colored_mnist/train
    python -m consistency.evaluate --samples samples.npz --data-root data --dataset mnist
    python -m consistency.evaluate --checkpoint ... --inception [--inception-weights FILE] [--inception-n 50000]

The yardstick (consistency/yardstick.py): a classifier trained once on the data set's training split and cached
(in DATA_ROOT/.consistency-yardstick, or the user's cache when that folder is read-only, or --cache-dir), the Fréchet distance in its feature space between samples
and held-out real images, mean confidence, class entropy (1 = all classes equally often) and, for class-conditional
models, the fraction of samples read as the class asked for. The data set, its folder and the image size default to
what the checkpoint was trained on. --inception adds the field's Inception FID (torch-fidelity's Inception-v3, the
StyleGAN / EDM fid50k convention against the training images; not comparable with the yardstick's numbers).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..images import to_uint8
from ..model import check_guidance
from ..pretrained import read_model
from ..sampling import SAMPLERS, default_sigmas, generate
from ..utils import cache_folder
from ..yardstick import Yardstick, folder_splits, inception_extractor, inception_fid, mnist_splits
from .args import Parser, check_writable, nonneg_int, positive_int


def parse_args(argv: list[str] | None = None):
    parser = Parser(prog="python -m consistency.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", help="a trainer checkpoint (its sampling EMA unless --weights model), a model "
                        "folder or a hub id owner/name")
    parser.add_argument("--samples", help="an .npz with uint8 `images` (N, C, H, W) (and `labels`) instead")
    parser.add_argument("--data-root", help="the data set's folder (default: the one the checkpoint was trained on)")
    parser.add_argument("--dataset", choices=["mnist", "folder", "imagenet9"],
                        help="how to read --data-root (default: the checkpoint's, else mnist)")
    parser.add_argument("--image-size", type=positive_int, help="folder data sets: side of the images (default: the "
                        "checkpoint's)")
    parser.add_argument("--n", type=positive_int, default=10_000, help="samples per score (default 10000)")
    parser.add_argument("--steps", type=positive_int, nargs="+", default=None,
                        help="sampling steps to score (default 1 2; an EDM teacher: 18 Heun levels = 35 NFE)")
    parser.add_argument("--guidance", type=float, nargs="+", default=None, metavar="W",
                        help="classifier-free guidance scales to score, a row each (1 = unguided; needs a model "
                             "trained with --label-dropout, or a guided teacher's student)")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="default 0")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="default ema")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="images per forward pass (default 500)")
    parser.add_argument("--cache-dir", help="where the yardstick classifier is cached (default DATA_ROOT/"
                        ".consistency-yardstick)")
    parser.add_argument("--holdout", type=float, default=0.1, help="folder data sets: the held-out fraction that is "
                        "the reference (default 0.1)")
    parser.add_argument("--references", action="store_true", help="also score real training images and noise")
    parser.add_argument("--json", help="append the rows as JSON lines to this file")
    parser.add_argument("--tag", default="", help="a label stored with the rows")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    parser.add_argument("--inception", action="store_true", help='also the Inception FID (pip install '
                        '"consistency-models[fid]"; the weights download, or --inception-weights)')
    parser.add_argument("--inception-n", type=positive_int, default=50_000, help="samples for it (default 50000)")
    parser.add_argument("--inception-weights", help="the Inception file pt_inception-2015-12-05-6726825d.pth")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.samples:
        parser.error("give --checkpoint CKPT or --samples FILE.npz")
    return args


def evaluate(args) -> list[dict]:
    if args.json:
        check_writable(args.json, "--json")
    if args.samples and not Path(args.samples).is_file():
        raise ValueError(f"--samples {args.samples}: no such file")
    ckpt = read_model(args.checkpoint) if args.checkpoint else None
    if ckpt is not None:  # the model and its guidance scales, before the data and the yardstick's minutes
        model = load_model(ckpt, args.weights, args.device)
        for w in args.guidance or []:
            check_guidance(model, w, ckpt.method)
    data = ckpt.config.get("data", {}) if ckpt else {}
    dataset = args.dataset or data.get("dataset", "mnist")
    root = args.data_root or data.get("data_root")
    if not root:
        raise ValueError("pass --data-root: the data set to score against (the checkpoint does not record one)")
    if dataset == "mnist":
        splits = mnist_splits(root)
    else:
        size = args.image_size or (ckpt.image_shape[-1] if ckpt else None) or data.get("image_size")
        if not size:
            raise ValueError("pass --image-size for a folder data set")
        splits = folder_splits(root, size, dataset=dataset, holdout=args.holdout)
    cache = cache_folder(root, args.cache_dir, name=".consistency-yardstick")  # a read-only folder: the user's cache
    yardstick = Yardstick.load_or_train(splits, cache)
    rows = [{"what": r.pop("what"), **r} for r in (yardstick.references(args.n, args.seed) if args.references else [])]
    if args.samples:
        npz = np.load(args.samples)
        labels = torch.from_numpy(npz["labels"]).long() if "labels" in npz else None
        rows.append({"what": f"samples {args.samples}", **yardstick.score(torch.from_numpy(npz["images"]), labels)})
    if ckpt is not None:
        trained_on = data.get("classes")
        if ckpt.num_classes and trained_on and list(trained_on) != list(splits.classes):
            raise ValueError(f"the checkpoint's classes {trained_on} are not the data set's {splits.classes}: score "
                             "it against the data it was trained on")
        labels = torch.arange(args.n) % ckpt.num_classes if ckpt.num_classes else None
        sampler = SAMPLERS[ckpt.sampler]
        extractor = inception_extractor(args.inception_weights) if args.inception else None
        for k, w in ((k, w) for k in args.steps or sampler.default_steps for w in args.guidance or [None]):
            t0 = time.time()
            images = to_uint8(generate(model, args.n, ckpt.image_shape, steps=k, sampler=ckpt.sampler, seed=args.seed,
                                       class_labels=labels, batch_size=args.batch_size, guidance=w))
            row = {"what": f"{args.tag or args.checkpoint} {sampler.nfe(k)} NFE" + (f" w={w:g}" if w is not None
                                                                                    else ""), "step": ckpt.step,
                   "nfe": sampler.nfe(k), "guidance": w, "method": ckpt.method.get("name"), "weights": args.weights,
                   "sigmas": default_sigmas(k, model, ckpt.sampler), **yardstick.score(images, labels),
                   "sample_seconds": time.time() - t0, "yardstick_accuracy": yardstick.accuracy}
            if extractor is not None:
                n = args.inception_n
                more = to_uint8(generate(model, n, ckpt.image_shape, steps=k, sampler=ckpt.sampler, seed=args.seed + 1,
                                         class_labels=torch.arange(n) % ckpt.num_classes if ckpt.num_classes else None,
                                         batch_size=args.batch_size))
                row["inception_fid"] = inception_fid(
                    more, splits.train_images, extractor,
                    cache=cache / f"inception-{splits.name}-{splits.fingerprint[:16]}.pt")
                row["inception_n"] = n
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    try:
        rows = evaluate(args)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(f"{'what':56s} {'FID':>9s} {'prec':>6s} {'recall':>6s} {'conf':>6s} {'entropy':>7s} {'classes':>7s} "
          f"{'label ok':>8s} {'Inception':>9s}")
    for r in rows:
        agree = f"{r['label_agreement']:8.3f}" if "label_agreement" in r else f"{'-':>8s}"
        inc = f"{r['inception_fid']:9.2f}" if "inception_fid" in r else f"{'-':>9s}"
        print(f"{r['what'][:56]:56s} {r['fid']:9.3f} {r['precision']:6.3f} {r['recall']:6.3f} {r['confidence']:6.3f} "
              f"{r['class_entropy']:7.3f} {r['classes_seen']:7d} {agree} {inc}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "a") as f:
            f.writelines(json.dumps({**r, "tag": args.tag}) + "\n" for r in rows)
    return rows


if __name__ == "__main__":
    main()
