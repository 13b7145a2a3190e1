"""Noise levels and curricula: the Karras discretisation, CM's and iCT's N(k), mu(k), lognormal index sampling; the
trainer's learning-rate and sampling-EMA schedules. All pure functions."""

from __future__ import annotations

import math

import torch

SIGMA_MIN = 0.002  # eps, CM / EDM
SIGMA_MAX = 80.0  # T, CM / EDM
RHO = 7.0  # EDM
SIGMA_DATA = 0.5  # EDM


def karras_sigmas(
    n: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The N Karras noise levels t_1 < ... < t_N, ascending, with t_1 = sigma_min and t_N = sigma_max (CM eq. 5),
    computed on `device` (a curriculum's new levels need no copy from the host, so no synchronisation).

    This is the only place the rho formula lives; every other module calls it.
    """
    if n < 2:
        raise ValueError(f"karras_sigmas needs n >= 2 levels, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (lo + ramp * (hi - lo)) ** rho
    # Pin the endpoints exactly: the boundary condition is tested at sigma_min in float arithmetic.
    sigmas[0], sigmas[-1] = sigma_min, sigma_max
    return sigmas.to(dtype)


def ct_num_scales(step: int, total_steps: int, s0: int = 2, s1: int = 150) -> int:
    """CM's curriculum N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1 (CM appendix C; s0=2, s1=150 CIFAR-10)."""
    frac = min(step, total_steps) / max(total_steps, 1)
    # At least 2 levels (one interval), as CM's code guards it: with s0 = 1 the formula gives N(0) = 1.
    return max(math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1), 1) + 1


def ct_ema_decay(num_scales: int, s0: int = 2, mu0: float = 0.9) -> float:
    """CM's target-network decay mu(k) = exp(s0 ln(mu0) / N(k)) (CM appendix C; mu0=0.9 CIFAR-10)."""
    return math.exp(s0 * math.log(mu0) / num_scales)


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's exponential curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1, K' = floor(K / (log2 floor(s1/s0) + 1))."""
    k_prime = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    doublings = step // max(k_prime, 1)
    return min(s0 * 2**doublings, s1) + 1


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """iCT's discretised lognormal over n in {1..N-1}: p(n) ∝ erf((ln t_{n+1}-P_mean)/(√2 P_std)) - erf((ln t_n-P_mean)/(√2 P_std)).

    `sigmas` are the N ascending levels; the result has N-1 entries that sum to 1.
    """
    cdf = torch.erf((sigmas.double().log() - p_mean) / (math.sqrt(2) * p_std))
    probs = cdf[1:] - cdf[:-1]
    return probs / probs.sum()


# ---------------------------------------------------------------------------------------------------- the trainer's
def learning_rate(step: int, *, lr: float, total_steps: int | None, warmup_steps: int = 0,
                  schedule: str = "constant") -> float:
    """The learning rate of step `step` (from 0): a linear warm-up over warmup_steps, then constant (CM, iCT) or a
    cosine decay to 5% of lr at total_steps (for short runs)."""
    rate = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
    if schedule == "cosine" and total_steps:
        progress = min(step / total_steps, 1.0)
        rate *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
    return rate


def ema_warmup_decay(update: int, decay: float, warmup: bool = True) -> float:
    """The sampling EMA's decay at update k: min(decay, (1 + k) / (10 + k)) with the warm-up, else decay.

    The warm-up is TensorFlow's and diffusers': a fixed 0.999 over a 1,000-step run would still hold 0.999^1000 = 37%
    of the initial weights (random ones, or a CD student's teacher weights), while the warm-up averages over roughly
    the last 10% of the steps until it reaches `decay` (0.999 at k = 8,991).
    """
    return min(decay, (1 + update) / (10 + update)) if warmup else decay
