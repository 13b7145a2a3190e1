"""Training throughput (images/s) and peak GPU memory of the ConsistencyTrainer for a named preset, on this machine.

    python benchmarks/throughput.py                      # main_imagenet9.py's GPU preset, 64 px, 9 classes
    python benchmarks/throughput.py --config mnist-cpu   # main.py's CPU preset (class-conditional, as main.py)
    python benchmarks/throughput.py --precision fp32 bf16 --compile off on --channels-last off on --steps 20
    python benchmarks/throughput.py --config mnist-cpu --precision bf16 --methods ict ect cd scm scd meanflow edm

Each configuration is a preset of consistency.presets trained as the scripts train it (iCT with the preset's options,
class-conditional); --batch overrides its batch size. Synthetic data of the right shape stands in for the dataset
(data loading is not measured: on a GPU give the real run enough --num-workers). Each setting runs --warmup steps
(compilation included), then times --steps steps. Results are printed and appended as JSON lines to --json.
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

from consistency import ConsistencyTrainer, make_loader  # noqa: E402
from consistency.data import resumable_batches  # noqa: E402
from consistency.methods import needs_teacher  # noqa: E402
from consistency.presets import IMAGENET9_CPU, IMAGENET9_GPU, MNIST_CPU, MNIST_GPU  # noqa: E402

# name: (preset, image shape, classes): the data each script trains on
CONFIGS = {
    "imagenet9-64": (IMAGENET9_GPU, (3, 64, 64), 9),
    "imagenet9-64-cpu": (IMAGENET9_CPU, (3, 64, 64), 9),
    "mnist-gpu": (MNIST_GPU, (1, 28, 28), 10),
    "mnist-cpu": (MNIST_CPU, (1, 28, 28), 10),
}


def measure(config: str, batch: int | None, precision: str, compile: bool, channels_last: bool, steps: int,
            warmup: int, device: str, method_name: str = "ict") -> dict:
    preset, shape, classes = CONFIGS[config]
    batch = batch or preset.batch_size
    torch.manual_seed(0)
    n = batch * 4
    data = TensorDataset(torch.rand(n, *shape) * 2 - 1, torch.randint(0, classes, (n,)))
    # a method that starts from or distils a teacher gets an (untrained) EDM one: its cost does not depend on weights
    edm = preset.method("edm")
    teacher = edm.wrap(preset.unet(shape[0], num_classes=classes, **edm.net_options)) if needs_teacher(method_name) \
        or method_name == "ect" else None
    method = preset.method(method_name, teacher)
    model = method.wrap(preset.unet(shape[0], num_classes=classes, **method.net_options))
    trainer = ConsistencyTrainer(model, make_loader(data, batch), method=method, total_steps=10_000, device=device,
                                 precision=precision, compile=compile, channels_last=channels_last, progress=False)
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batches = resumable_batches(trainer.loader, trainer.step_count)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer._train_step(next(batches))
    trainer._flush()  # as in a run: the losses reach the host every log_every (10) steps
    sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        trainer._train_step(next(batches))
        if (i + 1) % 10 == 0:
            trainer._flush()
    trainer._flush()
    sync()
    dt = time.perf_counter() - t0
    return {"method": method_name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "precision": precision, "compile": compile,
            "channels_last": channels_last, "batch": batch, "s_per_step": dt / steps,
            "images_per_s": steps * batch / dt, "warmup_s": warm,
            "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="imagenet9-64", choices=sorted(CONFIGS))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--channels-last", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    parser.add_argument("--methods", nargs="+", default=["ict"], help="training methods to time (default ict)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if torch.cuda.is_available() and args.device != "cpu":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{args.config} on {machine}, torch {torch.__version__}")
    print(f"{'method':>8s} {'precision':>9s} {'compile':>7s} {'NHWC':>5s} {'batch':>5s} {'s/step':>8s} {'img/s':>8s} "
          f"{'vs first':>8s} {'peak GiB':>8s}")
    rows = []
    for name in args.methods:
        for precision in args.precision:
            for comp in args.compile:
                for cl in args.channels_last:
                    r = measure(args.config, args.batch, precision, comp == "on", cl == "on", args.steps, args.warmup,
                                args.device, name)
                    r.update(config=args.config, machine=machine, torch=torch.__version__)
                    r["relative_step_cost"] = r["s_per_step"] / (rows[0]["s_per_step"] if rows else r["s_per_step"])
                    peak = f"{r['peak_memory_GiB']:8.2f}" if r["peak_memory_GiB"] is not None else f"{'-':>8s}"
                    print(f"{name:>8s} {precision:>9s} {comp:>7s} {cl:>5s} {r['batch']:5d} {r['s_per_step']:8.3f} "
                          f"{r['images_per_s']:8.1f} {r['relative_step_cost']:8.2f} {peak}", flush=True)
                    rows.append(r)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(r) + "\n")
    return rows


if __name__ == "__main__":
    main()
