"""Speed as a share of the hardware's limit: FLOPs of a training step (and of one-step sampling) over the device's
measured dense matmul throughput, measured in the same run.

    python benchmarks/mfu.py --preset mnist-cpu --methods ict ect cd scm scd meanflow edm
    python benchmarks/mfu.py --preset mnist-gpu --device cuda --json benchmarks/results/mfu.jsonl

For each method, with the preset's network, batch, precision and compile setting (flags override them):
- FLOPs of one training step, counted with torch.utils.flop_counter.FlopCounterMode on an eager copy: every matmul
  and convolution the step dispatches (the online pass and its backward, the target pass, the teacher's ODE step,
  the JVP of the continuous-time methods). Elementwise work is not counted, as in the usual MFU.
- the step time: the median of --steps timed steps after --warmup steps (compilation included in those), on
  synthetic data served as the trainer serves it (a DeviceLoader: uint8 images on the device), the device
  synchronised around each timed step;
- achieved FLOP/s = FLOPs / step time, and its share of the device's dense matmul throughput *of the same
  precision*, measured here: the best of a few large GEMMs (4096^3 on a GPU, 2048^3 on a CPU) in bf16 and in fp32;
- one-step sampling of a batch from the sampling EMA (EDM's: its 18-level Heun sampler, 35 evaluations), counted
  and timed the same way.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consistency import ConsistencyTrainer, generate  # noqa: E402
from consistency.data import ImageTensors, make_loader, resumable_batches  # noqa: E402
from consistency.methods import needs_teacher, takes_teacher  # noqa: E402
from consistency.presets import PRESETS  # noqa: E402
from consistency.sampling import get_sampler  # noqa: E402
from consistency.utils import resolve_device  # noqa: E402

SHAPES = {"mnist": ((1, 28, 28), 10), "imagenet9": ((3, 64, 64), 9)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """The device's dense matmul throughput in FLOP/s: the best of `repeats` n x n x n products."""
    n = n or (4096 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (kernel selection)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build(preset_name: str, method_name: str, device: torch.device, overrides: dict) -> ConsistencyTrainer:
    """A trainer with the preset's settings for `method_name` on synthetic uint8 data of the preset's shape; methods
    that use a teacher get an untrained EDM one (its cost does not depend on its weights)."""
    preset = PRESETS[preset_name]
    shape, classes = SHAPES[preset_name.split("-")[0]]
    config = preset.config(method=method_name, **overrides)
    torch.manual_seed(0)
    n = config.batch_size * 4
    data = ImageTensors(torch.randint(0, 256, (n, *shape), dtype=torch.uint8), torch.randint(0, classes, (n,)))
    teacher = None
    if needs_teacher(method_name) or (takes_teacher(method_name) and method_name == "ect"):
        edm = preset.method("edm")
        teacher = edm.wrap(preset.unet(shape[0], num_classes=classes, **edm.net_options)).to(device)
    method = preset.method(method_name, teacher)
    model = method.wrap(preset.unet(shape[0], num_classes=classes, **method.net_options))
    loader = make_loader(data, config.batch_size, device=device)
    return ConsistencyTrainer(model, loader, method=method, image_shape=shape,
                              options=config.trainer_options(total_steps=10_000, device=str(device), progress=False))


def measure(preset: str, method: str, device: torch.device, *, steps: int, warmup: int, overrides: dict,
            peaks: dict[str, float]) -> dict:
    trainer = build(preset, method, device, overrides)
    eager = build(preset, method, device, {**overrides, "compile": False})  # FLOPs are counted eagerly
    batches = resumable_batches(eager.loader, 0)
    flops = count_flops(lambda: eager._train_step(next(batches)))
    eager._flush()
    batches = resumable_batches(trainer.loader, 0)
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer._train_step(next(batches))
    trainer._flush()
    sync(device)
    warm = time.perf_counter() - t0
    times = []
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        trainer._train_step(next(batches))
        if (i + 1) % 10 == 0:  # as in a run: the losses reach the host every log_every (10) steps
            trainer._flush()
        sync(device)
        times.append(time.perf_counter() - t0)
    trainer._flush()
    step_s = statistics.median(times)
    precision = trainer.options.precision
    batch = trainer.loader.batch_size
    ema = trainer.ema.module.eval()
    labels = torch.arange(batch) % ema.num_classes if ema.num_classes else None
    sampler = get_sampler(trainer.method.sampler)
    steps = sampler.default_steps[0]  # one step for a consistency model; EDM's Heun over 18 levels (35 NFE)
    sample = lambda: generate(ema, batch, trainer.image_shape, steps=steps, sampler=trainer.method.sampler,  # noqa: E731
                              class_labels=labels, batch_size=batch)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        sample_flops = count_flops(sample)
        sample()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            sample()
        sync(device)
        sample_s = (time.perf_counter() - t0) / 3
    peak = peaks[precision]
    return {"preset": preset, "method": method, "precision": precision, "compile": trainer.options.compile,
            "compile_mode": trainer.options.compile_mode,
            "batch": batch, "params_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
            "flops_per_step": flops, "gflops_per_image": flops / batch / 1e9, "step_s": step_s,
            "images_per_s": batch / step_s, "achieved_tflops": flops / step_s / 1e12,
            "peak_tflops": peak / 1e12, "mfu": flops / step_s / peak, "warmup_s": warm,
            "sample_nfe": sampler.nfe(steps), "sample_gflops_per_image": sample_flops / batch / 1e9,
            "sample_images_per_s": batch / sample_s,
            "sample_mfu": sample_flops / sample_s / peak}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist-cpu", choices=sorted(PRESETS))
    parser.add_argument("--methods", nargs="+", default=["ict"], help="methods to measure (default ict)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, compilation included (default 5)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="override the preset's")
    parser.add_argument("--compile", choices=["on", "off"], help="override the preset's")
    parser.add_argument("--batch-size", type=int, help="override the preset's")
    parser.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile's mode (with --compile on)")
    parser.add_argument("--json", help="append the rows as JSON lines to this file")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    overrides = {k: v for k, v in (("precision", args.precision), ("batch_size", args.batch_size),
                                   ("compile_mode", args.compile_mode)) if v is not None}
    if args.compile:
        overrides["compile"] = args.compile == "on"
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16)}
    print(f"{args.preset} on {machine}, torch {torch.__version__}: dense matmul {peaks['fp32'] / 1e12:.3f} TFLOP/s "
          f"fp32, {peaks['bf16'] / 1e12:.3f} TFLOP/s bf16")
    print(f"{'method':>9s} {'prec':>5s} {'comp':>5s} {'batch':>5s} {'GFLOP/img':>9s} {'ms/step':>8s} {'img/s':>8s} "
          f"{'TFLOP/s':>8s} {'MFU':>6s} {'sample img/s':>12s} {'sample MFU':>10s}")
    rows = []
    for name in args.methods:
        r = measure(args.preset, name, device, steps=args.steps, warmup=args.warmup, overrides=overrides, peaks=peaks)
        r.update(machine=machine, torch=torch.__version__, device=device.type, peak_fp32_tflops=peaks["fp32"] / 1e12,
                 peak_bf16_tflops=peaks["bf16"] / 1e12, date=time.strftime("%Y-%m-%d"))
        print(f"{name:>9s} {r['precision']:>5s} {str(r['compile']):>5s} {r['batch']:5d} {r['gflops_per_image']:9.2f} "
              f"{r['step_s'] * 1000:8.1f} {r['images_per_s']:8.1f} {r['achieved_tflops']:8.3f} {r['mfu']:6.1%} "
              f"{r['sample_images_per_s']:12.0f} {r['sample_mfu']:10.1%}", flush=True)
        rows.append(r)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
        torch._dynamo.reset()
    return rows


if __name__ == "__main__":
    main()
