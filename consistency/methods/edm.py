"""The diffusion teacher's objective: EDM's denoising loss (Karras et al. 2022), trained on an EDMDenoiser."""

from __future__ import annotations

import torch
from torch import nn

from ..model import EDMDenoiser
from ..schedule import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from .base import Method, MethodOutput, check_levels, check_lognormal


class EDMLoss(Method):
    """EDM's loss: ln(sigma) ~ N(P_mean, P_std^2), weight (sigma^2 + sd^2) / (sigma sd)^2 (EDM eq. 8, table 1).

    The model is a denoiser D(x, sigma) sampled with EDM's Heun sampler; it is the teacher for distillation.
    """

    name = "edm"
    sampler = "edm"
    # EDM's network embeds c_noise = ln(sigma) / 4 as it is (its DDPM++ positional embedding), not CM's 1000x: a
    # student keeps its teacher's network, and sCM's tangent holds dF/dt, which the 1000x scale makes ~1000x larger
    # (sCM section 4.1; sCD from a 1000x teacher diverged on MNIST, README).
    net_options = {"time_scale": 1.0}

    def __init__(self, *, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = SIGMA_DATA,  # EDM table 1
                 sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):  # the sampler's range (EDM)
        check_levels(self.name, sigma_min, sigma_max, sigma_data)
        check_lognormal(self.name, p_mean, p_std, sigma_min, sigma_max)
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def wrap(self, net: nn.Module) -> nn.Module:
        return EDMDenoiser(net, sigma_data=self.sigma_data, sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def __call__(self, model: nn.Module, target: nn.Module | None, x: torch.Tensor,
                 class_labels: torch.Tensor | None = None, *, step: int, total_steps: int) -> MethodOutput:
        sigma = (torch.randn(x.shape[0], device=x.device) * self.p_std + self.p_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        noisy = x + sigma.view(-1, 1, 1, 1) * torch.randn_like(x)
        return MethodOutput(weight * (model(noisy, sigma, class_labels).float() - x).square().flatten(1).mean(1))
