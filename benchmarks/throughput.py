"""Training throughput (images/s) of the ConsistencyTrainer for a given configuration, on this machine.

    python benchmarks/throughput.py                      # ImageNet-9 64 px preset (class-conditional, 9 classes)
    python benchmarks/throughput.py --config mnist-cpu   # the MNIST CPU preset of main.py
    python benchmarks/throughput.py --precision bf16 fp32 --compile off on --steps 20

Synthetic data of the right shape stands in for the dataset (data loading is measured separately by nothing here:
on a GPU, use enough --num-workers in the real run). Each setting runs --warmup steps, then times --steps steps.
Results are printed as a table and appended as JSON lines to --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency import ConsistencyModel, ConsistencyTrainer, ImprovedConsistencyTraining, UNet, make_loader  # noqa: E402

CONFIGS = {
    # main_imagenet9.py's GPU preset at 64 px, and its CPU preset
    "imagenet9-64": dict(shape=(3, 64, 64), classes=9, width=128, mult=(1, 2, 2, 2), blocks=2, batch=64),
    "imagenet9-64-cpu": dict(shape=(3, 64, 64), classes=9, width=32, mult=(1, 2, 2, 2), blocks=1, batch=32),
    # main.py's presets
    "mnist-cpu": dict(shape=(1, 28, 28), classes=None, width=32, mult=(1, 2, 2), blocks=1, batch=64),
    "mnist-gpu": dict(shape=(1, 28, 28), classes=None, width=64, mult=(1, 2, 2), blocks=2, batch=128),
}


def measure(cfg: dict, precision: str, compile: bool, channels_last: bool, steps: int, warmup: int, device: str) -> dict:
    torch.manual_seed(0)
    n = cfg["batch"] * 4
    data = TensorDataset(torch.rand(n, *cfg["shape"]) * 2 - 1, torch.randint(0, cfg["classes"] or 1, (n,)))
    net = UNet(cfg["shape"][0], base_channels=cfg["width"], channel_mult=cfg["mult"], num_res_blocks=cfg["blocks"],
               num_classes=cfg["classes"])
    trainer = ConsistencyTrainer(ConsistencyModel(net), make_loader(data, cfg["batch"]), loss=ImprovedConsistencyTraining(),
                                 total_steps=10_000, device=device, precision=precision, compile=compile,
                                 channels_last=channels_last, progress=False)
    batches = trainer._batches()
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer._train_step(next(batches))
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._train_step(next(batches))
    sync()
    dt = time.perf_counter() - t0
    return {"params_M": sum(p.numel() for p in net.parameters()) / 1e6, "precision": precision, "compile": compile,
            "channels_last": channels_last, "batch": cfg["batch"], "s_per_step": dt / steps,
            "images_per_s": steps * cfg["batch"] / dt, "warmup_s": warm}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="imagenet9-64", choices=sorted(CONFIGS))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--channels-last", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--batch", type=int, default=None, help="override the configuration's batch size")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS[args.config])
    if args.batch:
        cfg["batch"] = args.batch
    if torch.cuda.is_available() and args.device != "cpu":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{args.config} on {machine}, torch {torch.__version__}")
    print(f"{'precision':>9s} {'compile':>7s} {'NHWC':>5s} {'batch':>5s} {'s/step':>8s} {'img/s':>8s}")
    for precision in args.precision:
        for comp in args.compile:
            for cl in args.channels_last:
                r = measure(cfg, precision, comp == "on", cl == "on", args.steps, args.warmup, args.device)
                r.update(config=args.config, machine=machine, torch=torch.__version__)
                print(f"{precision:>9s} {comp:>7s} {cl:>5s} {r['batch']:5d} {r['s_per_step']:8.3f} {r['images_per_s']:8.1f}")
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
