"""Consistency training in isolation: CM's CT (Algorithm 3) and improved consistency training, iCT."""

from __future__ import annotations

import torch
from torch import nn

from ..schedule import (
    RHO,
    SIGMA_DATA,
    SIGMA_MAX,
    SIGMA_MIN,
    ct_ema_decay,
    ct_num_scales,
    ict_num_scales,
    lognormal_index_probs,
)
from .base import ConsistencyMethod, Distance, MethodOutput, check_lognormal, check_range, consistency_pair


class ConsistencyTraining(ConsistencyMethod):
    """CM Algorithm 3: n ~ U{1..N(k)-1}, lambda = 1, target = EMA with mu(k); CM's CIFAR-10 defaults.

    loss = lambda(t_n) d(f_theta(x + t_{n+1} z, t_{n+1}), f_theta-(x + t_n z, t_n)), the same z on both sides.
    """

    name = "ct"

    def __init__(
        self,
        *,
        s0: int = 2,  # CM appendix C
        s1: int = 150,  # CM appendix C, CIFAR-10 (200 on ImageNet 64)
        mu0: float = 0.9,  # CM appendix C, CIFAR-10 (0.95 on ImageNet 64)
        distance: str | Distance = "l2",  # CM uses LPIPS; L2 is its option without a pretrained network
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
        sigma_data: float = SIGMA_DATA,
    ):
        super().__init__(sigma_min, sigma_max, rho, distance, sigma_data)
        check_range(self.name, s0=(s0, s0 >= 1, ">= 1"), s1=(s1, s1 >= s0, f">= s0 = {s0}"),
                    mu0=(mu0, 0 <= mu0 < 1, "in [0, 1)"))
        self.s0, self.s1, self.mu0 = s0, s1, mu0

    def num_scales(self, step: int, total_steps: int) -> int:
        """N(k), the number of discretisation levels at step k."""
        return ct_num_scales(step, total_steps, self.s0, self.s1)

    def target_decay(self, step: int, total_steps: int) -> float | None:
        return ct_ema_decay(self.num_scales(step, total_steps), self.s0, self.mu0)

    def sample_indices(self, sigmas: torch.Tensor, batch: int) -> torch.Tensor:
        """0-based n in {0..N-2}, uniform (CM): t_n = sigmas[n], t_{n+1} = sigmas[n + 1]."""
        return torch.randint(0, len(sigmas) - 1, (batch,), device=sigmas.device)

    def weight(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t_cur)  # lambda = 1 (CM)

    def __call__(self, model: nn.Module, target: nn.Module | None, x: torch.Tensor,
                 class_labels: torch.Tensor | None = None, *, step: int, total_steps: int) -> MethodOutput:
        num_scales = self.num_scales(step, total_steps)
        sigmas = self.sigmas(num_scales, x.device)
        n = self.sample_indices(sigmas, x.shape[0])
        t_cur, t_next = sigmas[n], sigmas[n + 1]  # (B,) each
        z = torch.randn_like(x)  # the same z on both sides (CM Algorithm 3)
        b = (-1, 1, 1, 1)
        online, target_out = consistency_pair(
            model, target, x + t_next.view(b) * z, t_next, x + t_cur.view(b) * z, t_cur, class_labels)
        loss = self.weight(t_cur, t_next) * self.distance(online.float(), target_out.float())
        return MethodOutput(loss, {"N": num_scales})


class ImprovedConsistencyTraining(ConsistencyTraining):
    """iCT: pseudo-Huber distance, lambda = 1/(t_{n+1} - t_n), lognormal index sampling, exponential N(k), mu = 0."""

    name = "ict"

    def __init__(
        self,
        *,
        s0: int = 10,  # iCT section 3.4
        s1: int = 1280,  # iCT section 3.4
        p_mean: float = -1.1,  # iCT section 3.5
        p_std: float = 2.0,  # iCT section 3.5
        distance: str | Distance = "pseudo_huber",  # iCT section 3.3
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
        sigma_data: float = SIGMA_DATA,
    ):
        ConsistencyMethod.__init__(self, sigma_min, sigma_max, rho, distance, sigma_data)  # no mu0: no target EMA
        check_range(self.name, s0=(s0, s0 >= 1, ">= 1"), s1=(s1, s1 >= s0, f">= s0 = {s0}"))
        check_lognormal(self.name, p_mean, p_std, sigma_min, sigma_max)
        self.s0, self.s1, self.p_mean, self.p_std = s0, s1, p_mean, p_std
        self._probs: dict[tuple, torch.Tensor] = {}

    def num_scales(self, step: int, total_steps: int) -> int:
        return ict_num_scales(step, total_steps, self.s0, self.s1)

    def target_decay(self, step: int, total_steps: int) -> float | None:
        return None  # iCT section 3.2: theta- = stopgrad(theta)

    def sample_indices(self, sigmas: torch.Tensor, batch: int) -> torch.Tensor:
        """n from iCT's discretised lognormal over the intervals [t_n, t_{n+1}]."""
        key = (len(sigmas), str(sigmas.device))
        if key not in self._probs:
            self._probs[key] = lognormal_index_probs(sigmas, self.p_mean, self.p_std).float()
        return torch.multinomial(self._probs[key], batch, replacement=True)

    def weight(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return 1.0 / (t_next - t_cur)  # iCT section 3.5
