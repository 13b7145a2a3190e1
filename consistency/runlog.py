"""The per-step record of a training run: columns in memory (checkpoints hold them), log.jsonl beside the checkpoint
(one JSON object per step, for any plotting tool), and the loss plot drawn from it."""

from __future__ import annotations

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
