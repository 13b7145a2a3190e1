"""ConsistencyTrainer: the notebook API. Owns the optimizer, the EMAs, precision, checkpoints and logging.

    trainer = ConsistencyTrainer(model, loader, method=ImprovedConsistencyTraining(), total_steps=10_000, out_dir="runs/x")
    trainer.train()
    images = trainer.sample(64, steps=1)

It trains any model with the documented call model(x, sigma, class_labels) (consistency.model) with any method
(consistency.methods.Method); it never asks which. Its settings are one dataclass, TrainerOptions (every field also a
keyword here). Around it: distributed.Ranks (DDP), runlog.RunOutputs (the files), runtime.TimeBudget (when a run
stops), schedule.learning_rate / ema_warmup_decay (the schedules), data.split_batch (a batch's checks, label dropout).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import Checkpoint, check_resumable, model_spec, read_checkpoint, restore_weights
from .data import resumable_batches, split_batch
from .distributed import Ranks
from .ema import EMA
from .methods import ImprovedConsistencyTraining, Method, check_noise_range
from .model import check_guidance, declared_interface
from .options import TrainerOptions, with_overrides
from .pretrained import save_trainer
from .runlog import Progress, RunLog, RunOutputs, StepRecord
from .runtime import (
    NonFiniteStep,
    TimeBudget,
    TrainingInterrupted,
    check_compile_with_jvp,
    fused_adam_supported,
    optimizer_step,
    stop_on_signals,
)
from .sampling import generate, get_sampler
from .schedule import ema_warmup_decay, learning_rate
from .utils import resolve_device

UNKNOWN_LENGTH = 10**9  # the total_steps methods see while a time budget is still being calibrated


class ConsistencyTrainer:
    """Trains `model` with `method` (default iCT) on batches from `loader` (tensors, (images,) or (images, labels));
    `options` and keyword overrides of its fields (lr=, total_steps=, ...) say how (TrainerOptions).

    A step whose loss or gradients are not finite never reaches the weights, the EMAs or a checkpoint: the update is
    skipped on the device (no host sync), and the run stops at the next log line saying so (NonFiniteStep).
    """

    def __init__(self, model: nn.Module, loader: Any, *, method: Method | None = None,
                 options: TrainerOptions | None = None, out_dir: str | os.PathLike | None = None,
                 image_shape: tuple[int, int, int] | None = None, config: dict[str, Any] | None = None,
                 loss: Method | None = None, **overrides: Any):
        if loss is not None:
            warnings.warn("ConsistencyTrainer(loss=...) is now method=...", DeprecationWarning, stacklevel=2)
            method = method or loss
        self.method = method if method is not None else ImprovedConsistencyTraining()
        self.options = o = with_overrides(options, overrides)
        self.device = resolve_device(o.device)
        self.ranks = Ranks()  # under torchrun every rank runs this; rank 0 alone logs, samples and saves
        self.outputs = RunOutputs(out_dir, main=self.ranks.is_main, tensorboard=o.tensorboard, wandb=o.wandb)
        self.out_dir = self.outputs.out_dir
        self.extra_config = dict(config or {})  # what else config.json records (the command line's settings)

        # The model's declared interface (consistency.model): channels, classes, image shape, noise range.
        self.in_channels, self.num_classes, self.image_shape = declared_interface(model, image_shape)
        check_noise_range(self.method, model)
        for w in o.sample_guidance or ():  # the grids' guidance scales, refused now rather than after the training
            try:
                check_guidance(model, w, self.method.config())
            except ValueError as exc:
                raise ValueError(f"sample_guidance (--sample-guidance) {w:g}: {exc}") from None

        # The networks: the online one (DDP-wrapped, compiled), the sampling EMA, the target copy if the method keeps one.
        self.model = model.to(self.device)
        if o.channels_last:  # NHWC convolutions: faster with tensor cores on some GPUs
            self.model.to(memory_format=torch.channels_last)
        self.method_module = self.method.to(self.device) if isinstance(self.method, nn.Module) else None
        self.model_params = [p for p in self.model.parameters() if p.requires_grad]
        # a method's own parameters (sCM's loss weighting) are optimised with the model's but not clipped with them
        self.method_params = [p for p in self.method_module.parameters() if p.requires_grad] \
            if self.method_module is not None else []
        self.ranks.check_sharded(loader)
        self.train_model: nn.Module = self.ranks.wrap(self.model, self.device)
        self.ranks.broadcast_(self.method_params)
        torch.manual_seed(o.seed + 1_000_003 * self.ranks.rank)  # each rank draws its own noise
        self._fused = fused_adam_supported(self.device)
        self.optimizer = torch.optim.Adam(self.model_params + self.method_params, lr=o.lr, betas=o.betas,
                                          fused=True if self._fused else None)
        self.optimizer.grad_scale = None  # fused Adam reads grad_scale and found_inf (set per step) as attributes
        self.ema = EMA(self.model, o.ema_decay)
        # CM's theta- is an EMA copy; iCT's is the online network under stop-gradient (target_decay() is None).
        first_decay = self.method.target_decay(0, o.total_steps or UNKNOWN_LENGTH)
        self.target = EMA(self.model, first_decay) if first_decay is not None else None
        self.target_fn: nn.Module | None = self.target
        check_compile_with_jvp(o.compile, uses_jvp=self.method.uses_jvp, method_name=self.method.name,
                               has_dropout=any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()))
        if o.compile:  # both passes compiled, so both draw the same dropout masks (an eager target would not)
            self.train_model = torch.compile(self.train_model, mode=o.compile_mode)
            if self.target is not None:
                self.target_fn = torch.compile(self.target.module, mode=o.compile_mode)

        self.loader = loader
        if len(loader) == 0:
            raise ValueError("the data loader yields no batches: the dataset is smaller than one batch")
        self.sample_steps = tuple(o.sample_steps or get_sampler(self.method.sampler).default_steps)
        self.step_count, self.log = 0, RunLog()
        if self.image_shape is not None:  # the models (and so their checkpoints and folders) record it too
            self.set_image_shape(self.image_shape)
        self._pending: list[StepRecord] = []  # steps whose losses are still on the device

    # ------------------------------------------------------------------ settings
    @property
    def total_steps(self) -> int | None:
        return self.options.total_steps

    @total_steps.setter
    def total_steps(self, value: int | None) -> None:
        self.options.total_steps = value

    @property
    def config(self) -> dict[str, Any]:
        """The run's settings as plain data (config.json and the checkpoint hold them)."""
        return {"model": model_spec(self.model, self.image_shape), "method": self.method.config(),
                "sampler": self.method.sampler, "trainer": asdict(self.options), **self.extra_config}

    def current_lr(self) -> float:
        """The learning rate of the next step (schedule.learning_rate)."""
        return learning_rate(self.step_count, lr=self.options.lr, total_steps=self.total_steps,
                             warmup_steps=self.options.warmup_steps, schedule=self.options.lr_schedule)

    def sampling_ema_decay(self) -> float:
        """The sampling EMA's decay for the update after step `step_count` (schedule.ema_warmup_decay)."""
        return ema_warmup_decay(self.step_count, self.options.ema_decay, self.options.ema_warmup)

    # ------------------------------------------------------------------ one step
    @torch.enable_grad()  # also when the caller turned gradients off (a notebook, a benchmark)
    def _train_step(self, batch: Any) -> StepRecord:
        x, y = split_batch(batch, in_channels=self.in_channels, image_shape=self.image_shape, first=not self.step_count,
                           num_classes=self.num_classes, device=self.device, channels_last=self.options.channels_last,
                           label_dropout=self.options.label_dropout, null_class=getattr(self.model, "null_class", None))
        if self.image_shape is None:
            self.set_image_shape(tuple(x.shape[1:]))
        # Before a time budget has fixed the run's length (the first ~30 steps), curricula see a run that has barely
        # begun (their first stage, no warm-up done), not a run of one step that is already over.
        total = self.total_steps or UNKNOWN_LENGTH
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        if self.target is not None:
            self.target.train()  # the target runs in the online network's mode: dropout in both (CM's code)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.options.precision == "bf16"):
            out = self.method(self.train_model, self.target_fn, x, y, step=self.step_count, total_steps=total)
        loss = out.loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.ranks.average_gradients_(self.method_params)  # DDP averages the model's gradients only
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model_params, self.options.grad_clip or math.inf, foreach=True)
        if self.method_params:  # only measured: a non-finite one must stop the step too
            grad_norm = grad_norm + torch.nn.utils.clip_grad_norm_(self.method_params, math.inf, foreach=True)
        bad = self.ranks.max_((~(torch.isfinite(loss) & torch.isfinite(grad_norm))).to(torch.float32))  # all skip
        optimizer_step(self.optimizer, skip=bad, fused=self._fused)
        keep = 1.0 - bad  # a skipped step leaves the EMAs where they were, too
        if self.target is not None:
            self.target.update(self.model, self.method.target_decay(self.step_count, total), keep=keep)
        self.ema.update(self.model, self.sampling_ema_decay(), keep=keep)
        self.step_count += 1
        record = StepRecord(self.step_count, lr, loss.detach(), bad, out.logs)
        self._pending.append(record)
        return record

    def step(self, batch: Any) -> float:
        """One optimisation step on `batch`; returns the loss (a non-finite one raises NonFiniteStep, unapplied)."""
        self._train_step(batch)
        self._flush()
        return self.history["loss"][-1]

    def _flush(self) -> list[dict]:
        """Move the pending steps to the host (one sync) and the log; stop if a step was non-finite."""
        rows, skipped = self.log.add_records(self._pending)
        self._pending.clear()
        if skipped:
            raise NonFiniteStep(skipped, self.options.lr, self.outputs.checkpoint_path)
        return rows

    # ------------------------------------------------------------------ the loop
    def train(self, steps: int | None = None, *, minutes: float | None = None) -> dict[str, list]:
        """Train for `steps` more steps (default: up to total_steps) or `minutes` of wall clock, whichever ends first;
        without total_steps the run's length is fitted to the time budget (runtime.TimeBudget). Saves, samples and
        plots at the end when out_dir is set; on SIGINT / SIGTERM saves the current step, raises TrainingInterrupted."""
        o, start_step, received = self.options, self.step_count, []
        budget = TimeBudget(self.step_count, steps=steps, minutes=minutes, total_steps=self.total_steps,
                            sync=self.ranks.agreement(self.device), timekeeper=self.ranks.is_main)
        self.outputs.start(self.config, self.log.rows())
        progress = Progress(self.step_count, budget.end_step, self._batch_size, label=o.progress_label, bar=o.progress,
                            main=self.ranks.is_main, curriculum=self.method.curriculum)
        batches = resumable_batches(self.loader, self.step_count)  # a resumed run sees the same data
        with stop_on_signals(received):
            while budget.running(self.step_count):
                # One optimisation step, queued on the device.
                self._train_step(next(batches))
                # A log line: the pending losses reach the host (a non-finite step stops the run here, before a save).
                checkpoint_due = self._due(o.checkpoint_every) and self.out_dir is not None
                synced = len(self._pending) >= o.log_every or self.step_count >= budget.end_step or checkpoint_due
                if synced:
                    self._report(self._flush(), progress)
                # Stop for a signal (every rank together), and fit the run's length to a time budget.
                stop, fitted = budget.after_step(self.step_count, received, synced=synced)
                if fitted is not None:
                    self.total_steps, progress.bar.total = fitted, int(budget.end_step)
                    self.outputs.write_config(self.config)  # config.json records the step count the budget fixed
                if stop:
                    break
                # Maintenance: checkpoints and sample grids.
                if checkpoint_due:
                    self.save()
                    progress.line(self.step_count, self.total_steps, self.history["loss"][-1])
                if self.outputs.active and self._due(o.sample_every):
                    self.save_samples(f"step{self.step_count:07d}")
            # The end: the last losses, then the checkpoint (a signal now waits for the save to finish).
            path = self._end_run(progress, start_step, budget.elapsed(), stopped=bool(received))
        if received:
            raise TrainingInterrupted(received[0], self.step_count, path)
        self.outputs.write_config(self.config)
        if self.outputs.active:
            self.save_samples("final")
        self.outputs.finish(self.log, {"step": self.step_count, **self.last_run}, **self._plot_labels)
        return self.history

    def _end_run(self, progress: Progress, start_step: int, seconds: float, stopped: bool) -> Path | None:
        """The last losses, what the run did (last_run), the checkpoint; a budget spent before any fit fixes the length."""
        progress.bar.close()
        self._report(self._flush(), progress)
        if self.total_steps is None and not stopped:
            self.total_steps = self.step_count
        steps = self.step_count - start_step
        self.last_run = {"steps": steps, "seconds": seconds, "images_per_s": steps * self._batch_size / max(seconds, 1e-9)}
        return self.save() if self.out_dir is not None else None

    @property
    def _batch_size(self) -> int:
        return getattr(self.loader, "batch_size", None) or 1

    def _due(self, every: int) -> bool:
        return bool(every) and self.step_count % every == 0

    def _report(self, rows: list[dict], progress: Progress) -> None:
        """Rows just moved to the host: into the progress bar, log.jsonl and TensorBoard."""
        if rows:
            self.outputs.log(rows, progress.update(rows, self.step_count), self.step_count)

    # ------------------------------------------------------------------ logs
    @property
    def history(self) -> dict[str, list]:
        """The per-step log as columns: step, loss, lr and what the method logs."""
        return self.log.history

    def plot(self, path: str | os.PathLike) -> None:
        """The loss curve, with the curriculum's stage changes marked."""
        self.log.plot(path, **self._plot_labels)

    @property
    def _plot_labels(self) -> dict[str, Any]:
        return {"title": f"{self.method.name} training loss", "curriculum": self.method.curriculum}

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, steps: int = 1, *, sigmas: list[float] | None = None, seed: int | None = 0,
               class_labels: torch.Tensor | None = None, use_ema: bool = True, guidance: float | None = None
               ) -> torch.Tensor:
        """n images in [-1, 1] (on the CPU) from the sampling EMA (or the online network), drawn the way the method
        says (a consistency model: `steps` evaluations; EDM: Heun over `steps` levels), guided with scale `guidance`."""
        if self.image_shape is None:
            raise ValueError("the trainer has not seen the data yet: train a step, or pass image_shape= to the trainer")
        if seed is None:  # a fresh seed that leaves the training RNG alone
            seed = int.from_bytes(os.urandom(7), "little")
        return generate(self.ema.module if use_ema else self.model, n, self.image_shape, steps=steps, sigmas=sigmas,
                        sampler=self.method.sampler, seed=seed, class_labels=class_labels, batch_size=max(n, 1),
                        guidance=guidance)

    def save_samples(self, tag: str) -> None:
        """Sample grids from a fixed seed; class-conditional models get one row per class."""
        n, nrow, labels = self.options.num_sample_images, None, None
        if self.num_classes:
            nrow = max(1, n // self.num_classes)
            n, labels = self.num_classes * nrow, torch.arange(self.num_classes).repeat_interleave(nrow)
        for k, w in ((k, w) for k in self.sample_steps for w in self.options.sample_guidance or (None,)):
            self.outputs.grid(self.sample(n, steps=k, class_labels=labels, guidance=w),
                              f"{tag}_{k}step" + (f"_w{w:g}" if w is not None else ""), nrow, self.step_count)

    def save_pretrained(self, folder: str | os.PathLike, *, weights: str = "ema", **info: Any) -> Path:
        """The sampling EMA (or weights="model") as a model folder that cm.load_model reads (consistency.pretrained)."""
        return save_trainer(self, folder, weights=weights, **info)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> Checkpoint:
        """The whole training state (a collective under torchrun: every rank must call it)."""
        self._flush()
        return Checkpoint(
            model=model_spec(self.model, self.image_shape), method=self.method.config(), sampler=self.method.sampler,
            weights={"model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                     "target": self.target.module.state_dict() if self.target is not None else None,
                     "method": self.method_module.state_dict() if self.method_module is not None else None},
            optimizer=self.optimizer.state_dict(), step=self.step_count, total_steps=self.total_steps,
            history=self.history,
            rng={"cpu": self.ranks.gather(torch.get_rng_state()),
                 "cuda": self.ranks.gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else []},
            config=json.loads(json.dumps(self.config, default=str)),
        )

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the whole training state atomically (default: out_dir/checkpoint.pt)."""
        if path is None and self.out_dir is None:
            raise ValueError("no path given and the trainer has no out_dir")
        path = self.outputs.save_checkpoint(self.checkpoint(), path)  # every rank gathers; rank 0 writes
        self.ranks.barrier()
        return path

    def load(self, checkpoint: str | os.PathLike | Checkpoint, *, path: str | os.PathLike | None = None
             ) -> "ConsistencyTrainer":
        """Restore a checkpoint written by save() (its path, or what read_checkpoint returned; `path` then names it in
        messages): weights, EMAs, optimizer, step, RNG; the run then continues exactly. Another model's is refused (and
        diverged weights); one trained with other method settings loads with a warning."""
        if isinstance(checkpoint, Checkpoint):
            ckpt, path = checkpoint, path or "the checkpoint"
        else:
            ckpt, path = read_checkpoint(checkpoint), checkpoint
        check_resumable(ckpt, model_spec(self.model, self.image_shape), self.method.config(), path)
        if ckpt.model.get("image_shape") and self.image_shape is None:
            self.set_image_shape(tuple(ckpt.model["image_shape"]))
        restore_weights(ckpt, path, model=self.model, ema=self.ema.module,
                        target=self.target.module if self.target is not None else None, method=self.method_module)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.step_count, self.total_steps, self.log = ckpt.step, ckpt.total_steps, RunLog(ckpt.history)
        if not self.ranks.set_rng_states(ckpt.rng.get("cpu", []), ckpt.rng.get("cuda", []), self.device):
            warnings.warn(f"checkpoint {path} was written by {len(ckpt.rng.get('cpu', []))} process(es) and this run "
                          f"has {self.ranks.world_size}: training continues, but not bit for bit (RNG reseeded)")
            torch.manual_seed(self.options.seed + self.step_count + 1_000_003 * self.ranks.rank)
        return self

    def set_image_shape(self, shape: tuple[int, int, int]) -> None:
        """Record the image shape (C, H, W) on the trainer and on models that declare none (seen in the first batch)."""
        self.image_shape = tuple(shape)
        for module in (self.model, self.ema.module, self.target.module if self.target is not None else None):
            if module is not None and getattr(module, "image_shape", 0) is None:
                module.image_shape = self.image_shape
