"""Exponential moving averages of a network's parameters, as fused multi-tensor updates with no host synchronisation.

Two uses: the target network theta- of CM's CT/CD (decay mu(k), changing with the curriculum) and the slow EMA that
samples are drawn from (a fixed decay, 0.9999 in CM). iCT needs no target copy at all: theta- = stopgrad(theta).
(torch.optim.swa_utils.AveragedModel, which this replaced, reads a step counter on the host at every update: one
device synchronisation per EMA per step on a GPU.)
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of `model` (`.module`) updated as ema <- decay * ema + (1 - decay) * model; call it like the model.

    A fresh EMA equals the model. Floating-point buffers are averaged like the parameters, others copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)  # gradients never reach an EMA (CM: theta- <- stopgrad(...))
        self.decay = decay
        self._pairs: tuple | None = None  # (source model, averaged, copied): the tensor lists, made once

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _tensors(self, model: nn.Module) -> tuple[list, list, list, list]:
        if self._pairs is None or self._pairs[0] is not model:
            mine = [*self.module.parameters(), *self.module.buffers()]
            theirs = [*model.parameters(), *model.buffers()]
            if len(mine) != len(theirs):
                raise ValueError("the EMA's network and the model differ: build the EMA from this model")
            floating = [(a, b) for a, b in zip(mine, theirs) if a.is_floating_point()]
            other = [(a, b) for a, b in zip(mine, theirs) if not a.is_floating_point()]
            self._pairs = (model, [a for a, _ in floating], [b for _, b in floating], [a for a, _ in other],
                           [b for _, b in other])
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None, *, keep: torch.Tensor | None = None) -> None:
        """One EMA step towards `model`; with `keep` (a 0-dim tensor, 0 or 1) the step applies only where keep = 1,
        decided on the device (a skipped training step leaves the EMA as it was)."""
        if decay is not None:
            self.decay = decay
        ema, params, ema_other, other = self._tensors(model)
        weight = 1.0 - self.decay
        if keep is None:
            torch._foreach_lerp_(ema, params, weight)
        else:
            weight = keep * weight  # a 0-dim tensor on the device
            try:
                torch._foreach_lerp_(ema, params, weight)  # a tensor weight: no host sync
            except (TypeError, RuntimeError):  # torch without that overload: one weight tensor per parameter
                torch._foreach_lerp_(ema, params, [weight] * len(ema))
        if ema_other:
            torch._foreach_copy_(ema_other, other)
