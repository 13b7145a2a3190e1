"""Distillation vs isolation on MNIST at equal wall-clock compute, on this machine.

    python benchmarks/mnist_distillation.py --data-root DIR --teacher-minutes 10 --distill-minutes 5

Trains (1) an EDM teacher for --teacher-minutes, (2) a CD student from it for --distill-minutes, and (3) an iCT model
for the sum of both (the teacher's training counted), each with main.py's preset for this machine, then measures all
three with mnist_quality.py (the teacher at 18 Heun levels = 35 evaluations, the consistency models at 1 and 2
steps). Prints one table and writes it as JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--teacher-minutes", type=float, default=10)
    parser.add_argument("--distill-minutes", type=float, default=5)
    parser.add_argument("--n", type=int, default=10_000, help="samples per evaluation")
    parser.add_argument("--teacher-n", type=int, default=None, help="samples for the 35-evaluation teacher (default --n)")
    parser.add_argument("--out", default="runs/distillation_benchmark")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "mnist_distillation.jsonl"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    common = ["--data-root", args.data_root, "--no-progress", "--sample-every", "0"]
    sh("main.py", "--mode", "teacher", "--minutes", str(args.teacher_minutes), "--out", str(out / "teacher"), *common)
    sh("main.py", "--mode", "distill", "--teacher", str(out / "teacher" / "checkpoint.pt"), "--minutes",
       str(args.distill_minutes), "--out", str(out / "cd"), *common)
    sh("main.py", "--minutes", str(args.teacher_minutes + args.distill_minutes), "--out", str(out / "ict"), *common)
    quality = str(ROOT / "benchmarks" / "mnist_quality.py")
    sh(quality, "--data-root", args.data_root, "--checkpoint", str(out / "teacher" / "checkpoint.pt"), "--steps", "18",
       "--n", str(args.teacher_n or args.n), "--tag", f"EDM teacher ({args.teacher_minutes} min)", "--json", args.json)
    sh(quality, "--data-root", args.data_root, "--checkpoint", str(out / "cd" / "checkpoint.pt"), "--steps", "1", "2",
       "--n", str(args.n), "--tag", f"CD ({args.teacher_minutes} + {args.distill_minutes} min)", "--json", args.json)
    sh(quality, "--data-root", args.data_root, "--checkpoint", str(out / "ict" / "checkpoint.pt"), "--steps", "1", "2",
       "--n", str(args.n), "--tag", f"iCT ({args.teacher_minutes + args.distill_minutes} min)", "--json", args.json)
    for name in ("teacher", "cd", "ict"):
        print(name, json.loads((out / name / "run.json").read_text()))


if __name__ == "__main__":
    main()
