"""The equal-compute results as one chart: one- and two-step FID (the MNIST yardstick) of every recipe trained for
20 CPU-minutes, class-conditional and unconditional, from the rows mnist_equal_compute.py wrote.

    python benchmarks/equal_compute_chart.py   # reads benchmarks/results/mnist_equal_compute.jsonl, writes
                                               # benchmarks/results/equal_compute_fid.png

A recipe run more than once (the same arm and conditioning) shows its last row; rows whose note says the run
diverged are left out (docs/results.md keeps every row).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency.plot import plot_bars  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"ict": "iCT", "ect": "ECT from scratch", "scm": "sCT", "meanflow": "MeanFlow", "cd@12": "EDM 12 + CD 8",
         "cd@8": "EDM 8 + CD 12", "ect@12": "EDM 12 + ECT 8", "scd@12": "EDM 12 + sCD 8"}


def chart_rows(rows: list[dict]) -> list[tuple[str, list[float]]]:
    """(label, [1-step FID, 2-step FID]) per recipe and conditioning: the last row of each, diverged runs left out,
    class-conditional recipes first, each conditioning sorted by 1-step FID."""
    last: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if "diverged" in (r.get("note") or ""):
            continue
        last.setdefault((r["conditioning"], r["arm"]), {})[r["nfe"]] = r["fid"]
    order = sorted(last, key=lambda key: (key[0] != "conditional", last[key].get(1, math.inf)))
    return [(f"{NAMES.get(arm, arm)}, {'cond.' if cond == 'conditional' else 'uncond.'}",
             [last[cond, arm].get(1, math.nan), last[cond, arm].get(2, math.nan)]) for cond, arm in order]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=str(RESULTS / "mnist_equal_compute.jsonl"))
    parser.add_argument("--out", default=str(RESULTS / "equal_compute_fid.png"))
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    plot_bars(chart_rows(rows), args.out, series=["1 step", "2 steps"], xlabel="FID (MNIST yardstick, lower is better)",
              title="MNIST, 20 CPU-minutes per recipe (2 cores): FID of 10,000 samples")
    print(f"wrote {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
