"""Exponential moving averages of a network's parameters, on top of torch.optim.swa_utils.AveragedModel.

Two uses: the target network theta- of CM's CT/CD (decay mu(k), changing with the curriculum) and the slow EMA that
samples are drawn from (a fixed decay, 0.9999 in CM). iCT needs no target copy at all: theta- = stopgrad(theta).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class _EMAUpdate:
    """multi_avg_fn for AveragedModel whose decay can change between updates (CM's mu(k))."""

    def __init__(self, decay: float):
        self.decay = decay
        self.keep: torch.Tensor | None = None  # 0-dim, 1 = apply this update, 0 = skip it (decided on the device)

    @torch.no_grad()
    def __call__(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # ema <- decay * ema + (1 - decay) * param
        if self.keep is None:
            torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
            return
        weight = (1.0 - self.decay) * self.keep
        try:
            torch._foreach_lerp_(ema_params, params, weight)  # a tensor weight: no host sync
        except (TypeError, RuntimeError):  # torch without that overload: one weight tensor per parameter
            torch._foreach_lerp_(ema_params, params, [weight] * len(ema_params))


class EMA(AveragedModel):
    """A frozen copy of `model` updated as ema <- decay * ema + (1 - decay) * model; call it like the model.

    The first `update(model)` copies the weights (AveragedModel's convention), so a fresh EMA equals the model.
    """

    def __init__(self, model: nn.Module, decay: float):
        self._update_fn = _EMAUpdate(decay)
        super().__init__(model, multi_avg_fn=self._update_fn, use_buffers=True)
        self.requires_grad_(False)  # gradients never reach an EMA (CM: theta- <- stopgrad(...))
        self.update(model)

    @property
    def decay(self) -> float:
        return self._update_fn.decay

    def update(self, model: nn.Module, decay: float | None = None, *, keep: torch.Tensor | None = None) -> None:
        """One EMA step towards `model`; with `keep` (a 0-dim tensor, 0 or 1) the step applies only where keep = 1."""
        if decay is not None:
            self._update_fn.decay = decay
        self._update_fn.keep = keep
        try:
            self.update_parameters(model)
        finally:
            self._update_fn.keep = None
