"""Preconditioning wrappers. Both are called as model(x, sigma, class_labels=None) -> x0.

ConsistencyModel: f(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t)) with f(x, eps) = x exactly (CM eq. 7 and
appendix C). EDMDenoiser: D(x, sigma) with EDM's scalings (EDM table 1), the diffusion teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from .schedule import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN


class _Preconditioned(nn.Module):
    def __init__(self, net: nn.Module, sigma_data: float, sigma_min: float, sigma_max: float):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.scalings(sigma.float())
        b = (-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
        # The network may run in bf16 under autocast; the skip path and the result stay in x's precision.
        out = self.net(c_in.view(b).to(x.dtype) * x, c_noise, class_labels)
        return c_skip.view(b) * x + c_out.view(b) * out.to(x.dtype)


class ConsistencyModel(_Preconditioned):
    """f_theta(x, t), parameterised so that f(x, sigma_min) = x exactly (CM appendix C)."""

    def __init__(self, net: nn.Module, *, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
        super().__init__(net, sigma_data, sigma_min, sigma_max)

    def scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd, eps = self.sigma_data, self.sigma_min
        c_skip = sd**2 / ((t - eps) ** 2 + sd**2)
        c_out = (t - eps) * sd / (t**2 + sd**2).sqrt()
        c_in = 1 / (t**2 + sd**2).sqrt()
        c_noise = t.log() / 4  # EDM's ln(t)/4; the UNet's embedding scales it by 1000 (= the CM code's 250 ln t)
        return c_skip, c_out, c_in, c_noise


class EDMDenoiser(_Preconditioned):
    """D_phi(x, sigma), the EDM-preconditioned denoiser (EDM table 1); the diffusion teacher for distillation."""

    def __init__(self, net: nn.Module, *, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
        super().__init__(net, sigma_data, sigma_min, sigma_max)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise
