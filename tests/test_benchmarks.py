"""The benchmark scripts' own logic (their measurements run outside the test suite)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_distillation_benchmark_refuses_a_reused_run_trained_differently(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.mnist_distillation import check_reused_run
    from consistency.cli.train import resolve
    from consistency.presets import MNIST_CPU, MNIST_GPU
    from main import parse_args

    argv = ["--minutes", "20.0", "--class-conditional"]
    recorded = resolve(parse_args(argv), cpu=MNIST_CPU, gpu=MNIST_GPU, out="runs/mnist").recorded()
    recorded["run"].update(out="runs/elsewhere", progress=False, sample_every=0)  # where it wrote: not compared
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    check_reused_run(tmp_path, argv, "--ict-run")  # same settings, another output folder: accepted
    for change, message in (({"lr": 0.002}, "--lr 0.002"), ({"method": "ct"}, "--method ct"),
                            ({"minutes": 10.0}, "--minutes 10.0"), ({"ema_warmup": False}, "--ema-warmup False"),
                            ({"method_options": {"s1": 1280}}, "--method-options")):
        (tmp_path / "config.json").write_text(json.dumps({**recorded, "run": {**recorded["run"], **change}}))
        with pytest.raises(SystemExit, match=message):
            check_reused_run(tmp_path, argv, "--ict-run")
    with pytest.raises(SystemExit, match="config.json"):
        check_reused_run(tmp_path / "missing", argv, "--teacher-run")


def test_gpu_check_without_cuda_exits_at_once_with_a_message():
    import os
    import subprocess

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
