"""What a training run needs from the process around it: stopping cleanly on SIGINT / SIGTERM, when to stop (a step
count or a wall-clock budget), the optimizer's device-side skip, and refusing settings that cannot work before any
work is done."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn


class TrainingInterrupted(Exception):
    """train() stopped on SIGINT (Ctrl-C) or SIGTERM (what schedulers send) after saving the current step."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        saved = f"checkpoint saved at step {step}: {checkpoint}" if checkpoint else "no out_dir, nothing saved"
        super().__init__(f"{signal_name} at step {step}; {saved}")


class NonFiniteStep(FloatingPointError):
    """Steps whose loss or gradients were not finite: their updates were skipped, and the run stops."""

    def __init__(self, steps: list[int], lr: float, checkpoint: Path | None):
        self.steps = steps
        where = f" The last checkpoint in {checkpoint.parent} is from before it and untouched." \
            if checkpoint is not None and checkpoint.exists() else ""
        super().__init__(
            f"the loss or its gradients became non-finite at step {steps[0]} ({len(steps)} step(s) so far); those "
            f"updates were skipped, so the weights and EMAs are those from before it. Lower the learning rate (now "
            f"{lr}), keep grad clipping on, and check that the data is finite and in [-1, 1].{where}")


@contextlib.contextmanager
def stop_on_signals(received: list[str]):
    """While training, SIGINT and SIGTERM only ask the loop to stop (the names land in `received`); a second signal
    of the same kind acts as usual. Outside the main thread (a notebook's worker) signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def ask_to_stop(signum, frame):
        received.append(signal.Signals(signum).name)
        signal.signal(signum, previous[signum])  # a second one is not caught: Ctrl-C twice still stops at once

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, ask_to_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class TimeBudget:
    """When train() stops: after `steps` more steps (else at total_steps) or when `minutes` of wall clock have passed.

    Without total_steps (a time budget alone) the curriculum still needs the run's length: the steps after a short
    warm-up (25 steps, or 5% of the budget if that comes first) are timed, and calibrate() fixes total_steps from their
    speed, keeping 5% of what is left for sampling and checkpoints. Those first steps can run slower than the rest
    (a 40-minute CPU run fitted from them used 82% of its budget), so the fit is made once more when 10% of the budget
    has passed, from the speed of the steps since the first fit; the curriculum is then still near its start.

    Under DDP (`sync` given: the maximum of a few integers over the ranks) the ranks must stop at the same step, so no
    rank's own clock stops it: at the ranks' sync points (log lines) rank 0's clock (the `timekeeper`) says for every
    rank whether the budget is spent, what step count it fits, and whether any rank received a signal.
    """

    def __init__(self, step: int, *, steps: int | None, minutes: float | None, total_steps: int | None,
                 sync: Callable[[list[int]], list[int]] | None = None, timekeeper: bool = True):
        if total_steps is None and minutes is None and steps is None:
            raise ValueError("give total_steps, steps or minutes: the curriculum needs to know the run's length")
        if (steps is not None and steps < 1) or (minutes is not None and not minutes > 0):
            raise ValueError(f"train() needs steps >= 1 and minutes > 0, got steps={steps}, minutes={minutes}")
        self.start = time.monotonic()
        self.end_step = step + steps if steps is not None else (total_steps or math.inf)
        self._limit = self.end_step
        self.deadline = self.start + 60 * minutes if minutes is not None else math.inf
        # 3 warm-up steps are not timed; with no deadline there is nothing to fit (the run ends at its step count)
        self._timed_from = step + 3 if total_steps is None and minutes is not None else None
        self._timed_at = 0.0
        self._fits = 0
        self.sync, self.timekeeper = sync, timekeeper
        self.shared, self.expired, self._proposed = sync is not None, False, None

    def after_step(self, step: int, received: list[str], *, synced: bool) -> tuple[bool, int | None]:
        """Called after every step: (whether a signal stops the run now, the run's total_steps if it was fitted now).

        Alone, a signal stops the run at once and a fit applies at once. Under DDP both wait for a sync point, where
        the ranks agree; a signal another rank received is added to `received` (torchrun forwards it to every rank).
        """
        fitted = self.calibrate(step)
        if not self.shared:
            return bool(received), fitted
        if not synced:
            return False, None
        expired, proposed = self.proposal() if self.timekeeper else (0, -1)
        signal, expired, proposed = self.sync([int(bool(received)), expired, proposed])
        if signal and not received:
            received.append("SIGTERM")
        return bool(signal), self.agree(expired, proposed)

    def running(self, step: int) -> bool:
        if self.shared:
            return step < self.end_step and not self.expired
        return step < self.end_step and time.monotonic() < self.deadline

    def calibrate(self, step: int) -> int | None:
        """Called after each step: the run's total_steps when it is fitted (twice at most), else None (always None
        when shared: the fit waits for agree())."""
        if self._timed_from is None:
            return None
        now = time.monotonic()
        budget = self.deadline - self.start
        if step == self._timed_from and self._fits == 0:
            self._timed_at = now
            return None
        if step <= self._timed_from:
            return None
        if self._fits == 0:
            due = step >= self._timed_from + 25 or now - self.start > 0.05 * budget
        else:
            due = now - self.start >= 0.10 * budget
        if not due:
            return None
        per_step = (now - self._timed_at) / (step - self._timed_from)
        total = step + max(1, int(0.95 * (self.deadline - now) / per_step))
        self._fits += 1
        self._timed_from, self._timed_at = (step, now) if self._fits == 1 else (None, 0.0)
        if self.shared:
            self._proposed = total
            return None
        self.end_step = min(self._limit, total)
        return total

    def proposal(self) -> tuple[int, int]:
        """(1 if this clock has passed the deadline else 0, the step count fitted since the last call or -1)."""
        total, self._proposed = self._proposed, None
        return int(time.monotonic() >= self.deadline), -1 if total is None else total

    def agree(self, expired: int, total: int) -> int | None:
        """Apply the timekeeper's proposal (on every rank): the fitted total_steps if there is one, else None."""
        self.expired = self.expired or bool(expired)
        if total < 0:
            return None
        self.end_step = min(self._limit, total)
        return total

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class RunLock:
    """An exclusive lock on a run folder for the run's life (OUT/.lock: the owner's pid and host). A second run into
    the same folder is refused while the first lives; the lock of a run that died (its process gone, on this host) is
    taken over with a message. Released on exit."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self.held = False

    def __enter__(self) -> "RunLock":
        import json
        import os
        import socket

        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.created = not self.folder.exists()  # a refused run leaves no empty folder behind
        for _ in range(3):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                except (OSError, ValueError):  # being written this instant, or damaged
                    owner = {}
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                    print(f"{self.folder}: the run that held it (pid {owner['pid']}, since {owner.get('since')}) is "
                          "gone; taking its lock over", file=__import__("sys").stderr)
                    self.path.unlink(missing_ok=True)
                    continue
                if not owner:
                    time.sleep(0.2)
                    continue
                raise ValueError(f"{self.folder} is in use by another run (pid {owner.get('pid')} on "
                                 f"{owner.get('host')}, since {owner.get('since')}): wait for it to finish, or train "
                                 f"into another --out (if that run is gone, delete {self.path})") from None
            except OSError as exc:
                raise ValueError(f"--out {self.folder} cannot be written ({exc.strerror or exc}): choose another "
                                 "place") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise ValueError(f"{self.folder} is in use by another run (its lock {self.path} cannot be read): delete it if "
                         "no run is using the folder")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            if self.created and self.folder.is_dir() and not any(self.folder.iterdir()):
                self.folder.rmdir()


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def fused_adam_supported(device: torch.device) -> bool:
    """Fused Adam skips a step on a device-side flag (no host sync): CUDA, and CPU from torch 2.4."""
    try:
        torch.optim.Adam([nn.Parameter(torch.zeros(1, device=device))], fused=True)
        return True
    except (RuntimeError, ValueError, TypeError):
        return False


def optimizer_step(optimizer: torch.optim.Optimizer, *, skip: torch.Tensor, fused: bool) -> None:
    """optimizer.step() unless `skip` (a 0-dim tensor, 1.0 = skip): on the device with fused Adam (it leaves weights
    and moments untouched where found_inf is set), else with a host check (CPU before torch 2.4, cheap there)."""
    if fused:
        optimizer.found_inf = skip
        optimizer.step()
    elif not skip.item():
        optimizer.step()


def check_compile_with_jvp(compile: bool, *, uses_jvp: bool, method_name: str, has_dropout: bool) -> None:
    """A compiled network with dropout cannot train a JVP method: the eager JVP would draw other dropout masks.
    With compile on, a compilation that fails (no C++ compiler, an unsupported op) falls back to eager execution with
    a warning instead of stopping the run (an uncaught compiler error could leave compile workers that kept the
    process from exiting)."""
    if compile and uses_jvp and has_dropout:
        raise ValueError(f"--compile with dropout cannot be used with {method_name}: its JVP runs eagerly and would "
                         "not draw the compiled pass's dropout masks. Use --dropout 0 or --no-compile")
    if compile:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
