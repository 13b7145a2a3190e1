"""Distillation vs isolation on MNIST at equal wall-clock compute, on this machine.

    python benchmarks/mnist_distillation.py --data-root DIR --teacher-minutes 10 --distill-minutes 5
    python benchmarks/mnist_distillation.py --data-root DIR --teacher-minutes 12 --distill-minutes 8 \
        --ict-run runs/mnist                                 # reuse a 20-minute `main.py --minutes 20` run

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
    parser.add_argument("--class-conditional", action=argparse.BooleanOptionalAction, default=True,
                        help="condition all three models on the digit (main.py's default)")
    parser.add_argument("--distill-flags", default="", help="extra main.py flags for the CD run, e.g. '--lr 2e-4'")
    parser.add_argument("--ict-run", default=None,
                        help="reuse this main.py iCT run directory (trained for teacher + distill minutes with the same "
                             "conditioning and preset) instead of training the iCT arm again")
    parser.add_argument("--n", type=int, default=10_000, help="samples per evaluation")
    parser.add_argument("--teacher-n", type=int, default=None, help="samples for the 35-evaluation teacher (default --n)")
    parser.add_argument("--out", default="runs/distillation_benchmark")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "mnist_distillation.jsonl"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    total = args.teacher_minutes + args.distill_minutes
    ict = Path(args.ict_run) if args.ict_run else out / "ict"
    if args.ict_run:
        check_reused_run(ict, total, args.class_conditional)
    common = ["--data-root", args.data_root, "--no-progress", "--sample-every", "0"]
    common += ["--class-conditional" if args.class_conditional else "--no-class-conditional"]
    sh("main.py", "--mode", "teacher", "--minutes", str(args.teacher_minutes), "--out", str(out / "teacher"), *common)
    sh("main.py", "--mode", "distill", "--teacher", str(out / "teacher" / "checkpoint.pt"), "--minutes",
       str(args.distill_minutes), "--out", str(out / "cd"), *common, *args.distill_flags.split())
    if not args.ict_run:
        sh("main.py", "--minutes", str(total), "--out", str(ict), *common)
    quality = str(ROOT / "benchmarks" / "mnist_quality.py")
    sh(quality, "--data-root", args.data_root, "--checkpoint", str(out / "teacher" / "checkpoint.pt"), "--steps", "18",
       "--n", str(args.teacher_n or args.n), "--tag", f"EDM teacher ({args.teacher_minutes} min)", "--json", args.json)
    sh(quality, "--data-root", args.data_root, "--checkpoint", str(out / "cd" / "checkpoint.pt"), "--steps", "1", "2",
       "--n", str(args.n), "--tag", f"CD ({args.teacher_minutes} + {args.distill_minutes} min)", "--json", args.json)
    sh(quality, "--data-root", args.data_root, "--checkpoint", str(ict / "checkpoint.pt"), "--steps", "1", "2",
       "--n", str(args.n), "--tag", f"iCT ({total} min)", "--json", args.json)
    for name, run in (("teacher", out / "teacher"), ("cd", out / "cd"), ("ict", ict)):
        print(name, json.loads((run / "run.json").read_text()))


def check_reused_run(run: Path, minutes: float, class_conditional: bool) -> None:
    """Refuse an iCT run that was not trained like the arm it stands in for."""
    config = run / "config.json"
    if not config.is_file():
        sys.exit(f"error: --ict-run {run} has no config.json; give a main.py output folder")
    a = json.loads(config.read_text())["args"]
    if a.get("ema_warmup", False) is not True:  # runs from before the warm-up have no such flag
        sys.exit(f"error: --ict-run {run} was trained without the sampling-EMA warm-up that the other arms use")
    if (a["mode"], a["recipe"], a["minutes"], a["class_conditional"]) != ("ct", "ict", minutes, class_conditional):
        sys.exit(f"error: --ict-run {run} was trained with mode={a['mode']} recipe={a['recipe']} minutes={a['minutes']} "
                 f"class_conditional={a['class_conditional']}; this comparison needs mode=ct recipe=ict "
                 f"minutes={minutes} class_conditional={class_conditional}")


if __name__ == "__main__":
    main()
