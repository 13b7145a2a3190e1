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


@pytest.mark.slow  # 40 s: the editing benchmarks' plumbing (the editors' invariants are in test_editing.py)
def test_the_editing_benchmarks_run_and_keep_what_they_must(fake_mnist, tmp_path, capsys):
    """mnist_editing.py (inpainting at two t_1, super-resolution) and colorization.py on tiny trained models."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from colorization import main as colorization
    from label_agreement import main as label_agreement
    from mnist_editing import main as editing

    from consistency.cli.colored_mnist import main as colored
    from tests.test_cli import TINY, imagenet9_py, main_py, succeeds

    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "u"), "--steps", "2",
                       "--no-class-conditional", *TINY], capsys)
    rows = editing(["--checkpoint", str(tmp_path / "u" / "checkpoint.pt"), "--data-root", str(fake_mnist), "--n", "8",
                    "--steps", "1", "2", "--t-start", "80", "5", "--cache-dir", str(tmp_path / "cache"), "--out",
                    str(tmp_path / "editing")])
    inpaint = [r for r in rows if r["task"] == "inpaint" and "t_start" in r]
    assert [(r["t_start"], r["steps"]) for r in inpaint] == [(80, 1), (80, 2), (5, 1), (5, 2)]
    assert inpaint[2]["sigmas"] == [5.0]  # Algorithm 4 from t_1 = 5
    sr = {r["what"]: r["psnr"] for r in rows if r["task"] == "super-resolve"}
    assert len(sr) == 4 and all(v > 0 for v in sr.values())
    assert (tmp_path / "editing.json").is_file() and (tmp_path / "editing.png").is_file()

    succeeds(colored, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "cm")], capsys)
    succeeds(imagenet9_py, ["--dataset", "folder", "--data-root", str(tmp_path / "cm" / "train"), "--image-size", "32",
                            "--out", str(tmp_path / "rgb"), "--steps", "2", "--num-workers", "0", *TINY], capsys)
    rows = colorization(["--checkpoint", str(tmp_path / "rgb" / "checkpoint.pt"), "--data-root",
                         str(tmp_path / "cm" / "test"), "--n", "8", "--steps", "1", "--out", str(tmp_path / "color")])
    assert rows[1]["rmse"] < rows[0]["rmse"]  # the mean chroma beats no colour at all
    assert rows[2]["luminance_error"] < 1e-4  # colorization keeps the luminance it was given
    assert torch.isfinite(torch.tensor([r["rmse"] for r in rows])).all()

    rows = label_agreement(["--data-root", str(tmp_path / "cm" / "test"), "--holdout", "0.5", "--checkpoint",
                            str(tmp_path / "rgb" / "checkpoint.pt"), "--n", "20", "--steps", "1"])
    plain, mirrored, half, samples = (r["label_agreement"] for r in rows)
    n = rows[0]["n"]  # every other image mirrored: the two scores, weighted by how many of each
    assert abs(half - (plain * ((n + 1) // 2) + mirrored * (n // 2)) / n) <= 2 / n
    assert len(rows[3]["per_class"]) == 10 and abs(sum(rows[3]["per_class"]) / 10 - samples) < 1e-6  # 2 per class
