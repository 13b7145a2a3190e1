"""ConsistencyTrainer: the notebook API. Owns the optimizer, the EMAs, precision, checkpoints and logging.

    trainer = ConsistencyTrainer(model, loader, loss=ImprovedConsistencyTraining(), total_steps=10_000, out_dir="runs/x")
    trainer.train()
    images = trainer.sample(64, steps=1)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import EpochSampler
from .ema import EMA
from .images import plot_curve, save_grid
from .losses import ImprovedConsistencyTraining
from .model import ConsistencyModel, EDMDenoiser
from .sampling import default_sigmas, sample
from .solvers import edm_sampler
from .unet import UNet

CHECKPOINT_FORMAT = "consistency-checkpoint-v1"
WRAPPERS = {"ConsistencyModel": ConsistencyModel, "EDMDenoiser": EDMDenoiser}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU: use --device cpu (or auto)")
    return device


def model_config(model: nn.Module) -> dict[str, Any]:
    """Plain-data description of a preconditioned model, enough to rebuild it (stored in checkpoints)."""
    if not isinstance(model, tuple(WRAPPERS.values())) or not hasattr(model.net, "config"):
        raise TypeError("expected a ConsistencyModel or EDMDenoiser around a consistency.UNet")
    return {
        "wrapper": type(model).__name__,
        "net": dict(model.net.config),
        "sigma_data": model.sigma_data,
        "sigma_min": model.sigma_min,
        "sigma_max": model.sigma_max,
    }


def build_model(config: dict[str, Any]) -> nn.Module:
    """Inverse of model_config()."""
    net_cfg = dict(config["net"])
    net_cfg["channel_mult"] = tuple(net_cfg["channel_mult"])
    wrapper = WRAPPERS[config["wrapper"]]
    return wrapper(UNet(**net_cfg), sigma_data=config["sigma_data"], sigma_min=config["sigma_min"], sigma_max=config["sigma_max"])


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a consistency checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return ckpt


def load_model(path: str | os.PathLike, which: str = "ema", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network saved in a checkpoint with the chosen weights ('ema' for sampling, or 'model'), in eval mode."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt["model_config"])
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    model.load_state_dict(ckpt[which])
    return model.to(resolve_device(device)).eval()


def _ema_state(ema: EMA) -> dict[str, torch.Tensor]:
    """The averaged weights with the model's own key names (loadable into a bare model)."""
    return ema.module.state_dict()


