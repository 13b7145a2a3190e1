"""One-step and multistep sampling from a consistency model (CM Algorithm 1).

Samplers are pure functions: they take the model, a shape and the noise levels, draw noise from `generator` (on the
generator's device, then moved, so a seed gives the same images on any device) and do no I/O.
"""

from __future__ import annotations

import torch
from torch import nn

from .schedule import RHO, SIGMA_MAX, SIGMA_MIN, karras_sigmas
from .utils import module_device, randn


def default_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> list[float]:
    """tau_1 = T > tau_2 > ... > tau_K for K-step sampling: the K+1 Karras levels from T down, without sigma_min.

    For K = 1 this is [T] (one-step sampling); K = 2 gives [80, 2.51] with the default constants.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return karras_sigmas(steps + 1, sigma_min, sigma_max, rho).flip(0)[:-1].tolist()


@torch.no_grad()
def sample(
    model: nn.Module,
    shape: tuple[int, ...],
    sigmas: list[float] | None = None,
    *,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    sigma_min: float = SIGMA_MIN,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling (CM Algorithm 1); `sigmas` defaults to [T] (one step). Returns (B, C, H, W).

    x = f(tau_1 z, tau_1); then for each later tau: x = f(x + sqrt(tau^2 - eps^2) z', tau).
    `x_init`, if given, replaces the first noisy input tau_1 z (used by editing and interpolation).
    """
    sigmas = list(sigmas) if sigmas is not None else [getattr(model, "sigma_max", SIGMA_MAX)]
    if any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas}")
    if sigmas[-1] < sigma_min:
        raise ValueError(f"sigmas must stay >= sigma_min={sigma_min}, got {sigmas}")
    device = module_device(model)
    x = x_init.to(device) if x_init is not None else sigmas[0] * randn(shape, generator, device)
    x = model(x, sigmas[0], class_labels)
    for tau in sigmas[1:]:
        x = x + (tau**2 - sigma_min**2) ** 0.5 * randn(tuple(x.shape), generator, device)
        x = model(x, tau, class_labels)
    return x


def sample_onestep(
    model: nn.Module, shape: tuple[int, ...], *, generator: torch.Generator | None = None, class_labels: torch.Tensor | None = None
) -> torch.Tensor:
    """One network evaluation: x = f(T z, T)."""
    return sample(model, shape, None, generator=generator, class_labels=class_labels)


def sample_multistep(
    model: nn.Module,
    shape: tuple[int, ...],
    steps: int = 2,
    *,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """K network evaluations over default_sigmas(K)."""
    sigma_max = getattr(model, "sigma_max", SIGMA_MAX)
    return sample(model, shape, default_sigmas(steps, sigma_max=sigma_max), generator=generator, class_labels=class_labels)
