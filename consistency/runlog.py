"""The per-step record of a training run: columns in memory (checkpoints hold them), log.jsonl beside the checkpoint
(one JSON object per step, for any plotting tool), the loss plot drawn from it, and optional TensorBoard logs."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from .plot import plot_loss


class RunLog:
    """Columns `step`, `loss`, `lr` and whatever the method logs (a step that did not log a key holds None)."""

    def __init__(self, history: dict[str, list] | None = None):
        self.history: dict[str, list] = {k: list(v) for k, v in (history or {}).items()}
        for key in ("step", "loss", "lr"):
            self.history.setdefault(key, [None] * len(self.history.get("step", [])))

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


class TensorBoardLog:
    """TensorBoard event files in `log_dir`: every logged number per step, images/s, sample grids (the extra [tb])."""

    @staticmethod
    def check_installed() -> None:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError as exc:
            raise ValueError('--tensorboard needs the tensorboard package: pip install "consistency-models[tb]"') \
                from exc

    def __init__(self, log_dir: str | os.PathLike):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

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
