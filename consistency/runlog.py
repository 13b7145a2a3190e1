"""What a run records and writes: a step's record on the device (StepRecord), the per-step log as columns (RunLog,
which checkpoints hold), and every file a run writes (RunOutputs: config.json, log.jsonl, the loss plot, sample
grids, checkpoint.pt, run.json, optional TensorBoard logs), written by rank 0 alone."""

from __future__ import annotations

import importlib
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, remove_stale_temporaries, save_checkpoint
from .images import save_grid
from .plot import plot_loss


class StepRecord(NamedTuple):
    """One training step as it leaves the device: the tensors stay there until a log line moves them all at once."""

    step: int  # the step count after it (1 for the first step)
    lr: float
    loss: torch.Tensor  # 0-dim, the batch's mean loss
    skipped: torch.Tensor  # 0-dim, 1.0 when the update was skipped (a non-finite loss or gradient)
    logs: dict[str, Any]  # what the method logs: Python numbers or 0-dim tensors


class RunLog:
    """Columns `step`, `loss`, `lr` and whatever the method logs (a step that did not log a key holds None)."""

    def __init__(self, history: dict[str, list] | None = None):
        self.history: dict[str, list] = {k: list(v) for k, v in (history or {}).items()}
        for key in ("step", "loss", "lr"):
            self.history.setdefault(key, [None] * len(self.history.get("step", [])))

    def add_records(self, records: list[StepRecord]) -> tuple[list[dict], list[int]]:
        """Move the records to the host (one sync), add them as rows; returns the rows and the skipped steps."""
        if not records:
            return [], []
        losses = torch.stack([r.loss for r in records]).float().tolist()
        skipped = torch.stack([r.skipped for r in records]).tolist()
        rows = [{"step": r.step, "loss": loss, "lr": r.lr,
                 **{k: (v.item() if torch.is_tensor(v) else v) for k, v in r.logs.items()}}
                for r, loss in zip(records, losses)]
        self.add(rows)
        return rows, [r.step for r, bad in zip(records, skipped) if bad]

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            logged = len(self.history["step"])
            for key in row:
                if key not in self.history:
                    self.history[key] = [None] * logged
            for key, column in self.history.items():
                column.append(row.get(key))

    def rows(self) -> list[dict]:
        keys = list(self.history)
        return [{k: self.history[k][i] for k in keys if self.history[k][i] is not None}
                for i in range(len(self.history["step"]))]

    @staticmethod
    def write(path: str | os.PathLike, rows: list[dict], mode: str = "a") -> None:
        """Append rows to (or with mode "w", rewrite) a JSON-lines file."""
        with open(path, mode) as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def plot(self, path: str | os.PathLike, *, title: str, curriculum: str | None = None) -> None:
        """The loss curve, with each change of the `curriculum` entry (N, a stage) marked."""
        stages = []
        if curriculum and curriculum in self.history:
            values, steps = self.history[curriculum], self.history["step"]
            stages = [(steps[i], f"{curriculum}={values[i]}") for i in range(1, len(values))
                      if values[i] is not None and values[i] != values[i - 1]]
        plot_loss(self.history["step"], self.history["loss"], Path(path), title=title, stages=stages)


