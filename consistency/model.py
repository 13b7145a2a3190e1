"""Preconditioning wrappers, and the interface every model the library trains or samples declares.

The model interface (any nn.Module may implement it; the wrappers here do):
    model(x, sigma, class_labels=None) -> x0     x = x0 + sigma z in the EDM / VE convention, data in [-1, 1],
                                                 sigma a float or a (B,) tensor; returns the clean-image estimate
    model.in_channels: int                       image channels C
    model.num_classes: int | None                classes it is conditioned on (None: unconditional)
    model.sigma_min, model.sigma_max, model.sigma_data
                                                 its noise range (defaults 0.002, 80, 0.5 when absent)
    model.image_shape: (C, H, W) | None          the image size it was trained on; the trainer sets it

ConsistencyModel: f(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t)) with f(x, eps) = x exactly (CM eq. 7
and appendix C). EDMDenoiser: D(x, sigma) with EDM's scalings (EDM table 1), the diffusion teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from .schedule import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN


class Preconditioned(nn.Module):
    """model(x, sigma, class_labels) = c_skip x + c_out F(c_in x, c_noise, class_labels) around a network F."""

    def __init__(self, net: nn.Module, *, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, image_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    @property
    def in_channels(self) -> int:
        return self.net.in_channels

    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

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


class ConsistencyModel(Preconditioned):
    """f_theta(x, t), parameterised so that f(x, sigma_min) = x exactly (CM appendix C)."""

    def scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd, eps = self.sigma_data, self.sigma_min
        c_skip = sd**2 / ((t - eps) ** 2 + sd**2)
        c_out = (t - eps) * sd / (t**2 + sd**2).sqrt()
        c_in = 1 / (t**2 + sd**2).sqrt()
        c_noise = t.log() / 4  # EDM's ln(t)/4; the UNet's embedding scales it by 1000 (= the CM code's 250 ln t)
        return c_skip, c_out, c_in, c_noise


class EDMDenoiser(Preconditioned):
    """D_phi(x, sigma), the EDM-preconditioned denoiser (EDM table 1); the diffusion teacher for distillation."""

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


def noise_range(model: nn.Module) -> tuple[float, float]:
    """(sigma_min, sigma_max) a model declares, with the EDM / CM defaults for a model that declares none."""
    return float(getattr(model, "sigma_min", SIGMA_MIN)), float(getattr(model, "sigma_max", SIGMA_MAX))
