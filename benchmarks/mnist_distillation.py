"""Distillation vs isolation on MNIST at equal wall-clock compute, on this machine.

    python benchmarks/mnist_distillation.py --data-root DIR --teacher-minutes 10 --distill-minutes 5
    python benchmarks/mnist_distillation.py --data-root DIR --teacher-minutes 12 --distill-minutes 8 \
        --ict-run runs/mnist                                 # reuse a 20-minute `main.py --minutes 20` run
    python benchmarks/mnist_distillation.py --data-root DIR --teacher-minutes 12 --distill-minutes 8 \
        --teacher-run runs/bench/teacher --ict-run runs/bench/ict --evaluate cd --distill-flags "--lr 2e-4"

Trains (1) an EDM teacher for --teacher-minutes, (2) a CD student from it for --distill-minutes, and (3) an iCT model
for the sum of both (the teacher's training counted), each with main.py's preset for this machine, then measures all
three with mnist_quality.py (the teacher at 18 Heun levels = 35 evaluations, the consistency models at 1 and 2
steps). Prints one table and writes it as JSON to --json. A reused run (--teacher-run, --ict-run) must have been
trained exactly as this script would train it (checked against its config.json), so the comparison stays fair.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("teacher", "cd", "ict")


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
    parser.add_argument("--teacher-run", default=None,
                        help="reuse this `main.py --method edm` run directory (trained for --teacher-minutes with the "
                             "same conditioning and preset) instead of training the teacher again")
    parser.add_argument("--ict-run", default=None,
                        help="reuse this main.py iCT run directory (trained for teacher + distill minutes with the same "
                             "conditioning and preset) instead of training the iCT arm again")
    parser.add_argument("--evaluate", nargs="+", choices=ARMS, default=list(ARMS),
                        help="arms to measure (default all); e.g. `--evaluate cd` when the reused runs are already "
                             "measured in --json (evaluation is seeded, so a rerun gives the same numbers)")
    parser.add_argument("--n", type=int, default=10_000, help="samples per evaluation")
    parser.add_argument("--teacher-n", type=int, default=None, help="samples for the 35-evaluation teacher (default --n)")
    parser.add_argument("--out", default="runs/distillation_benchmark")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "mnist_distillation.jsonl"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    total = args.teacher_minutes + args.distill_minutes
    cond = "--class-conditional" if args.class_conditional else "--no-class-conditional"
    teacher_argv = ["--method", "edm", "--minutes", str(args.teacher_minutes), cond]
    ict_argv = ["--minutes", str(total), cond]
    teacher = Path(args.teacher_run) if args.teacher_run else out / "teacher"
    ict = Path(args.ict_run) if args.ict_run else out / "ict"
    if args.teacher_run:
        check_reused_run(teacher, teacher_argv, "--teacher-run")
    if args.ict_run:
        check_reused_run(ict, ict_argv, "--ict-run")
    common = ["--data-root", args.data_root, "--no-progress", "--sample-every", "0"]
    if not args.teacher_run:
        sh("main.py", *teacher_argv, "--out", str(teacher), *common)
    sh("main.py", "--method", "cd", "--teacher", str(teacher / "checkpoint.pt"), "--minutes",
       str(args.distill_minutes), cond, "--out", str(out / "cd"), *common, *args.distill_flags.split())
    if not args.ict_run:
        sh("main.py", *ict_argv, "--out", str(ict), *common)
    quality = str(ROOT / "benchmarks" / "mnist_quality.py")
    cd_method = json.loads((out / "cd" / "config.json").read_text())["method"]
    cd_tag = f"CD ({args.teacher_minutes} + {args.distill_minutes} min, {cd_method['solver']}, N = {cd_method['num_scales']})"
    evaluations = {
        "teacher": (teacher, ["18"], args.teacher_n or args.n, f"EDM teacher ({args.teacher_minutes} min)"),
        "cd": (out / "cd", ["1", "2"], args.n, cd_tag),
        "ict": (ict, ["1", "2"], args.n, f"iCT ({total} min)"),
    }
    for arm in args.evaluate:
        run, steps, n, tag = evaluations[arm]
        sh(quality, "--data-root", args.data_root, "--checkpoint", str(run / "checkpoint.pt"), "--steps", *steps,
           "--n", str(n), "--tag", tag, "--json", args.json)
    for name, run in (("teacher", teacher), ("cd", out / "cd"), ("ict", ict)):
        print(name, json.loads((run / "run.json").read_text()))


# Settings that say where a run reads and writes, not how it trains.
NOT_TRAINING = {"out", "progress", "sample_every", "checkpoint_every", "device", "teacher", "num_workers"}


def check_reused_run(run: Path, expected_argv: list[str], flag: str) -> None:
    """Refuse a reused run unless it was trained as `main.py *expected_argv` would train it on this machine now: the
    run's recorded settings (flags and preset values alike) equal, except where it read and wrote."""
    config = run / "config.json"
    if not config.is_file():
        sys.exit(f"error: {flag} {run} has no config.json; give a main.py output folder")
    sys.path.insert(0, str(ROOT))
    from consistency.cli.train import resolve
    from consistency.presets import MNIST_CPU, MNIST_GPU
    from main import parse_args

    expected = resolve(parse_args(expected_argv), cpu=MNIST_CPU, gpu=MNIST_GPU, out="runs/mnist").recorded()["run"]
    used = json.loads(config.read_text()).get("run", {})
    wrong = [f"--{key.replace('_', '-')} {used.get(key, '(not recorded)')} (this comparison needs {value})"
             for key, value in expected.items() if key not in NOT_TRAINING and used.get(key, "(not recorded)") != value]
    if wrong:
        sys.exit(f"error: {flag} {run} was not trained like the arm it stands in for: " + "; ".join(wrong))


if __name__ == "__main__":
    main()
