"""The benchmark scripts' own logic (their measurements run outside the test suite)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_distillation_benchmark_refuses_a_reused_run_trained_differently(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.mnist_distillation import check_reused_run
    from main import parse_args

    argv = ["--minutes", "20.0", "--class-conditional"]
    args = vars(parse_args(argv))
    # num_scales is read by distillation only: an iCT run that recorded CM's 18 (older runs did) is still an iCT run
    args.update(lr=0.001, batch_size=64, num_scales=18, out="runs/elsewhere", preset_filled=["lr", "batch_size"])
    (tmp_path / "config.json").write_text(json.dumps({"args": args}))
    check_reused_run(tmp_path, argv, "--ict-run")  # same flags, preset values and a different output folder: accepted
    for change, message in (({"preset_filled": ["batch_size"]}, "--lr 0.001"),  # --lr set by hand
                            ({"recipe": "ct"}, "--recipe ct"), ({"minutes": 10.0}, "--minutes 10.0"),
                            ({"ema_warmup": None}, "--ema-warmup None"), ({"mode": "teacher"}, "--mode teacher")):
        (tmp_path / "config.json").write_text(json.dumps({"args": {**args, **change}}))
        with pytest.raises(SystemExit, match=message):
            check_reused_run(tmp_path, argv, "--ict-run")
    with pytest.raises(SystemExit, match="config.json"):
        check_reused_run(tmp_path / "missing", argv, "--teacher-run")
