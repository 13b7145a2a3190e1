"""Named presets: the settings a run starts from on a GPU or a CPU, shared by the scripts, benchmarks and examples.

Every field is overridden by the flag of the same name. `method_options` holds the method hyper-parameters a preset
changes from the method's own defaults (the papers'), per method name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .methods import Method, build_method
from .unet import UNet
from .utils import cpu_has_fast_bf16

# bf16 autocast doubles training speed on CPUs with native bf16 (AVX512-BF16, AMX); elsewhere it slows things down.
CPU_PRECISION = "bf16" if cpu_has_fast_bf16() else "fp32"


@dataclass(frozen=True)
class Preset:
    """Starting settings for a run; the run's flags override any of them."""

    name: str
    width: int  # UNet base channels
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    dropout: float
    batch_size: int  # the global batch (split over torchrun's processes)
    lr: float
    lr_schedule: str
    ema_decay: float  # the sampling EMA's
    precision: str
    steps: int  # the run's length when no --steps, --epochs or --minutes is given
    sample_every: int
    checkpoint_every: int
    compile: bool = False  # torch.compile the network
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The fields a flag can override (all but name and method_options)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "method_options")}

    def unet(self, in_channels: int, num_classes: int | None = None, **net_options: Any) -> UNet:
        """The preset's network for images with `in_channels` channels (class-conditional with num_classes); pass a
        method's net_options (MeanFlow needs two time inputs)."""
        return UNet(in_channels, base_channels=self.width, channel_mult=self.channel_mult,
                    num_res_blocks=self.num_res_blocks, dropout=self.dropout, num_classes=num_classes, **net_options)

    def method(self, name: str, teacher: Any = None, **options: Any) -> Method:
        """METHODS[name] with the preset's options for it (options given here win)."""
        return build_method(name, teacher, **{**self.method_options.get(name, {}), **options})

    def trainer_options(self) -> dict[str, Any]:
        """The ConsistencyTrainer keywords the preset sets."""
        return dict(lr=self.lr, lr_schedule=self.lr_schedule, ema_decay=self.ema_decay, precision=self.precision,
                    sample_every=self.sample_every, checkpoint_every=self.checkpoint_every, compile=self.compile)


# MNIST on a GPU: the papers' constant learning rate and curricula, a full-width UNet, 20k steps.
MNIST_GPU = Preset("mnist-gpu", width=64, channel_mult=(1, 2, 2), num_res_blocks=2, dropout=0.1, batch_size=128,
                   lr=2e-4, lr_schedule="constant", ema_decay=0.9999, precision="fp32", steps=20_000,
                   sample_every=2000, checkpoint_every=2000)
# MNIST on a CPU, tuned so that 20 minutes on two cores give clean one-step digits (README): a small UNet, a high
# learning rate with cosine decay, iCT's curriculum stopped at 321 levels instead of 1281, N = 10 teacher steps
# for distillation instead of CM's 18 (fewer links to propagate through in ~1,000 steps), sCM's tangent warm-up over
# a quarter of the run (the paper's 10k iterations are more than the whole run), and for MeanFlow the CIFAR-10 code's
# 75% of pairs with r != t and weighting power 0.75, with the paper's time distribution.
MNIST_CPU = Preset("mnist-cpu", width=32, channel_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, batch_size=64,
                   lr=1e-3, lr_schedule="cosine", ema_decay=0.999, precision=CPU_PRECISION, steps=4000,
                   sample_every=500, checkpoint_every=500,
                   method_options={"ict": {"s1": 320}, "cd": {"num_scales": 10}, "scm": {"warmup": 0.25},
                                   "scd": {"warmup": 0.25}, "meanflow": {"ratio": 0.75, "p": 0.75}})
# ImageNet-9 at 64 px on GPUs: 64-32-16-8 with attention at 8 px, bf16 and torch.compile (on an H100, 1,318 img/s
# against 671 for bf16 alone and 545 for fp32, after about 90 s of compilation: README, benchmarks/gpu_check.sh).
IMAGENET9_GPU = Preset("imagenet9-gpu", width=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, dropout=0.1,
                       batch_size=256, lr=2e-4, lr_schedule="constant", ema_decay=0.9999, precision="bf16",
                       steps=200_000, sample_every=5000, checkpoint_every=5000, compile=True)
# ImageNet-9 (or a folder) on a CPU: a small UNet, only to try the pipeline.
IMAGENET9_CPU = Preset("imagenet9-cpu", width=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, dropout=0.0,
                       batch_size=32, lr=4e-4, lr_schedule="cosine", ema_decay=0.999, precision=CPU_PRECISION,
                       steps=2000, sample_every=500, checkpoint_every=500, method_options={"ict": {"s1": 320}})

PRESETS = {p.name: p for p in (MNIST_GPU, MNIST_CPU, IMAGENET9_GPU, IMAGENET9_CPU)}


def preset_for(data: str, device_type: str) -> Preset:
    """The preset for a data set family ('mnist' or 'imagenet9') on a device type ('cuda' or 'cpu')."""
    return PRESETS[f"{data}-{'gpu' if device_type == 'cuda' else 'cpu'}"]