class RunOutputs:
    """Every file a run writes into `out_dir`. Without an out_dir, or on a rank other than 0, nothing is written:
    the trainer calls these methods alike in every case."""

    def __init__(self, out_dir: str | os.PathLike | None, *, main: bool = True, tensorboard: bool = False,
                 wandb: bool = False):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.main, self.active = main, self.out_dir is not None and main
        self.kinds = [kind for kind, wanted in ((TensorBoardLog, tensorboard), (WandbLog, wandb)) if wanted]
        for kind in self.kinds:
            if self.out_dir is None:
                raise ValueError(f"{kind.flag} needs an out_dir to write its logs to")
            kind.check_installed()
        self._loggers: list[Any] = []  # TensorBoard, W&B: made when the run starts (W&B takes the run's config)

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir is not None else None

    def start(self, config: dict[str, Any], rows: list[dict]) -> None:
        """A run (or its continuation) begins: the folder, config.json, log.jsonl holding the run so far, loggers."""
        if not self.active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.checkpoint_path)  # left by a save that was killed
        if not self._loggers:
            self._loggers = [kind(self.out_dir, config) for kind in self.kinds]
        self.write_config(config)
        RunLog.write(self.out_dir / "log.jsonl", rows, mode="w")

    def write_config(self, config: dict[str, Any]) -> None:
        if self.active:
            (self.out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))

    def log(self, rows: list[dict], images_per_s: float, step: int) -> None:
        """Rows moved to the host: appended to log.jsonl (and the loggers)."""
        if not self.active:
            return
        RunLog.write(self.out_dir / "log.jsonl", rows)
        for logger in self._loggers:
            logger.add_rows(rows, images_per_s, step)

    def grid(self, images: torch.Tensor, name: str, nrow: int | None, step: int) -> None:
        """samples/NAME.png (and the loggers' image of the same name)."""
        if not self.active:
            return
        save_grid(images, self.out_dir / "samples" / f"{name}.png", nrow=nrow)
        for logger in self._loggers:
            logger.add_grid(f"samples/{name.split('_', 1)[-1]}", images, nrow, step)

    def save_checkpoint(self, ckpt: Checkpoint, path: str | os.PathLike | None = None) -> Path:
        """Write a checkpoint atomically (default: out_dir/checkpoint.pt); only rank 0 writes."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no path given and the trainer has no out_dir")
        if self.main:
            save_checkpoint(ckpt, path)
        return path

    def finish(self, log: RunLog, record: dict[str, Any], *, title: str, curriculum: str | None) -> None:
        """The end of a run: the loss plot and run.json (what the run did: steps, seconds, images/s)."""
        if self.active:
            log.plot(self.out_dir / "loss_curve.png", title=title, curriculum=curriculum)
            (self.out_dir / "run.json").write_text(json.dumps(record, indent=2))
        for logger in self._loggers:
            logger.flush()


class Progress:
    """The progress bar (or, without it, a log line at each checkpoint) with the loss, images/s and curriculum."""

    def __init__(self, step: int, end_step: float, batch_size: int, *, label: str, bar: bool, main: bool,
                 curriculum: str | None):
        self.bar = tqdm(total=None if math.isinf(end_step) else int(end_step), initial=step, disable=not (bar and main),
                        dynamic_ncols=True, desc=label)
        self.show_lines, self.label, self.curriculum, self.batch_size = main and not bar, label, curriculum, batch_size
        self.start = self.tick = (time.monotonic(), step)

    def update(self, rows: list[dict], step: int) -> float:
        """Rows just moved to the host: the bar's numbers; returns the images/s since the last update."""
        now, (tick, tick_step) = time.monotonic(), self.tick
        images_per_s = (step - tick_step) * self.batch_size / max(now - tick, 1e-9)
        postfix = {"loss": f"{sum(r['loss'] for r in rows) / len(rows):.4g}", "img_s": f"{images_per_s:.0f}"}
        if self.curriculum and self.curriculum in rows[-1]:
            postfix[self.curriculum] = rows[-1][self.curriculum]
        self.bar.set_postfix(postfix)
        self.tick = (now, step)
        return images_per_s

    def line(self, step: int, total_steps: int | None, loss: float) -> None:
        """A log line in place of the bar (at checkpoints)."""
        if self.show_lines:
            (start, start_step), now = self.start, time.monotonic()
            print(f"{self.label} step {step}/{total_steps} loss {loss:.4g} "
                  f"{(step - start_step) * self.batch_size / max(now - start, 1e-9):.0f} img/s", flush=True)


class TensorBoardLog:
    """TensorBoard event files in OUT/tensorboard: every logged number per step, images/s, sample grids ([tb])."""

    flag = "--tensorboard"

    @staticmethod
    def check_installed() -> None:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError as exc:
            raise ValueError('--tensorboard needs the tensorboard package: pip install "consistency-models[tb]"') \
                from exc

    def __init__(self, out_dir: str | os.PathLike, config: dict[str, Any] | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def add_rows(self, rows: list[dict], images_per_s: float, step: int) -> None:
        for row in rows:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])
        self.writer.add_scalar("images_per_s", images_per_s, step)

    def add_grid(self, tag: str, images, nrow: int | None, step: int) -> None:
        """images: (B, C, H, W) in [-1, 1]."""
        from torchvision.utils import make_grid

        self.writer.add_image(tag, make_grid((images + 1) / 2, nrow=nrow or 8), step)

    def flush(self) -> None:
        self.writer.flush()


class WandbLog:
    """Weights & Biases ([wandb]): every logged number per step (loss, lr, the curriculum), images/s, sample grids and
    the run's config, under OUT/wandb. A resumed run continues the same W&B run (its id is kept in OUT/wandb-run-id).
    WANDB_MODE=offline writes the files only (wandb sync uploads them later)."""

    flag = "--wandb"

    @staticmethod
    def check_installed() -> None:
        try:
            importlib.import_module("wandb")
        except ImportError as exc:
            raise ValueError('--wandb needs the wandb package: pip install "consistency-models[wandb]"') from exc

    def __init__(self, out_dir: str | os.PathLike, config: dict[str, Any]):
        import wandb

        out_dir = Path(out_dir)
        id_file = out_dir / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        (out_dir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "consistency"), dir=str(out_dir),
                              name=out_dir.name, id=run_id, resume="allow", config=config)
        self.wandb = wandb

    def add_rows(self, rows: list[dict], images_per_s: float, step: int) -> None:
        for row in rows:
            values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
            if row is rows[-1]:
                values["images_per_s"] = images_per_s
            self.run.log(values, step=row["step"])

    def add_grid(self, tag: str, images, nrow: int | None, step: int) -> None:
        from .images import to_pil

        self.run.log({tag: self.wandb.Image(to_pil(images, nrow))}, step=step)

    def flush(self) -> None:
        self.run.finish()
