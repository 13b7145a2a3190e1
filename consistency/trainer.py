"""ConsistencyTrainer: the notebook API. Owns the optimizer, the EMAs, precision, checkpoints and logging.

    trainer = ConsistencyTrainer(model, loader, method=ImprovedConsistencyTraining(), total_steps=10_000, out_dir="runs/x")
    trainer.train()
    images = trainer.sample(64, steps=1)

It trains any model with the documented call model(x, sigma, class_labels) (consistency.model) with any method
(consistency.methods.Method); it never asks which.
"""

from __future__ import annotations

import contextlib
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

from .checkpoint import (
    Checkpoint,
    check_resumable,
    model_spec,
    read_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from .data import EpochSampler, resumable_batches
from .ema import EMA
from .images import save_grid
from .methods import ImprovedConsistencyTraining, Method
from .runlog import RunLog, TensorBoardLog
from .runtime import (
    TimeBudget,
    TrainingInterrupted,
    check_compile_with_jvp,
    check_trainer_options,
    fused_adam_supported,
    stop_on_signals,
)
from .sampling import generate, get_sampler
from .utils import resolve_device

UNKNOWN_LENGTH = 10**9  # the total_steps methods see while a time budget is still being calibrated


class ConsistencyTrainer:
    """Trains `model` with `method` (default iCT) on batches from `loader`.

    Batches may be tensors, (images,) or (images, labels); labels are used when the model declares num_classes.
    A step whose loss or gradients are not finite never reaches the weights, the EMAs or a checkpoint: the update is
    skipped on the device (no host sync), and the run stops at the next log line with a message saying so. SIGINT and
    SIGTERM during train() save the current step and raise TrainingInterrupted.
    """

    def __init__(
        self,
        model: nn.Module,
        loader: Any,
        *,
        method: Method | None = None,
        loss: Method | None = None,  # the name before 0.2; use method=
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
        sample_steps: tuple[int, ...] | None = None,  # default: the method's sampler's (1 and 2 steps for CMs)
        num_sample_images: int = 64,
        seed: int = 0,
        progress: bool = True,
        progress_label: str = "train",  # the progress bar's (and the log lines') label, e.g. a run's phase
        compile: bool = False,
        channels_last: bool = False,
        image_shape: tuple[int, int, int] | None = None,
        tensorboard: bool = False,  # also write TensorBoard logs to out_dir/tensorboard (pip install "...[tb]")
        config: dict[str, Any] | None = None,
    ):
        if loss is not None:
            warnings.warn("ConsistencyTrainer(loss=...) is now method=...", DeprecationWarning, stacklevel=2)
            method = method or loss
        self.method = method if method is not None else ImprovedConsistencyTraining()
        check_trainer_options(lr=lr, ema_decay=ema_decay, grad_clip=grad_clip, warmup_steps=warmup_steps,
                       lr_schedule=lr_schedule, precision=precision, total_steps=total_steps, log_every=log_every,
                       sample_every=sample_every, checkpoint_every=checkpoint_every, num_sample_images=num_sample_images)
        self.device = resolve_device(device)
        # Under torchrun (torch.distributed initialised) every rank runs this; rank 0 alone logs, samples and saves.
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.is_main = self.rank == 0

        # The model's declared interface (consistency.model): channels, classes, image shape, noise range.
        self.image_shape = tuple(image_shape) if image_shape else getattr(model, "image_shape", None)
        self.in_channels = getattr(model, "in_channels", None) or (self.image_shape[0] if self.image_shape else None)
        if self.in_channels is None:
            raise ValueError("the model declares no in_channels: give it that attribute (and num_classes for a "
                             "class-conditional model), or pass image_shape=(C, H, W)")
        self.num_classes = getattr(model, "num_classes", None)
        for key in ("sigma_min", "sigma_max", "sigma_data"):
            ours, theirs = getattr(model, key, None), getattr(self.method, key, None)
            if ours is not None and theirs is not None and not math.isclose(ours, theirs, rel_tol=1e-9):
                raise ValueError(f"the method's {key} is {theirs} but the model's is {ours}: build both with the same "
                                 "noise range (method.wrap(net) builds the model the method expects)")

        self.model = model.to(self.device)
        if channels_last:  # NHWC convolutions: faster with tensor cores on GPUs
            self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.method_module = self.method.to(self.device) if isinstance(self.method, nn.Module) else None
        self.train_model: nn.Module = self.model
        self.distributed = dist.is_available() and dist.is_initialized()  # torchrun: DDP, even with one process
        if self.distributed:
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, EpochSampler) and (sampler.world_size, sampler.rank) != (self.world_size, self.rank):
                raise ValueError(f"the loader is not sharded for rank {self.rank} of {self.world_size}: build it with "
                                 "rank= and world_size= (consistency.data loaders take both)")
            # DDP broadcasts rank 0's weights, so every rank starts (and, averaging gradients, stays) identical.
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index or 0] if self.device.type == "cuda" else None)
            if self.method_module is not None:  # the method's own parameters start equal on every rank too
                for p in self.method_module.parameters():
                    dist.broadcast(p.data, 0)
        # Each rank draws its own noise; a single process keeps the plain seed.
        torch.manual_seed(seed + 1_000_003 * self.rank)
        self.loader = loader
        self.lr, self.warmup_steps, self.grad_clip, self.lr_schedule = lr, warmup_steps, grad_clip, lr_schedule
        self.total_steps = total_steps
        self.precision = precision
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.sample_every, self.checkpoint_every, self.log_every = sample_every, checkpoint_every, log_every
        sampler = get_sampler(self.method.sampler)
        self.sample_steps = tuple(sample_steps) if sample_steps else sampler.default_steps
        self.num_sample_images = num_sample_images
        self.seed, self.progress, self.progress_label = seed, progress, progress_label
        self.extra_config = dict(config or {})
        self.tensorboard, self._writer = tensorboard, None
        if tensorboard:
            if self.out_dir is None:
                raise ValueError("tensorboard=True needs an out_dir to write the logs to")
            TensorBoardLog.check_installed()

        self.model_params = [p for p in self.model.parameters() if p.requires_grad]
        # a method's own parameters (sCM's loss weighting) are optimised with the model's but not clipped with them
        self.method_params = [p for p in self.method_module.parameters() if p.requires_grad] \
            if self.method_module is not None else []
        self.params = self.model_params + self.method_params
        self._fused = fused_adam_supported(self.device)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=betas, fused=True if self._fused else None)
        self.optimizer.grad_scale = None  # fused Adam reads grad_scale and found_inf (set per step) as attributes
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
        self.ema = EMA(self.model, ema_decay)
        # CM's theta- is an EMA copy; iCT's is the online network under stop-gradient (target_decay() is None).
        first_decay = self.method.target_decay(0, total_steps or UNKNOWN_LENGTH)
        self.target = EMA(self.model, first_decay) if first_decay is not None else None
        self.target_fn: nn.Module | None = self.target
        check_compile_with_jvp(compile, uses_jvp=self.method.uses_jvp, method_name=self.method.name,
                               has_dropout=any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()))
        if compile:
            # Online and target passes must draw the same dropout masks: both run compiled, so both draw them the
            # same way (an eager target would not reproduce a compiled pass's masks).
            self.train_model = torch.compile(self.train_model)
            if self.target is not None:
                self.target_fn = torch.compile(self.target.module)
        self.compile = compile
        self.step_count = 0
        self.log = RunLog()
        # Steps not yet moved to the host: (step, lr, loss, skipped flag, logs), all tensors still on the device.
        self._pending: list[tuple[int, float, torch.Tensor, torch.Tensor, dict]] = []
        self._batches_per_epoch = len(loader)
        if self._batches_per_epoch == 0:
            raise ValueError("the data loader yields no batches: the dataset is smaller than one batch")

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> dict[str, Any]:
        """The run's settings as plain data (config.json and the checkpoint hold them)."""
        return {
            "model": model_spec(self.model, self.image_shape),
            "method": self.method.config(),
            "sampler": self.method.sampler,
            "trainer": {"lr": self.lr, "total_steps": self.total_steps, "ema_decay": self.ema_decay,
                        "ema_warmup": self.ema_warmup, "grad_clip": self.grad_clip, "warmup_steps": self.warmup_steps,
                        "lr_schedule": self.lr_schedule, "precision": self.precision, "seed": self.seed,
                        "compile": self.compile, "channels_last": self.channels_last},
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
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the data has {x.shape[1]} channels but the model expects {self.in_channels}")
        if self.image_shape is None:
            self._set_image_shape(tuple(x.shape[1:]))
        elif tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"the data's images are {tuple(x.shape[1:])} but the model's are {tuple(self.image_shape)}")
        if self.num_classes and y is None:
            raise ValueError("the model is class-conditional (num_classes set) but the batches carry no labels")
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(self.device, non_blocking=True) if (y is not None and self.num_classes) else None
        return x, y

    def _set_image_shape(self, shape: tuple[int, int, int]) -> None:
        self.image_shape = shape
        for module in (self.model, self.ema.module, self.target.module if self.target is not None else None):
            if module is not None and getattr(module, "image_shape", 0) is None:
                module.image_shape = shape

    @torch.enable_grad()  # also when the caller turned gradients off (a notebook, a benchmark)
    def _train_step(self, batch: Any) -> None:
        x, y = self._split_batch(batch)
        # Before a time budget has fixed the run's length (the first ~30 steps), curricula see a run that has barely
        # begun (their first stage, no warm-up done), not a run of one step that is already over.
        total = self.total_steps or UNKNOWN_LENGTH
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        if self.target is not None:
            self.target.train()  # the target runs in the online network's mode: dropout in both (CM's code)
        with self._autocast():
            out = self.method(self.train_model, self.target_fn, x, y, step=self.step_count, total_steps=total)
        loss = out.loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.method_module is not None and self.distributed:  # DDP averages the model's gradients only
            for p in self.method_module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model_params, self.grad_clip or math.inf, foreach=True)
        if self.method_params:  # only measured: a non-finite one must stop the step too
            grad_norm = grad_norm + torch.nn.utils.clip_grad_norm_(self.method_params, math.inf, foreach=True)
        bad = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).to(torch.float32)
        if self.distributed:  # every rank skips together
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if self._fused:
            self.optimizer.found_inf = bad  # fused Adam leaves weights and moments untouched when bad == 1
            self.optimizer.step()
        elif not bad.item():  # no fused kernel here (CPU before torch 2.4): a host check, cheap on a CPU
            self.optimizer.step()
        keep = 1.0 - bad  # a skipped step leaves the EMAs where they were, too
        decay = self.method.target_decay(self.step_count, total)
        if self.target is not None:
            self.target.update(self.model, decay, keep=keep)
        self.ema.update(self.model, self.sampling_ema_decay(), keep=keep)
        self.step_count += 1
        self._pending.append((self.step_count, lr, loss.detach(), bad, out.logs))

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
        """One optimisation step on `batch`; returns the loss. A non-finite loss raises FloatingPointError, and that
        step's update was skipped: the weights and EMAs are those from before it."""
        self._train_step(batch)
        self._flush()
        return self.history["loss"][-1]

    def _flush(self) -> list[dict]:
        """Move the pending steps' losses to the host (one sync), record them, and stop if a step was non-finite."""
        if not self._pending:
            return []
        losses = torch.stack([p[2] for p in self._pending]).float().tolist()
        skipped = [step for (step, *_), bad in zip(self._pending, torch.stack([p[3] for p in self._pending]).tolist())
                   if bad]
        rows = []
        for (step, lr, _, _, logs), loss in zip(self._pending, losses):
            row = {"step": step, "loss": loss, "lr": lr}
            row.update({k: (v.item() if torch.is_tensor(v) else v) for k, v in logs.items()})
            rows.append(row)
        self.log.add(rows)
        self._pending.clear()
        if skipped:
            first, count = skipped[0], len(skipped)
            where = (f" The last checkpoint in {self.out_dir} is from before it and untouched."
                     if self.out_dir and (self.out_dir / "checkpoint.pt").exists() else "")
            raise FloatingPointError(
                f"the loss or its gradients became non-finite at step {first} ({count} step(s) so far); those updates "
                f"were skipped, so the weights and EMAs are those from before it. Lower the learning rate (now {self.lr}), keep "
                f"grad clipping on, and check that the data is finite and in [-1, 1].{where}")
        return rows

    # ------------------------------------------------------------------ data
    def _batches(self) -> Iterator[Any]:
        """Endless batches, starting where step_count says (so a resumed run sees the same data)."""
        return resumable_batches(self.loader, self.step_count)

    # ------------------------------------------------------------------ the loop
    def train(self, steps: int | None = None, *, minutes: float | None = None) -> dict[str, list]:
        """Train until `steps` more steps (default: up to total_steps) or `minutes` of wall clock have passed.

        With a time budget and no total_steps, total_steps (which sets the curriculum) is estimated from the speed of
        the first steps, estimated again when 10% of the budget has passed, and then fixed (runtime.TimeBudget). Under
        DDP rank 0's clock decides for every rank. Saves, samples and plots at the end when out_dir is set. On SIGINT /
        SIGTERM it saves the current step and raises TrainingInterrupted.
        """
        if self.total_steps is None and minutes is None and steps is None:
            raise ValueError("give total_steps, steps or minutes: the curriculum needs to know the run's length")
        budget = TimeBudget(self.step_count, steps=steps, minutes=minutes, total_steps=self.total_steps,
                            shared=self.distributed)  # under DDP rank 0's clock decides for every rank
        start_step = self.step_count
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out_dir / "checkpoint.pt")  # left by a save that was killed
            if self.tensorboard and self._writer is None:
                self._writer = TensorBoardLog(self.out_dir / "tensorboard")
            self._write_config()
            RunLog.write(self.out_dir / "log.jsonl", self.log.rows(), mode="w")  # the file holds the run so far
        batch_size = getattr(self.loader, "batch_size", None) or 1
        self._bar = tqdm(total=None if math.isinf(budget.end_step) else int(budget.end_step), initial=self.step_count,
                         disable=not (self.progress and self.is_main), dynamic_ncols=True, desc=self.progress_label)
        self._tick = (time.monotonic(), self.step_count)
        received: list[str] = []
        batches = self._batches()
        with stop_on_signals(received):
            while budget.running(self.step_count):
                self._train_step(next(batches))
                self._fitted(budget.calibrate(self.step_count), budget)
                self._bar.update(1)
                checkpoint_due = bool(self.out_dir is not None and self.checkpoint_every
                                      and self.step_count % self.checkpoint_every == 0)
                flush_due = len(self._pending) >= self.log_every or self.step_count >= budget.end_step or checkpoint_due
                if flush_due:
                    self._log(self._flush(), batch_size)  # a non-finite step stops the run here, before any save
                if self._stop_requested(received, flush_due, budget):
                    break
                if checkpoint_due:
                    self.save()
                    if not self.progress and self.is_main:  # a log line in place of the progress bar
                        print(f"{self.progress_label} step {self.step_count}/{self.total_steps} "
                              f"loss {self.history['loss'][-1]:.4g} "
                              f"{(self.step_count - start_step) * batch_size / budget.elapsed():.0f} "
                              "img/s", flush=True)
                if self.out_dir is not None and self.is_main and self.sample_every and \
                        self.step_count % self.sample_every == 0:
                    self.save_samples(f"step{self.step_count:07d}")
            self._bar.close()
            self._log(self._flush(), batch_size)
            if self.total_steps is None and not received:  # the budget ran out before the speed was measured
                self.total_steps = self.step_count
            elapsed = budget.elapsed()
            self.last_run = {"steps": self.step_count - start_step, "seconds": elapsed,
                             "images_per_s": (self.step_count - start_step) * batch_size / max(elapsed, 1e-9)}
            path = self.save() if self.out_dir is not None else None  # a signal now waits for the save to finish
        if received:
            raise TrainingInterrupted(received[0], self.step_count, path)
        if self.out_dir is not None and self.is_main:
            self._write_config()
            self.save_samples("final")
            self.plot(self.out_dir / "loss_curve.png")
            (self.out_dir / "run.json").write_text(json.dumps({"step": self.step_count, **self.last_run}, indent=2))
        if self._writer is not None:
            self._writer.flush()
        return self.history

    def _fitted(self, total_steps: int | None, budget: TimeBudget) -> None:
        if total_steps is not None:  # a time budget has fixed the run's length
            self.total_steps, self._bar.total = total_steps, int(budget.end_step)
            if self.out_dir is not None and self.is_main:
                self._write_config()  # config.json records the step count the budget fixed

    def _stop_requested(self, received: list[str], synced: bool, budget: TimeBudget) -> bool:
        """Whether a signal asks to stop. Under DDP every rank must agree: decided at log lines (already a sync),
        where rank 0's clock also says, for every rank, whether the time budget is spent and what step count it fits."""
        if not self.distributed:
            return bool(received)
        if not synced:
            return False
        expired, total = budget.proposal() if self.rank == 0 else (0, -1)
        flags = torch.tensor([int(bool(received)), expired, total], dtype=torch.int64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signal, expired, total = flags.tolist()
        self._fitted(budget.agree(expired, total), budget)
        if signal and not received:
            received.append("SIGTERM")  # another rank got it (torchrun forwards signals to every rank)
        return bool(signal)

    # ------------------------------------------------------------------ logs
    def _log(self, rows: list[dict], batch_size: int) -> None:
        """Rows of steps moved to the host: into log.jsonl and the progress bar."""
        if not rows:
            return
        if self.is_main and self.out_dir is not None:
            RunLog.write(self.out_dir / "log.jsonl", rows)
        now, (tick, tick_step) = time.monotonic(), self._tick
        postfix = {"loss": f"{sum(r['loss'] for r in rows) / len(rows):.4g}",
                   "img_s": f"{(self.step_count - tick_step) * batch_size / max(now - tick, 1e-9):.0f}"}
        if self.method.curriculum and self.method.curriculum in rows[-1]:
            postfix[self.method.curriculum] = rows[-1][self.method.curriculum]
        self._bar.set_postfix(postfix)
        if self._writer is not None:
            self._writer.add_rows(rows, float(postfix["img_s"]), self.step_count)
        self._tick = (now, self.step_count)

    def _write_config(self) -> None:
        (self.out_dir / "config.json").write_text(json.dumps(self.config, indent=2, default=str))

    @property
    def history(self) -> dict[str, list]:
        """The per-step log as columns: step, loss, lr and what the method logs."""
        return self.log.history

    def plot(self, path: str | os.PathLike) -> None:
        """The loss curve, with the curriculum's stage changes marked."""
        self.log.plot(path, title=f"{self.method.name} training loss", curriculum=self.method.curriculum)

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
        """n images in [-1, 1] (on the CPU) from the sampling EMA (or the online network), drawn the way the method
        says (a consistency model: `steps` evaluations; an EDM teacher: EDM's Heun sampler over `steps` levels)."""
        if self.image_shape is None:
            raise ValueError("the trainer has not seen the data yet: train a step, or pass image_shape= to the trainer")
        net = self.ema.module if use_ema else self.model
        if seed is None:  # a fresh seed that leaves the training RNG alone
            seed = int.from_bytes(os.urandom(7), "little")
        return generate(net, n, self.image_shape, steps=steps, sigmas=sigmas, sampler=self.method.sampler,
                        seed=seed, class_labels=class_labels, batch_size=max(n, 1))

    def save_samples(self, tag: str) -> None:
        """Sample grids from a fixed seed; class-conditional models get one row per class."""
        n, nrow, labels = self.num_sample_images, None, None
        if self.num_classes:
            nrow = max(1, n // self.num_classes)
            n, labels = self.num_classes * nrow, torch.arange(self.num_classes).repeat_interleave(nrow)
        for k in self.sample_steps:
            images = self.sample(n, steps=k, class_labels=labels)
            save_grid(images, self.out_dir / "samples" / f"{tag}_{k}step.png", nrow=nrow)
            if self._writer is not None:
                self._writer.add_grid(f"samples/{k}step", images, nrow, self.step_count)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Checkpoint:
        """The whole training state (a collective under torchrun: every rank must call it)."""
        self._flush()
        return Checkpoint(
            model=model_spec(self.model, self.image_shape),
            method=self.method.config(),
            sampler=self.method.sampler,
            weights={"model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                     "target": self.target.module.state_dict() if self.target is not None else None,
                     "method": self.method_module.state_dict() if self.method_module is not None else None},
            optimizer=self.optimizer.state_dict(),
            step=self.step_count,
            total_steps=self.total_steps,
            history=self.history,
            rng={"cpu": self._gather(torch.get_rng_state()),
                 "cuda": self._gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else []},
            config=json.loads(json.dumps(self.config, default=str)),
        )

    def _gather(self, state: torch.Tensor) -> list[torch.Tensor]:
        """One RNG state per rank."""
        if not self.distributed:
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
        ckpt = self.checkpoint()  # every rank takes part (RNG gathering); rank 0 writes
        if self.is_main:
            save_checkpoint(ckpt, path)
        if self.distributed:
            dist.barrier()
        return Path(path)

    def load(self, checkpoint: str | os.PathLike | Checkpoint, *, path: str | os.PathLike | None = None
             ) -> "ConsistencyTrainer":
        """Restore a checkpoint written by save() (its path, or what read_checkpoint returned; `path` then names it in
        messages): weights, EMAs, optimizer, step, RNG. The run then continues exactly.

        A checkpoint of another model is refused; one trained with other method settings loads with a warning.
        """
        if isinstance(checkpoint, Checkpoint):
            ckpt, path = checkpoint, path or "the checkpoint"
        else:
            ckpt, path = read_checkpoint(checkpoint), checkpoint
        check_resumable(ckpt, model_spec(self.model, self.image_shape), self.method.config(), path)
        if ckpt.model.get("image_shape") and self.image_shape is None:
            self._set_image_shape(tuple(ckpt.model["image_shape"]))
        self.model.load_state_dict(ckpt.weights["model"])
        self.ema.module.load_state_dict(ckpt.weights["ema"])
        if self.target is not None:
            if ckpt.weights["target"] is None:
                raise ValueError(f"checkpoint {path} has no target network; it was trained with a method without one")
            self.target.module.load_state_dict(ckpt.weights["target"])
        if self.method_module is not None and ckpt.weights.get("method") is not None:
            self.method_module.load_state_dict(ckpt.weights["method"])
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.step_count = ckpt.step
        self.total_steps = ckpt.total_steps
        self.log = RunLog(ckpt.history)
        rng_cpu, rng_cuda = ckpt.rng.get("cpu", []), ckpt.rng.get("cuda", [])
        if len(rng_cpu) == self.world_size:
            torch.set_rng_state(rng_cpu[self.rank])
            if self.device.type == "cuda" and len(rng_cuda) == self.world_size:
                torch.cuda.set_rng_state(rng_cuda[self.rank], self.device)
        else:  # the weights and step carry over; the noise stream cannot
            warnings.warn(f"checkpoint {path} was written by {len(rng_cpu)} process(es) and this run has "
                          f"{self.world_size}: training continues, but not bit for bit (RNG reseeded)")
            torch.manual_seed(self.seed + self.step_count + 1_000_003 * self.rank)
        return self


