"""Training objectives as small callables: hyper-parameters in __init__, __call__ returns the per-sample loss (B,).

ConsistencyTraining (CM Algorithm 3) and ImprovedConsistencyTraining (iCT) train in isolation; which one you pass to
the trainer is the whole difference, no mode strings.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .schedule import (
    RHO,
    SIGMA_MAX,
    SIGMA_MIN,
    ct_ema_decay,
    ct_num_scales,
    ict_num_scales,
    karras_sigmas,
    lognormal_index_probs,
)

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l2_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample (the CM code's 'l2')."""
    return (x - y).square().flatten(1).mean(1)


def l1_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample."""
    return (x - y).abs().flatten(1).mean(1)


def pseudo_huber_distance(x: torch.Tensor, y: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """iCT's sqrt(||x - y||_2^2 + c^2) - c, the norm over the whole sample, c = 0.00054 sqrt(C*H*W) by default."""
    diff = (x - y).flatten(1)
    if c is None:
        c = 0.00054 * math.sqrt(diff.shape[1])
    return (diff.square().sum(1) + c**2).sqrt() - c


DISTANCES: dict[str, Distance] = {"l2": l2_distance, "l1": l1_distance, "pseudo_huber": pseudo_huber_distance}


def get_distance(distance: str | Distance) -> Distance:
    if callable(distance):
        return distance
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}: choose one of {sorted(DISTANCES)} or pass a callable")
    return DISTANCES[distance]


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def consistency_pair(
    model: nn.Module,
    target: nn.Module,
    x_next: torch.Tensor,
    t_next: torch.Tensor,
    x_cur: torch.Tensor,
    t_cur: torch.Tensor,
    class_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f_theta(x_next, t_next) with gradients, and f_theta-(x_cur, t_cur) under stop-gradient.

    Both passes draw the same dropout masks (iCT section 3.1): the RNG is rewound to the same state for the target.
    """
    start = _rng_state(x_next.device)
    online = model(x_next, t_next, class_labels)
    with torch.no_grad():
        end = _rng_state(x_next.device)
        _set_rng_state(start, x_next.device)
        target_out = target(x_cur, t_cur, class_labels)
        _set_rng_state(end, x_next.device)
    return online, target_out.detach()


class _ConsistencyObjective:
    """What CT, iCT and CD share: the noise levels for a given N, cached on the data's device."""

    def __init__(self, sigma_min: float, sigma_max: float, rho: float, distance: str | Distance):
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.distance = get_distance(distance)
        self.distance_name = distance if isinstance(distance, str) else getattr(distance, "__name__", type(distance).__name__)
        self._cache: dict[tuple, torch.Tensor] = {}

    def sigmas(self, num_scales: int, device: torch.device) -> torch.Tensor:
        key = (num_scales, str(device))
        if key not in self._cache:
            self._cache[key] = karras_sigmas(num_scales, self.sigma_min, self.sigma_max, self.rho).float().to(device)
        return self._cache[key]

    def num_scales(self, step: int, total_steps: int) -> int:
        raise NotImplementedError

    def target_decay(self, step: int, total_steps: int) -> float | None:
        """The decay mu(k) of the target network theta-, or None when theta- = stopgrad(theta) (no copy kept)."""
        raise NotImplementedError

    def noise_levels(self, batch: int, device: torch.device, step: int, total_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_cur, t_next), each (B,), with t_cur < t_next: the pair of noise levels each sample is trained on."""
        raise NotImplementedError

    def weight(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """lambda(t_cur, t_next), (B,)."""
        raise NotImplementedError

    def __call__(
        self,
        model: nn.Module,
        target: nn.Module,
        x: torch.Tensor,
        *,
        step: int,
        total_steps: int,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample loss lambda d(f_theta(x + t_next z, t_next), f_theta-(x + t_cur z, t_cur)), shape (B,)."""
        t_cur, t_next = self.noise_levels(x.shape[0], x.device, step, total_steps)
        z = torch.randn_like(x)  # the same z on both sides (CM Algorithm 3)
        b = (-1, 1, 1, 1)
        online, target_out = consistency_pair(
            model, target, x + t_next.view(b) * z, t_next, x + t_cur.view(b) * z, t_cur, class_labels
        )
        return self.weight(t_cur, t_next) * self.distance(online.float(), target_out.float())


class ConsistencyTraining(_ConsistencyObjective):
    """CM Algorithm 3: n ~ U{1..N(k)-1}, lambda = 1, target = EMA with mu(k); CM's CIFAR-10 defaults."""

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
    ):
        super().__init__(sigma_min, sigma_max, rho, distance)
        self.s0, self.s1, self.mu0 = s0, s1, mu0

    def num_scales(self, step: int, total_steps: int) -> int:
        return ct_num_scales(step, total_steps, self.s0, self.s1)

    def target_decay(self, step: int, total_steps: int) -> float | None:
        return ct_ema_decay(self.num_scales(step, total_steps), self.s0, self.mu0)

    def sample_indices(self, sigmas: torch.Tensor, batch: int) -> torch.Tensor:
        return torch.randint(0, len(sigmas) - 1, (batch,), device=sigmas.device)

    def noise_levels(self, batch: int, device: torch.device, step: int, total_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        sigmas = self.sigmas(self.num_scales(step, total_steps), device)
        n = self.sample_indices(sigmas, batch)  # 0-based: t_n = sigmas[n], t_{n+1} = sigmas[n + 1]
        return sigmas[n], sigmas[n + 1]

    def weight(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t_cur)  # lambda = 1 (CM)


class ImprovedConsistencyTraining(ConsistencyTraining):
    """iCT: pseudo-Huber distance, lambda = 1/(t_{n+1} - t_n), lognormal index sampling, exponential N(k), mu = 0."""

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
    ):
        super().__init__(s0=s0, s1=s1, mu0=0.0, distance=distance, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
        self.p_mean, self.p_std = p_mean, p_std
        self._probs: dict[tuple, torch.Tensor] = {}

    def num_scales(self, step: int, total_steps: int) -> int:
        return ict_num_scales(step, total_steps, self.s0, self.s1)

    def target_decay(self, step: int, total_steps: int) -> float | None:
        return None  # iCT section 3.2: theta- = stopgrad(theta)

    def sample_indices(self, sigmas: torch.Tensor, batch: int) -> torch.Tensor:
        key = (len(sigmas), str(sigmas.device))
        if key not in self._probs:
            self._probs[key] = lognormal_index_probs(sigmas, self.p_mean, self.p_std).float()
        return torch.multinomial(self._probs[key], batch, replacement=True)

    def weight(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return 1.0 / (t_next - t_cur)  # iCT section 3.5


class EasyConsistencyTraining(_ConsistencyObjective):
    """ECT (Geng et al. 2024): continuous-time CT. t ~ lognormal, r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t))).

    Early stages put r at the boundary for small t, where the target is the data itself (a denoising objective that
    learns fast); each stage halves t - r, tightening towards consistency. theta- = stopgrad(theta), weight 1/(t - r).
    The paper starts from a pretrained EDM teacher; started from scratch it is a fast-converging CT curriculum.
    """

    def __init__(
        self,
        *,
        stages: int = 6,  # stage length = total_steps / stages (ECT doubles every fixed number of iterations)
        q: float = 2.0,  # ECT
        k: float = 8.0,  # ECT
        b: float = 1.0,  # ECT
        p_mean: float = -1.1,  # ECT / iCT
        p_std: float = 2.0,  # ECT / iCT
        distance: str | Distance = "pseudo_huber",
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ):
        super().__init__(sigma_min, sigma_max, rho, distance)
        self.stages, self.q, self.k, self.b, self.p_mean, self.p_std = stages, q, k, b, p_mean, p_std

    def num_scales(self, step: int, total_steps: int) -> int:
        """The current stage (logged where the discrete recipes log N)."""
        return min(step * self.stages // max(total_steps, 1), self.stages - 1)

    def target_decay(self, step: int, total_steps: int) -> float | None:
        return None

    def r_of_t(self, t: torch.Tensor, stage: int) -> torch.Tensor:
        """ECT's mapping r(t) at a stage, clamped to [sigma_min, t): at sigma_min the target is the data + eps z."""
        decay = self.q ** -(stage + 1)
        r = t * (1 - decay * (1 + self.k * torch.sigmoid(-self.b * t)))
        return r.clamp(min=self.sigma_min)

    def noise_levels(self, batch: int, device: torch.device, step: int, total_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = (torch.randn(batch, device=device) * self.p_std + self.p_mean).exp()
        t = t.clamp(2 * self.sigma_min, self.sigma_max)  # keeps t - r >= sigma_min > 0
        return self.r_of_t(t, self.num_scales(step, total_steps)), t

    def weight(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return 1.0 / (t_next - t_cur)  # ECT: 1 / (t - r)
