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
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT_FORMAT, atomic_save, model_config, read_checkpoint
from .data import EpochSampler
from .ema import EMA
from .images import plot_curve, save_grid
from .losses import ImprovedConsistencyTraining
from .model import EDMDenoiser
from .sampling import default_sigmas, sample
from .solvers import edm_sampler
from .utils import resolve_device


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
        ema_warmup: bool = True,  # decay min(ema_decay, (1 + k) / (10 + k)) at update k: see sampling_ema_decay()
        grad_clip: float = 1.0,
        warmup_steps: int = 0,
        lr_schedule: str = "constant",  # CM/iCT: constant; "cosine" decays to 5% over total_steps (short runs)
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
        compile: bool = False,
        channels_last: bool = False,
        config: dict[str, Any] | None = None,
    ):
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.device = resolve_device(device)
        # Under torchrun (torch.distributed initialised) every rank runs this; rank 0 alone logs, samples and saves.
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.is_main = self.rank == 0
        self.model = model.to(self.device)
        self.model_config = model_config(self.model)
        self.train_model: nn.Module = self.model
        if self.world_size > 1:
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, EpochSampler) and (sampler.world_size, sampler.rank) != (self.world_size, self.rank):
                raise ValueError(f"the loader is not sharded for rank {self.rank} of {self.world_size}: build it with "
                                 "rank= and world_size= (consistency.data loaders take both)")
            # DDP broadcasts rank 0's weights, so every rank starts (and, averaging gradients, stays) identical.
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index or 0] if self.device.type == "cuda" else None)
        self.channels_last = channels_last
        if channels_last:  # NHWC convolutions: faster with tensor cores on GPUs
            self.model.to(memory_format=torch.channels_last)
        if compile:  # the compiled module shares the weights; checkpoints keep the plain model's keys
            self.train_model = torch.compile(self.train_model)
        # Each rank draws its own noise; a single process keeps the plain seed.
        torch.manual_seed(seed + 1_000_003 * self.rank)
        self.loader = loader
        self.loss = loss if loss is not None else ImprovedConsistencyTraining()
        self.lr, self.warmup_steps, self.grad_clip, self.lr_schedule = lr, warmup_steps, grad_clip, lr_schedule
        self.total_steps = total_steps
        self.precision = precision
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.sample_every, self.checkpoint_every, self.log_every = sample_every, checkpoint_every, log_every
        self.sample_steps, self.num_sample_images = tuple(sample_steps), num_sample_images
        self.seed, self.progress = seed, progress
        self.extra_config = dict(config or {})

        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=betas)
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
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
            "ema_decay": self.ema_decay,
            "ema_warmup": self.ema_warmup,
            "grad_clip": self.grad_clip,
            "warmup_steps": self.warmup_steps,
            "lr_schedule": self.lr_schedule,
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(self.device, non_blocking=True) if (y is not None and self.model.net.num_classes) else None
        return x, y

    def _train_step(self, batch: Any) -> torch.Tensor:
        x, y = self._split_batch(batch)
        total = self.total_steps or 1
        if self.warmup_steps or self.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = self.current_lr()
        self.model.train()
        target = self.target if self.target is not None else self.model  # the unwrapped model: no DDP hooks, no grad
        with self._autocast():
            loss = self.loss(self.train_model, target, x, step=self.step_count, total_steps=total, class_labels=y).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        decay = self.loss.target_decay(self.step_count, total)
        if self.target is not None:
            self.target.update(self.model, decay)
        self.ema.update(self.model, self.sampling_ema_decay())
        self.step_count += 1
        return loss.detach()

    def sampling_ema_decay(self) -> float:
        """The sampling EMA's decay for the update after step `step_count`.

        With ema_warmup (the default) it is min(ema_decay, (1 + k) / (10 + k)), the warm-up of TensorFlow's and
        diffusers' EMA: a fixed 0.999 over a 1,000-step run would still hold 0.999^1000 = 37% of the initial weights
        (random ones, or a CD student's teacher weights), while the warm-up averages over roughly the last 10% of the
        steps until it reaches ema_decay (0.999 at k = 8,991).
        """
        if not self.ema_warmup:
            return self.ema_decay
        return min(self.ema_decay, (1 + self.step_count) / (10 + self.step_count))

    def current_lr(self) -> float:
        """The learning rate of the next step: linear warm-up, then constant or cosine decay to 5% at total_steps."""
        lr = self.lr * min(1.0, (self.step_count + 1) / self.warmup_steps) if self.warmup_steps else self.lr
        if self.lr_schedule == "cosine" and self.total_steps:
            progress = min(self.step_count / self.total_steps, 1.0)
            lr *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
        return lr

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
        # and fix total_steps from that speed, keeping 5% of the budget for sampling and checkpoints.
        calibrating = self.total_steps is None
        calibrate_from = self.step_count + 3
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config, indent=2, default=str))

        batch_size = getattr(self.loader, "batch_size", None) or 1
        bar = tqdm(total=None if math.isinf(end_step) else int(end_step), initial=self.step_count,
                   disable=not (self.progress and self.is_main), dynamic_ncols=True, desc="train")
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
                left = 0.95 * (deadline - time.monotonic())
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
                if not self.progress and self.is_main and self.history["loss"]:  # a log line in place of the progress bar
                    print(f"step {self.step_count}/{self.total_steps} loss {self.history['loss'][-1]:.4g} "
                          f"{(self.step_count - start_step) * batch_size / (time.monotonic() - start_time):.0f} img/s",
                          flush=True)
            if self.out_dir is not None and self.is_main and self.sample_every and self.step_count % self.sample_every == 0:
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
        if self.out_dir is not None and self.is_main:
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
        """Sample grids from a fixed seed; class-conditional models get one row per class."""
        n, nrow, labels = self.num_sample_images, None, None
        classes = self.model.net.num_classes
        if classes:
            nrow = max(1, n // classes)
            n, labels = classes * nrow, torch.arange(classes).repeat_interleave(nrow)
        for k in self.sample_steps:
            images = self.sample(n, steps=k, class_labels=labels)
            save_grid(images, self.out_dir / "samples" / f"{tag}_{k}step.png", nrow=nrow)

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
            "rng_cpu": self._gather(torch.get_rng_state()),
            "rng_cuda": self._gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else [],
        }

    def _gather(self, state: torch.Tensor) -> list[torch.Tensor]:
        """One RNG state per rank (a collective under torchrun: every rank must call save())."""
        if self.world_size == 1:
            return [state]
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the whole training state atomically (default: out_dir/checkpoint.pt)."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("no path given and the trainer has no out_dir")
            path = self.out_dir / "checkpoint.pt"
        state = self.state_dict()  # every rank takes part (RNG gathering); rank 0 writes
        if self.is_main:
            atomic_save(state, path)
        if self.world_size > 1:
            dist.barrier()
        return Path(path)

    def load(self, path: str | os.PathLike) -> "ConsistencyTrainer":
        """Restore a checkpoint written by save(): weights, EMAs, optimizer, step, RNG. The run then continues exactly."""
        ckpt = read_checkpoint(path)
        if ckpt["model_config"] != self.model_config:
            diff = {k: (ckpt["model_config"].get(k), v) for k, v in self.model_config.items() if ckpt["model_config"].get(k) != v}
            raise ValueError(f"checkpoint {path} holds a different model (checkpoint vs this one: {diff}); "
                             "build the model with the checkpoint's settings or start a new run")
        saved_loss = ckpt.get("config", {}).get("loss")
        loss = json.loads(json.dumps(self.config["loss"], default=str))
        # Keys only one side has (a setting added to the config after the checkpoint was written) are not compared.
        diff = {k: (v, loss[k]) for k, v in (saved_loss or {}).items() if k in loss and v != loss[k]}
        if diff:
            warnings.warn(f"checkpoint {path} was trained with another loss (checkpoint vs this run: {diff}); the run "
                          "continues with this one. To continue it unchanged, give the flags it was started with (its "
                          "config.json lists them)", stacklevel=2)
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
        if len(ckpt["rng_cpu"]) == self.world_size:
            torch.set_rng_state(ckpt["rng_cpu"][self.rank])
            if self.device.type == "cuda" and len(ckpt["rng_cuda"]) == self.world_size:
                torch.cuda.set_rng_state(ckpt["rng_cuda"][self.rank], self.device)
        else:  # the weights and step carry over; the noise stream cannot
            warnings.warn(f"checkpoint {path} was written by {len(ckpt['rng_cpu'])} process(es) and this run has "
                          f"{self.world_size}: training continues, but not bit for bit (RNG reseeded)")
            torch.manual_seed(self.seed + self.step_count + 1_000_003 * self.rank)
        return self
