"""The GPU check: one command on a machine with one CUDA GPU, in under 8 minutes (`bash benchmarks/gpu_check.sh`).

    (a) the CUDA tests (tests/test_cuda.py): trainer steps in fp32 / bf16 with and without channels-last and an exact
        resume, the device-side skip of a non-finite step, torch.compile with dropout, samplers across devices, DDP
        over NCCL with one process
    (b) main.py with its GPU preset for --train-minutes, then mnist_quality.py on 10,000 one- and two-step samples
    (c) main_imagenet9.py's GPU preset at 64 px: training images/s and peak memory for fp32 / bf16 x compile off / on
        x channels-last off / on (benchmarks/throughput.py)
    (d) benchmarks/mfu.py: every method's training step and one-step sampling as a share of the card's measured
        dense matmul throughput, with the MNIST and the ImageNet-9 GPU presets
    (e) one table, and its JSON as gpu_check_<card>.json in --out (default benchmarks/results)

Each part also runs alone (--only mfu, or --skip tests mnist), so a short loan of a GPU can rerun a part that failed:
(a) about 2 minutes, (b) --train-minutes plus about 3, (c) about 4, (d) about 4. Without CUDA it exits at once with
status 3 and says so. MNIST is read from --data-root (the four idx files).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["tests", "mnist", "throughput", "mfu"]


def sh(args: list[str], timeout: float, log: Path) -> tuple[int, str]:
    """Run a command under a timeout; its output goes to `log` and the last lines come back."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = 124
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        text += f"\n(timed out after {timeout:.0f} s)"
    log.write_text(text)
    return code, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data", help="MNIST folder (the four idx files)")
    parser.add_argument("--train-minutes", type=float, default=5.0, help="(b): MNIST training budget")
    parser.add_argument("--n", type=int, default=10_000, help="(b): samples scored")
    parser.add_argument("--throughput-budget", type=float, default=150,
                        help="(c): no new setting starts after this many seconds (a compiled one takes about a minute)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where the JSON and logs go")
    parser.add_argument("--work", default=None, help="where the MNIST run is written (default: a folder in --out)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--only", nargs="*", default=None, choices=PARTS, help="run these parts alone")
    parser.add_argument("--mfu-methods", nargs="+", default=["ict", "ect", "cd", "scm", "scd", "meanflow", "edm"],
                        help="(d): methods measured with the MNIST GPU preset (ImageNet-9's: ict)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a dry run of the script's plumbing (tiny budgets make it quick), not a measurement")
    args = parser.parse_args(argv)

    if args.only is not None:
        args.skip = [p for p in PARTS if p not in args.only]
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU here; this script measures the GPU paths only. On a CPU, run the test "
              "suite (python -m pytest -q) and benchmarks/throughput.py --config mnist-cpu.", file=sys.stderr)
        return 3
    start = time.monotonic()
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-").lower()
    report: dict = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "parts": {}}
    print(f"gpu_check on {card}, torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)

    if "tests" not in args.skip:  # (a)
        t0 = time.monotonic()
        code, text = sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                         "tests/test_cuda.py"], 240, out / "gpu_check_tests.log")
        summary = next((line for line in reversed(text.splitlines()) if " passed" in line or " failed" in line
                        or "error" in line), text.strip().splitlines()[-1] if text.strip() else "no output")
        report["parts"]["tests"] = {"exit": code, "summary": summary.strip("= "), "seconds": time.monotonic() - t0}
        print(f"(a) CUDA tests: {summary.strip('= ')} [{time.monotonic() - t0:.0f} s]", flush=True)

    if "mnist" not in args.skip:  # (b)
        t0 = time.monotonic()
        run_dir = Path(args.work or out) / "gpu_check_mnist_run"
        code, text = sh([sys.executable, "main.py", "--data-root", args.data_root, "--minutes", str(args.train_minutes),
                         "--out", str(run_dir), "--overwrite", "--no-progress", "--sample-every", "0",
                         "--device", args.device],
                        60 * args.train_minutes + 180, out / "gpu_check_mnist_train.log")
        part: dict = {"train_exit": code}
        run_json = run_dir / "run.json"
        if code == 0 and run_json.is_file():
            part.update(json.loads(run_json.read_text()))
            scores = run_dir / "quality.jsonl"
            scores.unlink(missing_ok=True)
            code, text = sh([sys.executable, "benchmarks/mnist_quality.py", "--checkpoint", str(run_dir / "checkpoint.pt"),
                             "--data-root", args.data_root, "--n", str(args.n), "--steps", "1", "2", "--json",
                             str(scores), "--tag", f"main.py preset on {card}"], 300, out / "gpu_check_mnist_quality.log")
            part["quality_exit"] = code
            if scores.is_file():
                part["quality"] = [json.loads(line) for line in scores.read_text().splitlines()]
        else:
            part["error"] = text.strip().splitlines()[-1] if text.strip() else "no output"
        part["seconds"] = time.monotonic() - t0
        report["parts"]["mnist"] = part
        print(f"(b) MNIST GPU preset: {part.get('steps', '?')} steps, "
              f"{part.get('images_per_s', float('nan')):.0f} img/s [{part['seconds']:.0f} s]", flush=True)

    if "throughput" not in args.skip:  # (c)
        sys.path.insert(0, str(ROOT))
        from benchmarks.throughput import measure

        t0, rows = time.monotonic(), []
        settings = [(p, c, cl) for c in ("off", "on") for p in ("fp32", "bf16") for cl in ("off", "on")]
        for precision, comp, cl in settings:
            if time.monotonic() - t0 > args.throughput_budget:
                rows.append({"precision": precision, "compile": comp == "on", "channels_last": cl == "on",
                             "skipped": "time budget"})
                continue
            try:
                row = measure("imagenet9-64", None if args.device == "cuda" else 4, precision, comp == "on",
                              cl == "on", steps=15 if args.device == "cuda" else 2, warmup=3 if args.device == "cuda"
                              else 1, device=args.device)
            except Exception as exc:  # report and go on: one failing setting should not hide the others
                row = {"precision": precision, "compile": comp == "on", "channels_last": cl == "on",
                       "error": f"{type(exc).__name__}: {exc}"[:300]}
            rows.append(row)
            torch._dynamo.reset()
            if args.device == "cuda":
                torch.cuda.empty_cache()
            print(f"(c) {precision} compile={comp} channels_last={cl}: "
                  f"{row.get('images_per_s', float('nan')):.0f} img/s", flush=True)
        report["parts"]["throughput"] = {"config": "imagenet9-64 (main_imagenet9.py GPU preset)", "rows": rows,
                                         "seconds": time.monotonic() - t0}

    if "mfu" not in args.skip:  # (d)
        t0, rows = time.monotonic(), []
        log = out / "gpu_check_mfu.jsonl"
        log.unlink(missing_ok=True)
        quick = [] if args.device == "cuda" else ["--steps", "2", "--warmup", "1", "--batch-size", "4"]
        runs = [("mnist-gpu", args.mfu_methods, []), ("mnist-gpu", ["ict"], ["--compile", "on", "--precision", "bf16"]),
                ("mnist-gpu", ["ict"], ["--compile", "on", "--precision", "bf16", "--compile-mode", "reduce-overhead"]),
                ("imagenet9-gpu", ["ict"], [])]
        for preset, methods, extra in runs:
            code, text = sh([sys.executable, "benchmarks/mfu.py", "--preset", preset, "--device", args.device,
                             "--methods", *methods, "--json", str(log), *extra, *quick], 400,
                            out / f"gpu_check_mfu_{preset}.log")
            print(f"(d) {preset}:\n" + "\n".join(text.strip().splitlines()[-len(methods) - 2:]), flush=True)
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        report["parts"]["mfu"] = {"rows": rows, "seconds": time.monotonic() - t0}

    report["seconds"] = time.monotonic() - start
    path = out / f"gpu_check_{slug}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    print(f"wrote {path} ({report['seconds']:.0f} s in all)")
    failed = report["parts"].get("tests", {}).get("exit", 0) != 0 or report["parts"].get("mnist", {}).get("train_exit", 0)
    return 1 if failed else 0


