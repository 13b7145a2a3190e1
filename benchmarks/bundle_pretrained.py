"""Make the small model that comes with the package (consistency/pretrained_models/): a trained MNIST run exported as a
model folder with its yardstick numbers in the card, and the MNIST yardstick's classifier beside it (fp16), so that
`python -m consistency.evaluate` on MNIST and the test of the bundled model need no classifier training.

    python main.py --data-root DIR --steps 6000 --label-dropout 0.1 --out runs/pretrained
    python -m consistency.evaluate --checkpoint runs/pretrained/checkpoint.pt --n 10000 --steps 1 2 --guidance 1 2 \
        --json runs/pretrained/scores.jsonl
    python benchmarks/bundle_pretrained.py --checkpoint runs/pretrained/checkpoint.pt --scores runs/pretrained/scores.jsonl \
        --data-root DIR --command "python main.py --steps 6000 --label-dropout 0.1" --guidance 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency.pretrained import BUNDLED, export  # noqa: E402
from consistency.utils import cache_folder  # noqa: E402
from consistency.yardstick import Yardstick, mnist_splits  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--scores", required=True, help="evaluate's JSON lines for the model card")
    parser.add_argument("--data-root", required=True, help="MNIST, for the yardstick's classifier")
    parser.add_argument("--cache-dir", default=None, help="the yardstick's cache (default: beside the data)")
    parser.add_argument("--command", required=True, help="the training command, for the card")
    parser.add_argument("--machine", default="", help="where it was trained, for the card")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2], help="default sampling steps")
    parser.add_argument("--guidance", type=float, default=None, help="default guidance scale")
    parser.add_argument("--name", default="mnist")
    args = parser.parse_args(argv)
    folder = BUNDLED / args.name
    metrics = [json.loads(line) for line in Path(args.scores).read_text().splitlines() if line.strip()]
    metrics = [{k: m.get(k) for k in ("nfe", "guidance", "fid", "precision", "recall", "label_agreement", "n")}
               for m in metrics if "nfe" in m]
    export(args.checkpoint, folder, metrics=metrics, default_steps=tuple(args.steps), default_guidance=args.guidance,
           name="Class-conditional MNIST, one step", command=args.command, machine=args.machine,
           path=f"pretrained/{args.name}")
    splits = mnist_splits(args.data_root)
    yardstick = Yardstick.load_or_train(splits, cache_folder(args.data_root, args.cache_dir, name=".consistency-yardstick"))
    from safetensors.torch import save_file

    state = {k: v.half().contiguous() for k, v in yardstick.classifier.state_dict().items()}
    save_file(state, str(BUNDLED / f"yardstick-{splits.name}.safetensors"),
              metadata={"fingerprint": splits.fingerprint, "shape": json.dumps(list(splits.train_images.shape[1:])),
                        "accuracy": str(yardstick.accuracy)})
    (BUNDLED / f"yardstick-{splits.name}.safetensors").chmod(0o644)  # safetensors writes 0600
    size = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    print(f"wrote {folder} and the yardstick's classifier: {size / 2**20:.2f} MiB in {BUNDLED}")
    assert size <= 6 * 2**20, "the bundled models must stay under 6 MiB"


if __name__ == "__main__":
    main()
