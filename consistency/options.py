"""TrainerOptions: how the trainer optimises and what it records, the one list of its settings.

Every field is a keyword of ConsistencyTrainer (`ConsistencyTrainer(model, loader, lr=1e-3)`), a field of the command
lines' RunConfig (which extends this class), and a key a preset may override; config.json records them all
(dataclasses.asdict). Adding a trainer setting is one field here: the trainer, the record, the presets and (with one
add_argument line) the command line follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass
class TrainerOptions:
    """How the trainer optimises and what it records: the one list of its settings (config.json records all of them)."""

    lr: float = 1e-4  # Adam's learning rate (CM and iCT use 1e-4 to 4e-4)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's
    lr_schedule: str = "constant"  # "constant" (the papers) or "cosine": decay to 5% of lr at total_steps
    warmup_steps: int = 0  # linear learning-rate warm-up over this many steps, 0 = none
    grad_clip: float = 1.0  # the model's gradients clipped to this norm, 0 = no clipping
    ema_decay: float = 0.9999  # the sampling EMA's (CM); about 0.999 for runs of a few thousand steps
    ema_warmup: bool = True  # the sampling EMA's decay is min(ema_decay, (1 + k) / (10 + k)) at update k
    precision: str = "fp32"  # "bf16": autocast; the loss and both EMAs stay fp32
    compile: bool = False  # torch.compile the online and target passes
    compile_mode: str = "default"  # torch.compile's mode: "reduce-overhead" adds CUDA graphs (small, launch-bound nets)
    channels_last: bool = False  # NHWC memory layout
    seed: int = 0  # the noise stream (rank r adds 1,000,003 r); the weights are the model's, built before
    total_steps: int | None = 10_000  # the run's length, which curricula read; None: fitted to a time budget
    device: str = "auto"  # "auto" = cuda when available, else cpu
    log_every: int = 10  # steps between log lines: the losses reach the host (one sync) this often
    sample_every: int = 1000  # steps between sample grids (with an out_dir), 0 = only at the end
    checkpoint_every: int = 1000  # steps between checkpoints (with an out_dir), 0 = only at the end
    label_dropout: float = 0.0  # share of labels replaced by the null class, for classifier-free guidance (0.1 in
    #                             MeanFlow's code); the network needs one: UNet(..., null_class=True)
    sample_steps: tuple[int, ...] | None = None  # the grids' sampling steps; None: the method's sampler's (1 and 2)
    sample_guidance: tuple[float, ...] | None = None  # guidance scales of the grids, one grid each; None: unguided
    num_sample_images: int = 64  # images per grid (class-conditional: a row per class)
    progress: bool = True  # a progress bar (else a log line at each checkpoint)
    progress_label: str = "train"  # the progress bar's and log lines' label, e.g. a run's phase
    tensorboard: bool = False  # also write TensorBoard logs to out_dir/tensorboard (pip install "...[tb]")
    wandb: bool = False  # also log to Weights & Biases, files under out_dir/wandb (pip install "...[wandb]")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the option."""
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.compile_mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise ValueError(f"compile_mode must be one of torch.compile's modes, got {self.compile_mode!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.log_every < 1 or self.num_sample_images < 1:
            raise ValueError("log_every and num_sample_images must be >= 1")
        for key in ("warmup_steps", "sample_every", "checkpoint_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 = never), got {getattr(self, key)}")

    @classmethod
    def of(cls, settings: Any, **changes: Any) -> "TrainerOptions":
        """The options among an object's attributes (a RunConfig, which has them all), with `changes`."""
        return cls(**{**{f.name: getattr(settings, f.name) for f in fields(cls)}, **changes})


def with_overrides(options: TrainerOptions | None, overrides: dict[str, Any]) -> TrainerOptions:
    """A copy of `options` (default TrainerOptions()) with keyword overrides; an unknown keyword is named."""
    known = {f.name for f in fields(TrainerOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"ConsistencyTrainer got unknown option(s) {', '.join(unknown)}: the options are the fields "
                        f"of TrainerOptions ({', '.join(sorted(known))})")
    return replace(options or TrainerOptions(), **overrides)
