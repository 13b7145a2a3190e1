"""Every method at the same wall-clock budget on MNIST, scored with the project's yardstick (mnist_quality.py).

    python benchmarks/mnist_equal_compute.py --data-root DIR --total-minutes 20 --conditioning both \\
        --arms ict ect cd@12 ect@12 ect@8 teacher@20

Arms (each trained with main.py's preset for this machine, then scored on --n samples at 1 and 2 steps):
    ict, ect, ct, scm, meanflow   the method from scratch for the whole budget
    cd@T, ect@T, scd@T, scm@T     an EDM teacher trained T minutes (--method edm), then the method started from it
                                  for the rest
    teacher@T                     an EDM teacher trained T minutes, scored with EDM's Heun sampler (18 levels =
                                  35 evaluations)
A teacher of T minutes is trained once per conditioning and shared by every arm that starts from it; its own
training counts towards the budget of each of those arms. Runs already finished in --out are reused (the script can
be stopped and started again). Results are appended as JSON lines to --json and printed as one table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def train(out: Path, minutes: float, cond: str, data_root: str, extra: list[str]) -> dict:
    """main.py for `minutes` (skipped when out holds a finished run); returns its run.json."""
    if not (out / "run.json").is_file():
        sh(["main.py", "--data-root", data_root, "--minutes", f"{minutes:g}", cond, "--out", str(out), "--overwrite",
            "--no-progress", "--sample-every", "0", *extra])
    return json.loads((out / "run.json").read_text())


def score(run: Path, steps: list[int], n: int, data_root: str, tag: str) -> list[dict]:
    scores = run / "quality.jsonl"
    if not scores.is_file():
        sh([str(ROOT / "benchmarks" / "mnist_quality.py"), "--data-root", data_root, "--checkpoint",
            str(run / "checkpoint.pt"), "--steps", *map(str, steps), "--n", str(n), "--tag", tag, "--json",
            str(scores)])
    return [json.loads(line) for line in scores.read_text().splitlines()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--total-minutes", type=float, default=20.0, help="the budget of every arm")
    parser.add_argument("--arms", nargs="+", default=["ict", "ect", "cd@12", "ect@12", "ect@8", "teacher@20"])
    parser.add_argument("--conditioning", choices=["conditional", "unconditional", "both"], default="both")
    parser.add_argument("--n", type=int, default=10_000, help="samples per score")
    parser.add_argument("--flags", default="", help="extra main.py flags for the consistency phase of every arm")
    parser.add_argument("--out", default="runs/equal_compute")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "mnist_equal_compute.jsonl"))
    args = parser.parse_args(argv)
    conds = ["conditional", "unconditional"] if args.conditioning == "both" else [args.conditioning]
    rows = []
    for cond in conds:
        flag = "--class-conditional" if cond == "conditional" else "--no-class-conditional"
        base = Path(args.out) / cond
        for arm in args.arms:
            t0 = time.time()
            method, _, split = arm.partition("@")
            phases = []
            if split:  # a teacher first
                teacher_minutes = float(split)
                teacher = base / f"teacher{split}"
                phases.append({"method": "edm", "minutes": teacher_minutes,
                               **train(teacher, teacher_minutes, flag, args.data_root, ["--method", "edm"])})
                if method == "teacher":
                    run = teacher
                else:
                    run = base / arm.replace("@", "_from_teacher")
                    rest = args.total_minutes - teacher_minutes
                    phases.append({"method": method, "minutes": rest, **train(
                        run, rest, flag, args.data_root,
                        ["--method", method, "--teacher", str(teacher / "checkpoint.pt"), *args.flags.split()])})
            else:
                run = base / method
                phases.append({"method": method, "minutes": args.total_minutes, **train(
                    run, args.total_minutes, flag, args.data_root, ["--method", method, *args.flags.split()])})
            steps = [18] if method == "teacher" else [1, 2]
            for q in score(run, steps, args.n, args.data_root, f"{arm} {cond}"):
                row = {"arm": arm, "conditioning": cond, "phases": phases, "nfe": q["nfe"], "fid": q["fid"],
                       "confidence": q["confidence"], "class_entropy": q["class_entropy"],
                       "label_agreement": q.get("label_agreement"), "n": q["n"], "run": str(run),
                       "flags": args.flags, "wall_seconds": time.time() - t0}
                rows.append(row)
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("\n| conditioning | arm | phases (minutes, steps, images/s) | NFE | FID | conf | entropy | label ok |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        phases = " + ".join(f"{p['method']} {p['minutes']:g} min, {p['steps']:,} steps, {p['images_per_s']:.0f}/s"
                            for p in r["phases"])
        label = f"{r['label_agreement']:.3f}" if r["label_agreement"] is not None else "-"
        print(f"| {r['conditioning']} | {r['arm']} | {phases} | {r['nfe']} | {r['fid']:.1f} | {r['confidence']:.3f} "
              f"| {r['class_entropy']:.3f} | {label} |")


if __name__ == "__main__":
    main()
