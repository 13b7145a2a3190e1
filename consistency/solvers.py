"""The probability-flow ODE dx/dt = (x - D(x, t)) / t of the VE process (EDM eq. 3 with sigma(t) = t).

euler_step and heun_step move x from t to t_next with a denoiser D(x, sigma, class_labels) -> x0; edm_heun is EDM's
deterministic Algorithm 1 (Heun, with an Euler last step to sigma = 0): the diffusion baseline and CD's teacher
sampler.
"""

from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[..., torch.Tensor]


def _b(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A noise level (scalar or (B,)) shaped to broadcast against x (B, C, H, W)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.view(-1, *[1] * (x.ndim - 1)) if t.ndim else t


def ode_derivative(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor | float, class_labels=None) -> torch.Tensor:
    """dx/dt = (x - D(x, t)) / t."""
    return (x - denoiser(x, t, class_labels)) / _b(t, x)


def euler_step(denoiser: Denoiser, x: torch.Tensor, t, t_next, class_labels=None) -> torch.Tensor:
    """x(t_next) ~ x + (t_next - t) d1 with d1 = (x - D(x, t)) / t (CM eq. for CD with Euler)."""
    return x + (_b(t_next, x) - _b(t, x)) * ode_derivative(denoiser, x, t, class_labels)


def heun_step(denoiser: Denoiser, x: torch.Tensor, t, t_next, class_labels=None) -> torch.Tensor:
    """Heun's second-order step: Euler, then the average of the slopes at both ends (EDM Algorithm 1, lines 5-8).

    t_next must be > 0 (the slope at 0 is undefined); EDM ends with an Euler step to 0 instead.
    """
    dt = _b(t_next, x) - _b(t, x)
    d1 = ode_derivative(denoiser, x, t, class_labels)
    x_euler = x + dt * d1
    d2 = ode_derivative(denoiser, x_euler, t_next, class_labels)
    return x + dt * (d1 + d2) / 2


@torch.no_grad()
def edm_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: list[float],
    *,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """EDM's deterministic sampler (Algorithm 1) from x = sigmas[0] z down the decreasing `sigmas`, which end at 0.

    Heun steps, and an Euler step onto sigma = 0: 2 len(sigmas) - 3 evaluations (18 levels + 0 = 35 on CIFAR-10).
    `generator` is unused (the sampler is deterministic); it is there for the shared signature.
    """
    for i, (t, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x = heun_step(denoiser, x, t, t_next, class_labels) if t_next > 0 else euler_step(denoiser, x, t, t_next, class_labels)
        if callback is not None:
            callback(i, x)
    return x