def print_table(report: dict) -> None:
    print(f"\n| gpu_check on {report['card']}, torch {report['torch']} | |\n| --- | --- |")
    parts = report["parts"]
    if "tests" in parts:
        print(f"| (a) CUDA tests | {parts['tests']['summary']} |")
    if "mnist" in parts:
        m = parts["mnist"]
        print(f"| (b) main.py GPU preset, {m.get('seconds', 0) / 60:.1f} min | {m.get('steps', '?')} steps, "
              f"{m.get('images_per_s', float('nan')):.0f} img/s |")
        for q in m.get("quality", []):
            label = f", label ok {q['label_agreement']:.3f}" if "label_agreement" in q else ""
            print(f"| (b) {q['nfe']}-step samples, n = {q['n']} | FID {q['fid']:.1f}, conf {q['confidence']:.3f}, "
                  f"entropy {q['class_entropy']:.3f}{label} |")
    if "throughput" in parts:
        for r in parts["throughput"]["rows"]:
            name = (f"(c) ImageNet-9 64 px, {r['precision']}, compile {'on' if r['compile'] else 'off'}, "
                    f"channels-last {'on' if r['channels_last'] else 'off'}")
            if "images_per_s" in r:
                peak = f"{r['peak_memory_GiB']:.1f} GiB" if r["peak_memory_GiB"] is not None else "-"
                print(f"| {name} | {r['images_per_s']:.0f} img/s, {r['s_per_step'] * 1000:.0f} ms/step (batch "
                      f"{r['batch']}), peak {peak}, warm-up {r['warmup_s']:.0f} s |")
            else:
                print(f"| {name} | {r.get('skipped') or r.get('error')} |")
    for r in parts.get("mfu", {}).get("rows", []):
        print(f"| (d) {r['preset']} {r['method']}, {r['precision']}, compile {r['compile']}, batch {r['batch']} | "
              f"{r['gflops_per_image']:.2f} GFLOP/image, {r['images_per_s']:.0f} img/s, {r['achieved_tflops']:.1f} "
              f"TFLOP/s = {r['mfu']:.1%} of {r['peak_tflops']:.0f}; one-step sampling {r['sample_images_per_s']:.0f} "
              f"img/s ({r['sample_mfu']:.1%}) |")


if __name__ == "__main__":
    sys.exit(main())