class ConsistencyTrainer:
    """Trains a ConsistencyModel (or, with an EDM loss, a teacher denoiser) on batches from `loader`.

    The loss object decides the method: ImprovedConsistencyTraining (default), ConsistencyTraining, or a distillation
    loss. Batches may be tensors, (images,) or (images, labels); labels are used when the UNet has num_classes.
    """

    def __init__(
        self,
        model: nn.Module,
        loader: Any,
        *,
        loss: Any = None,
        lr: float = 1e-4,  # CM/iCT use 1e-4 to 4e-4 with Adam
        betas: tuple[float, float] = (0.9, 0.999),
        total_steps: int | None = 10_000,
        ema_decay: float = 0.9999,  # CM's sampling EMA; use ~0.999 for runs of a few thousand steps
        grad_clip: float = 1.0,
        warmup_steps: int = 0,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        out_dir: str | os.PathLike | None = None,
        sample_every: int = 1000,
        checkpoint_every: int = 1000,
        log_every: int = 10,
        sample_steps: tuple[int, ...] = (1, 2),
        num_sample_images: int = 64,
        seed: int = 0,
        progress: bool = True,
        config: dict[str, Any] | None = None,
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.device = resolve_device(device)
        torch.manual_seed(seed)
        self.model = model.to(self.device)
        self.model_config = model_config(self.model)
        self.loader = loader
        self.loss = loss if loss is not None else ImprovedConsistencyTraining()
        self.lr, self.warmup_steps, self.grad_clip = lr, warmup_steps, grad_clip
        self.total_steps = total_steps
        self.precision = precision
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.sample_every, self.checkpoint_every, self.log_every = sample_every, checkpoint_every, log_every
        self.sample_steps, self.num_sample_images = tuple(sample_steps), num_sample_images
        self.seed, self.progress = seed, progress
        self.extra_config = dict(config or {})

        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=betas)
        self.ema = EMA(self.model, ema_decay)
        # CM's theta- is an EMA copy; iCT's is the online network under stop-gradient (target_decay() is None).
        first_decay = self.loss.target_decay(0, total_steps or 1)
        self.target = EMA(self.model, first_decay) if first_decay is not None else None
        self.step_count = 0
        self.history: dict[str, list] = {"step": [], "loss": []}
        self._batches_per_epoch = len(loader)
        if self._batches_per_epoch == 0:
            raise ValueError("the data loader yields no batches: the dataset is smaller than one batch")

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict[str, Any]:
        return {
            "model": self.model_config,
            "loss": {"name": type(self.loss).__name__, **{k: v for k, v in vars(self.loss).items() if isinstance(v, (int, float, str))}},
            "lr": self.lr,
            "total_steps": self.total_steps,
            "ema_decay": self.ema.decay,
            "grad_clip": self.grad_clip,
            "warmup_steps": self.warmup_steps,
            "precision": self.precision,
            "seed": self.seed,
            **self.extra_config,
        }

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ one step
    def _split_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, (list, tuple)):
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            x, y = batch, None
        if not torch.is_tensor(x) or x.ndim != 4:
            raise ValueError(f"expected image batches of shape (B, C, H, W), got {getattr(x, 'shape', type(x))}")
        if x.shape[1] != self.model.net.in_channels:
            raise ValueError(f"the data has {x.shape[1]} channels but the model expects {self.model.net.in_channels}")
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True) if (y is not None and self.model.net.num_classes) else None
        return x, y

    def _train_step(self, batch: Any) -> torch.Tensor:
        x, y = self._split_batch(batch)
        total = self.total_steps or 1
        if self.warmup_steps:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * min(1.0, (self.step_count + 1) / self.warmup_steps)
        self.model.train()
        target = self.target if self.target is not None else self.model
        with self._autocast():
            loss = self.loss(self.model, target, x, step=self.step_count, total_steps=total, class_labels=y).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        decay = self.loss.target_decay(self.step_count, total)
        if self.target is not None:
            self.target.update(self.model, decay)
        self.ema.update(self.model)
        self.step_count += 1
        return loss.detach()

    def step(self, batch: Any) -> float:
        """One optimisation step on `batch`; returns the loss. Raises FloatingPointError on a non-finite loss."""
        loss = self._train_step(batch).item()
        self._check_finite(loss)
        return loss

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            where = f" The last checkpoint in {self.out_dir} is untouched." if self.out_dir else ""
            raise FloatingPointError(
                f"the loss became {loss} at step {self.step_count}. Lower the learning rate (now {self.lr}), keep "
                f"grad clipping on, and check that the data is in [-1, 1].{where}"
            )

    # ------------------------------------------------------------------ data
    def _batches(self) -> Iterator[Any]:
        """Endless batches, starting where step_count says (so a resumed run sees the same data)."""
        epoch, offset = divmod(self.step_count, self._batches_per_epoch)
        sampler = getattr(self.loader, "sampler", None)
        while True:
            skip = offset
            if isinstance(sampler, EpochSampler):
                sampler.set_epoch(epoch, offset * self.loader.batch_size)
                skip = 0
            elif hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            # A loader without its own generator seeds its workers from the global RNG: keep that out of the
            # training step's random stream.
            with torch.random.fork_rng(devices=[]):
                iterator = iter(self.loader)
            yield from itertools.islice(iterator, skip, None)
            epoch, offset = epoch + 1, 0

    # ------------------------------------------------------------------ the loop
    def train(self, steps: int | None = None, *, minutes: float | None = None) -> dict[str, list]:
        """Train until `steps` more steps (default: up to total_steps) or `minutes` of wall clock have passed.

        With a time budget and no total_steps, total_steps (which sets the curriculum N(k)) is estimated from the
        speed of the first steps and then fixed. Saves, samples and plots at the end when out_dir is set.
        """
        if self.total_steps is None and minutes is None and steps is None:
            raise ValueError("give total_steps, steps or minutes: the curriculum needs to know the run's length")
        end_step = self.step_count + steps if steps is not None else (self.total_steps or math.inf)
        deadline = time.monotonic() + 60 * minutes if minutes is not None else math.inf
        start_time, start_step = time.monotonic(), self.step_count
        # Without total_steps, time the steps after a short warm-up (25 steps, or 5% of the budget if that comes first)
        # and fix total_steps from that speed, keeping 3% of the budget for sampling and checkpoints.
        calibrating = self.total_steps is None
        calibrate_from = self.step_count + 3
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config, indent=2, default=str))

        batch_size = getattr(self.loader, "batch_size", None) or 1
        bar = tqdm(total=None if math.isinf(end_step) else int(end_step), initial=self.step_count,
                   disable=not self.progress, dynamic_ncols=True, desc="train")
        running, count, tick = torch.zeros((), device=self.device), 0, time.monotonic()
        batches = self._batches()
        while self.step_count < end_step and time.monotonic() < deadline:
            running += self._train_step(next(batches))
            count += 1
            if calibrating and self.step_count == calibrate_from:
                calibrate_time = time.monotonic()
            elif calibrating and self.step_count > calibrate_from and (
                self.step_count >= calibrate_from + 25 or time.monotonic() - start_time > 0.05 * (deadline - start_time)
            ):
                per_step = (time.monotonic() - calibrate_time) / (self.step_count - calibrate_from)
                left = 0.97 * (deadline - time.monotonic())
                self.total_steps = self.step_count + max(1, int(left / per_step))
                end_step = min(end_step, self.total_steps)
                bar.total = int(end_step)
                calibrating = False
            bar.update(1)
            if count == self.log_every or self.step_count >= end_step:
                mean = (running / count).item()
                self._check_finite(mean)
                now = time.monotonic()
                self.history["step"].append(self.step_count)
                self.history["loss"].append(mean)
                bar.set_postfix(loss=f"{mean:.4g}", N=self.loss.num_scales(self.step_count, self.total_steps or 1),
                                img_s=f"{count * batch_size / (now - tick):.0f}")
                running.zero_()
                count, tick = 0, now
            if self.step_count % self.checkpoint_every == 0:
                if self.out_dir is not None:
                    self.save()
                if not self.progress and self.history["loss"]:  # a log line in place of the progress bar
                    print(f"step {self.step_count}/{self.total_steps} loss {self.history['loss'][-1]:.4g} "
                          f"{(self.step_count - start_step) * batch_size / (time.monotonic() - start_time):.0f} img/s",
                          flush=True)
            if self.out_dir is not None and self.sample_every and self.step_count % self.sample_every == 0:
                self.save_samples(f"step{self.step_count:07d}")
        bar.close()
        if self.total_steps is None:  # the budget ran out before the speed was measured
            self.total_steps = self.step_count
        if count:
            self._check_finite((running / count).item())
        elapsed = time.monotonic() - start_time
        self.last_run = {"steps": self.step_count - start_step, "seconds": elapsed,
                         "images_per_s": (self.step_count - start_step) * batch_size / max(elapsed, 1e-9)}
        if self.out_dir is not None:
            self.save()
            self.save_samples("final")
            plot_curve(self.history["step"], self.history["loss"], self.out_dir / "loss_curve.png")
            (self.out_dir / "run.json").write_text(json.dumps({"step": self.step_count, **self.last_run}, indent=2))
        return self.history

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        steps: int = 1,
        *,
        sigmas: list[float] | None = None,
        seed: int | None = 0,
        class_labels: torch.Tensor | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """n images in [-1, 1] from the sampling EMA (or the online network), with K = steps evaluations.

        For an EDMDenoiser (a teacher) `steps` is the number of Karras levels of EDM's Heun sampler (2 steps - 1 NFE).
        """
        net = self.ema.module if use_ema else self.model
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if class_labels is None and self.model.net.num_classes:
            class_labels = torch.arange(n) % self.model.net.num_classes
        if class_labels is not None:
            class_labels = class_labels.to(self.device)
        was_training = net.training
        net.eval()
        shape = (n, self.model.net.in_channels, *self._image_size())
        if isinstance(self.model, EDMDenoiser):  # a diffusion teacher: EDM's Heun sampler over `steps` levels
            images = edm_sampler(net, shape, steps, generator=generator, class_labels=class_labels,
                                 sigma_min=self.model.sigma_min, sigma_max=self.model.sigma_max)
        else:
            images = sample(net, shape, sigmas or default_sigmas(steps, self.model.sigma_min, self.model.sigma_max),
                            generator=generator, class_labels=class_labels)
        net.train(was_training)
        return images.clamp(-1, 1)

    def _image_size(self) -> tuple[int, int]:
        if not hasattr(self, "_size"):
            with torch.random.fork_rng(devices=[]):
                x, _ = self._split_batch(next(iter(self.loader)))
            self._size = tuple(x.shape[-2:])
        return self._size

    def save_samples(self, tag: str) -> None:
        for k in self.sample_steps:
            save_grid(self.sample(self.num_sample_images, steps=k), self.out_dir / "samples" / f"{tag}_{k}step.png")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model_config,
            "image_shape": [self.model.net.in_channels, *self._image_size()],
            "config": json.loads(json.dumps(self.config, default=str)),
            "model": self.model.state_dict(),
            "ema": _ema_state(self.ema),
            "target": _ema_state(self.target) if self.target is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "total_steps": self.total_steps,
            "history": self.history,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the whole training state atomically (default: out_dir/checkpoint.pt)."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("no path given and the trainer has no out_dir")
            path = self.out_dir / "checkpoint.pt"
        atomic_save(self.state_dict(), path)
        return Path(path)

    def load(self, path: str | os.PathLike) -> "ConsistencyTrainer":
        """Restore a checkpoint written by save(): weights, EMAs, optimizer, step, RNG. The run then continues exactly."""
        ckpt = read_checkpoint(path)
        if ckpt["model_config"] != self.model_config:
            diff = {k: (ckpt["model_config"].get(k), v) for k, v in self.model_config.items() if ckpt["model_config"].get(k) != v}
            raise ValueError(f"checkpoint {path} holds a different model (checkpoint vs this one: {diff}); "
                             "build the model with the checkpoint's settings or start a new run")
        self.model.load_state_dict(ckpt["model"])
        self.ema.module.load_state_dict(ckpt["ema"])
        if self.target is not None:
            if ckpt["target"] is None:
                raise ValueError(f"checkpoint {path} has no target network; it was trained with a loss without one")
            self.target.module.load_state_dict(ckpt["target"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step_count = ckpt["step"]
        self.total_steps = ckpt["total_steps"]
        self.history = {k: list(v) for k, v in ckpt["history"].items()}
        torch.set_rng_state(ckpt["rng_cpu"])
        if self.device.type == "cuda" and ckpt["rng_cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
        return self
