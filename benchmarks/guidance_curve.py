"""Classifier-free guidance against its scale w: FID, precision, recall and label agreement (the yardstick) of
models trained with label dropout, sampled at w = 0, 1, 1.5, 2, 3, 4, then one figure.

    python benchmarks/guidance_curve.py --data-root DIR --n 2000 \
        --run "iCT (sampling-time guidance)=runs/ict/checkpoint.pt" --run "EDM teacher=runs/cd/teacher/checkpoint.pt" \
        --run "CD of the guided teacher=runs/cd/checkpoint.pt" --json benchmarks/results/guidance_mnist.jsonl \
        --figure benchmarks/results/guidance_mnist.png
    python benchmarks/guidance_curve.py --plot-only --json benchmarks/results/guidance_mnist.jsonl --figure ...

Each run is scored with its sampler's default steps (a consistency model 1 and 2, EDM's Heun 18 levels = 35
evaluations), n samples per point, the classes in turn. A run trained with its guidance built in (MeanFlow's omega
and kappa) is scored as it samples (--fixed "NAME=CKPT@w": one point at its effective scale w).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency.cli.evaluate import main as evaluate  # noqa: E402
from consistency.plot import plot_panels  # noqa: E402

METRICS = [("fid", "FID (lower is better)"), ("precision", "precision"), ("recall", "recall"),
           ("label_agreement", "label agreement")]


def curves(rows: list[dict]) -> list[tuple[str, dict]]:
    """Panels {series: (w, metric)}; a series is a run at a number of network evaluations."""
    panels = []
    for key, title in METRICS:
        series: dict[str, tuple[list, list]] = {}
        for r in rows:
            name = f"{r['run']}, {r['nfe']} NFE"
            xs, ys = series.setdefault(name, ([], []))
            xs.append(r["w"])
            ys.append(r.get(key, float("nan")))
        panels.append((title, {k: tuple(zip(*sorted(zip(*v)))) for k, v in series.items()}))
    return panels


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help="the data set the models were trained on (MNIST's idx files, or a folder with --dataset folder)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=CKPT", help="a model to guide")
    parser.add_argument("--fixed", action="append", default=[], metavar="NAME=CKPT@W",
                        help="a model whose guidance scale is trained in: one point at w")
    parser.add_argument("--guidance", type=float, nargs="+", default=[0, 1, 1.5, 2, 3, 4])
    parser.add_argument("--n", type=int, default=2000, help="samples per point (default 2000)")
    parser.add_argument("--cache-dir", default=None, help="the yardstick's cache")
    parser.add_argument("--dataset", default=None, help="for evaluate (default: the checkpoint's)")
    parser.add_argument("--holdout", type=float, default=None,
                        help="for evaluate on a folder: the held-out share that is the reference (colored MNIST's "
                             "test tree: 0.5)")
    parser.add_argument("--json", required=True, help="rows are appended here (and read for the figure)")
    parser.add_argument("--figure", required=True)
    parser.add_argument("--title", default="MNIST: classifier-free guidance, 20 CPU-minutes per recipe")
    parser.add_argument("--plot-only", action="store_true", help="draw the figure from --json alone")
    args = parser.parse_args(argv)
    # split at the last "=": a name may hold one ("guided at w = 2"), a checkpoint path seldom does
    todo = [(name, ckpt, None) for name, ckpt in (r.rsplit("=", 1) for r in args.run)]
    todo += [(name, spec.rsplit("@", 1)[0], float(spec.rsplit("@", 1)[1]))
             for name, spec in (r.rsplit("=", 1) for r in args.fixed)]
    for name, ckpt, fixed in [] if args.plot_only else todo:
        extra = ["--cache-dir", args.cache_dir] if args.cache_dir else []
        extra += ["--dataset", args.dataset] if args.dataset else []
        extra += ["--data-root", args.data_root] if args.data_root else []
        extra += ["--holdout", str(args.holdout)] if args.holdout is not None else []
        out = Path(args.json).with_suffix(".tmp.jsonl")
        out.unlink(missing_ok=True)
        evaluate(["--checkpoint", ckpt, "--n", str(args.n), "--json", str(out), "--tag", name, *extra,
                  *(["--guidance", *map(str, args.guidance)] if fixed is None else [])])
        with open(args.json, "a") as f:
            for row in map(json.loads, out.read_text().splitlines()):
                row.update(run=name, w=fixed if fixed is not None else row["guidance"], checkpoint=ckpt)
                f.write(json.dumps(row) + "\n")
        out.unlink()
    rows = [json.loads(line) for line in Path(args.json).read_text().splitlines() if line.strip()]
    plot_panels(curves(rows), args.figure, title=args.title, xlabel="guidance scale w")
    print(f"wrote {args.figure}")
    return rows


if __name__ == "__main__":
    main()
