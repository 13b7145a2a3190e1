"""Named presets: the settings a run starts from on a GPU or a CPU, as overrides of RunConfig (EDM2's config_presets).

    config = MNIST_CPU.config(method="cd", minutes=20)   # RunConfig's defaults, then the preset, then what you give
    MNIST_CPU.batch_size                                 # what the preset sets (or RunConfig's default)

A preset is a dict of RunConfig fields (TrainerOptions' among them), so a new setting needs no change here;
`method_options` holds the hyper-parameters a preset changes from a method's own defaults (the papers'), per method.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .methods import METHODS, Method, build_method, method_options
from .options import TrainerOptions
from .recipe import BUDGETS, RUN_FIELDS, RunConfig
from .unet import UNet
from .utils import cpu_has_fast_bf16

# bf16 autocast doubles training speed on CPUs with native bf16 (AVX512-BF16, AMX); elsewhere it slows things down.
CPU_PRECISION = "bf16" if cpu_has_fast_bf16() else "fp32"
DEFAULTS = {f.name: getattr(RunConfig(), f.name) for f in fields(RunConfig)}


@dataclass(frozen=True)
class Preset:
    """Starting settings for a run: overrides of RunConfig's defaults; the run's own settings override them."""

    name: str
    overrides: dict[str, Any]  # RunConfig fields
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method name

    def __post_init__(self):
        unknown = sorted(set(self.overrides) - RUN_FIELDS)
        if unknown:
            raise ValueError(f"preset {self.name}: {', '.join(unknown)} are not RunConfig fields")

    def __getattr__(self, key: str) -> Any:  # preset.batch_size: the preset's value, else RunConfig's default
        if key.startswith("_") or key in ("name", "overrides", "method_options"):
            raise AttributeError(key)
        if key in self.overrides:
            return self.overrides[key]
        if key in DEFAULTS:
            return DEFAULTS[key]
        raise AttributeError(f"preset {self.name} has no setting {key!r} (the settings are RunConfig's fields)")

    def settings(self) -> dict[str, Any]:
        """The RunConfig fields the preset sets."""
        return dict(self.overrides)

    def config(self, **given: Any) -> RunConfig:
        """A RunConfig from this preset and `given` (which wins; method_options merge option by option)."""
        return merge(self, given)

    def unet(self, in_channels: int, num_classes: int | None = None, **net_options: Any) -> UNet:
        """The preset's network for images with `in_channels` channels (class-conditional with num_classes); pass a
        method's net_options (MeanFlow needs two time inputs)."""
        return UNet(in_channels, base_channels=self.width, channel_mult=self.channel_mult,
                    num_res_blocks=self.num_res_blocks, dropout=self.dropout, num_classes=num_classes, **net_options)

    def method(self, name: str, teacher: Any = None, **options: Any) -> Method:
        """METHODS[name] with the preset's options for it (options given here win)."""
        return build_method(name, teacher, **{**self.method_options.get(name, {}), **options})

    def trainer_options(self) -> dict[str, Any]:
        """The TrainerOptions fields the preset sets, as ConsistencyTrainer keywords (**preset.trainer_options())."""
        trainer = {f.name for f in fields(TrainerOptions)}
        return {k: v for k, v in self.overrides.items() if k in trainer and k != "total_steps"}


