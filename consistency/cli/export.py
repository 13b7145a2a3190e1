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

from ..pretrained import export, push_to_hub
from .args import Parser


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m consistency.cli.export", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by the trainer")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--weights", default="ema", choices=["ema", "model"], help="sampling EMA (default) or online")
    parser.add_argument("--name", help="the model card's title")
    parser.add_argument("--command", help="the training command, for the model card")
    parser.add_argument("--metrics", help="JSON lines of python -m consistency.evaluate --json, for the model card")
    parser.add_argument("--steps", type=int, nargs="+", help="the default sampling steps (default: the sampler's)")
    parser.add_argument("--guidance", type=float, help="the default guidance scale (default: unguided)")
    parser.add_argument("--push", metavar="OWNER/NAME", help="also upload the folder to the Hugging Face Hub")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    args = parser.parse_args(argv)
    try:
        out = Path(args.out)
        if (out / "config.json").exists() and not args.overwrite:
            raise ValueError(f"{out} already holds a model: choose another --out, or --overwrite")
        metrics = [json.loads(line) for line in Path(args.metrics).read_text().splitlines() if line.strip()] \
            if args.metrics else None
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
