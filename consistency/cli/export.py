"""A trainer checkpoint as a model folder, the ecosystem's format: model.safetensors, config.json, README.md.

    python -m consistency.cli.export --checkpoint runs/mnist/checkpoint.pt --out my-model/
    python -m consistency.cli.export --checkpoint runs/mnist/checkpoint.pt --out my-model/ --metrics scores.jsonl
    python -m consistency.cli.export --checkpoint runs/mnist/checkpoint.pt --out my-model/ --push owner/name

The folder loads with cm.load_model("my-model/") and every command line's --checkpoint; --metrics adds the rows
`python -m consistency.evaluate --json` wrote to the model card; --push uploads it to the Hugging Face Hub (the [hub]
extra, a token and a connection).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..checkpoint import load_model, read_checkpoint
from ..model import check_guidance
from ..pretrained import export, push_to_hub
from .args import Parser, positive_int


def read_metrics(path: str) -> list[dict]:
    """The rows `python -m consistency.evaluate --json` wrote, checked: one line naming --metrics when they are not."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--metrics {path}: {getattr(exc, 'strerror', None) or 'not a text file'}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not all(isinstance(row.get(k, 0), (int, float)) or row.get(k) is None
                                                for k in ("nfe", "fid", "precision", "recall", "label_agreement")):
            raise ValueError(f"--metrics {path}, line {number}: not a row of python -m consistency.evaluate --json")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m consistency.cli.export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by the trainer")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--weights", default="ema", choices=["ema", "model"], help="sampling EMA (default) or online")
    parser.add_argument("--name", help="the model card's title")
    parser.add_argument("--command", help="the training command, for the model card")
    parser.add_argument("--metrics", help="JSON lines of python -m consistency.evaluate --json, for the model card")
    parser.add_argument("--steps", type=positive_int, nargs="+",
                        help="the default sampling steps (default: the sampler's)")
    parser.add_argument("--guidance", type=float, help="the default guidance scale (default: unguided)")
    parser.add_argument("--push", metavar="OWNER/NAME", help="also upload the folder to the Hugging Face Hub")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    args = parser.parse_args(argv)
    try:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file: give a folder")
        if any((out / name).exists() for name in ("checkpoint.pt", "run.json", "log.jsonl")):
            raise ValueError(f"--out {out} holds a training run (checkpoint.pt, run.json): a model folder goes "
                             "elsewhere, e.g. --out " + str(out / "model"))
        if (out / "config.json").exists() and not args.overwrite:
            raise ValueError(f"{out} already holds a model: choose another --out, or --overwrite")
        if args.guidance is not None:
            check_guidance(load_model(args.checkpoint), args.guidance, read_checkpoint(args.checkpoint).method)
        metrics = read_metrics(args.metrics) if args.metrics else None
        info = {k: v for k, v in (("name", args.name), ("command", args.command)) if v}
        export(args.checkpoint, out, weights=args.weights, metrics=metrics, default_steps=args.steps,
               default_guidance=args.guidance, path=str(out), **info)
        print(f"wrote {out} (model.safetensors, config.json, README.md)")
        if args.push:
            print(f"pushed: {push_to_hub(out, args.push)}")
    except (OSError, ValueError, ImportError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