def merge(preset: Preset, given: dict[str, Any], *, inherited: dict[str, Any] | None = None,
          inherited_filled: list[str] = (), resuming: bool = False) -> RunConfig:
    """One RunConfig from, strongest first: `given`, `inherited` (a resumed run's own settings), the preset, RunConfig's
    defaults. preset_filled records which settings the preset filled. The run's length: total_steps, else epochs or
    minutes decide, else a resumed run keeps its own, else the preset's."""
    given, inherited = dict(given), dict(inherited or {})
    options = {**inherited.pop("method_options", {}), **given.pop("method_options", {})}
    defaults = {k: v for k, v in preset.overrides.items() if k != "total_steps"}
    settings = {**defaults, **inherited, **given}
    filled = [k for k in defaults if k not in given and k not in inherited] + list(inherited_filled)
    if not any(k in given for k in BUDGETS) and not inherited and not resuming and "total_steps" in preset.overrides:
        settings["total_steps"] = preset.overrides["total_steps"]
        filled.append("total_steps")
    if "channel_mult" in settings:
        settings["channel_mult"] = tuple(settings["channel_mult"])
    method = settings.get("method", DEFAULTS["method"])
    if method not in METHODS:
        raise ValueError(f"--method {method} is unknown: choose one of {', '.join(METHODS)}")
    wrong = sorted(set(options) - method_options(method))
    if wrong:
        raise ValueError(f"--method {method} has no option {', '.join(wrong)} (given as a flag or --method-arg; its "
                         f"options: {', '.join(sorted(method_options(method)))})")
    if "compile" in filled and settings.get("compile") and METHODS[method].uses_jvp:
        settings["compile"] = False  # a preset compiles the network where it pays: not where a JVP pass runs eagerly
    preset_options = {k: v for k, v in preset.method_options.get(method, {}).items() if k not in options}
    filled += [f"method_options.{k}" for k in preset_options]
    unknown = sorted(set(settings) - RUN_FIELDS)
    if unknown:
        raise TypeError(f"unknown run setting(s) {', '.join(unknown)}: the settings are RunConfig's fields")
    return RunConfig(**{**settings, "method_options": {**preset_options, **options}}, preset=preset.name,
                     preset_filled=filled)


# MNIST on a GPU: the papers' constant learning rate and curricula, a full-width UNet, 20k steps.
MNIST_GPU = Preset("mnist-gpu", dict(
    width=64, channel_mult=(1, 2, 2), num_res_blocks=2, dropout=0.1, batch_size=128, lr=2e-4, lr_schedule="constant",
    ema_decay=0.9999, precision="fp32", total_steps=20_000, sample_every=2000, checkpoint_every=2000))
# MNIST on a CPU, tuned so that 20 minutes on two cores give clean one-step digits (docs/results.md): a small UNet, a
# high learning rate with cosine decay, iCT's curriculum stopped at 321 levels instead of 1281, N = 10 teacher steps
# for distillation instead of CM's 18 (fewer links to propagate through in ~1,000 steps), sCM's tangent warm-up over
# a quarter of the run (the paper's 10k iterations are more than the whole run), and for MeanFlow the CIFAR-10 code's
# 75% of pairs with r != t and weighting power 0.75, with the paper's time distribution.
MNIST_CPU = Preset("mnist-cpu", dict(
    width=32, channel_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, batch_size=64, lr=1e-3, lr_schedule="cosine",
    ema_decay=0.999, precision=CPU_PRECISION, compile=True, total_steps=4000, sample_every=500,
    checkpoint_every=500),
    method_options={"ict": {"s1": 320}, "cd": {"num_scales": 10}, "scm": {"warmup": 0.25}, "scd": {"warmup": 0.25},
                    "meanflow": {"ratio": 0.75, "p": 0.75}})
# ImageNet-9 at 64 px on GPUs: 64-32-16-8 with attention at 8 px, bf16 and torch.compile (on an H100, 1,318 img/s
# against 671 for bf16 alone and 545 for fp32, after about 90 s of compilation: docs/gpu.md).
IMAGENET9_GPU = Preset("imagenet9-gpu", dict(
    width=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, dropout=0.1, batch_size=256, lr=2e-4,
    lr_schedule="constant", ema_decay=0.9999, precision="bf16", total_steps=200_000, sample_every=5000,
    checkpoint_every=5000, compile=True))
# ImageNet-9 (or a folder) on a CPU: a small UNet, only to try the pipeline.
IMAGENET9_CPU = Preset("imagenet9-cpu", dict(
    width=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, dropout=0.0, batch_size=32, lr=4e-4, lr_schedule="cosine",
    ema_decay=0.999, precision=CPU_PRECISION, total_steps=2000, sample_every=500, checkpoint_every=500),
    method_options={"ict": {"s1": 320}})

PRESETS = {p.name: p for p in (MNIST_GPU, MNIST_CPU, IMAGENET9_GPU, IMAGENET9_CPU)}


def preset_for(data: str, device_type: str) -> Preset:
    """The preset for a data set family ('mnist' or 'imagenet9') on a device type ('cuda' or 'cpu')."""
    return PRESETS[f"{data}-{'gpu' if device_type == 'cuda' else 'cpu'}"]
