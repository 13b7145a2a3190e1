"""Distillation mode: the EDM teacher's training loss and consistency distillation, CD (CM Algorithm 2).

Both follow the loss interface of losses.py (per-sample loss from __call__, target_decay, num_scales), so the same
ConsistencyTrainer trains the teacher (pass EDMLoss and an EDMDenoiser) and the student (pass ConsistencyDistillation).
Any callable denoiser(x, sigma, class_labels) -> x0 can be the teacher, e.g. a pretrained EDM network: see
`as_denoiser`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .losses import Distance, _ConsistencyObjective, consistency_pair
from .schedule import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from .solvers import euler_step, heun_step

SOLVERS = {"euler": euler_step, "heun": heun_step}


class EDMLoss:
    """EDM's denoising loss: ln(sigma) ~ N(P_mean, P_std^2), weight (sigma^2 + sd^2) / (sigma sd)^2 (EDM eq. 8, table 1)."""

    def __init__(self, *, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = SIGMA_DATA):  # EDM table 1
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data

    def num_scales(self, step: int, total_steps: int) -> int:
        return 0  # continuous noise levels: nothing to log

    def target_decay(self, step: int, total_steps: int) -> float | None:
        return None  # no target network

    def __call__(self, model: nn.Module, target: nn.Module, x: torch.Tensor, *, step: int, total_steps: int,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = (torch.randn(x.shape[0], device=x.device) * self.p_std + self.p_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        noisy = x + sigma.view(-1, 1, 1, 1) * torch.randn_like(x)
        return weight * (model(noisy, sigma, class_labels).float() - x).square().flatten(1).mean(1)


class _CallableDenoiser(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        return self.fn(x, sigma, class_labels)


def as_denoiser(fn: Callable[..., torch.Tensor]) -> nn.Module:
    """Wrap any callable fn(x, sigma, class_labels) -> x0 (a denoiser in the EDM convention: data in [-1, 1],
    x = x0 + sigma * noise) as a teacher module. sigma arrives as a float or a (B,) tensor."""
    return fn if isinstance(fn, nn.Module) else _CallableDenoiser(fn)


class ConsistencyDistillation(_ConsistencyObjective):
    """CM Algorithm 2: x_hat = one teacher ODE step from (x + t_{n+1} z, t_{n+1}) to t_n; target network with fixed mu."""

    def __init__(
        self,
        teacher: nn.Module | Callable[..., torch.Tensor],
        *,
        solver: str = "heun",  # CM uses Heun
        num_scales: int = 18,  # CM: N = 18 on CIFAR-10 (40 on ImageNet 64)
        mu: float = 0.95,  # CM: fixed target decay for CD
        distance: str | Distance = "pseudo_huber",
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
    ):
        super().__init__(sigma_min, sigma_max, rho, distance)
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}: choose one of {sorted(SOLVERS)}")
        self.teacher = as_denoiser(teacher).eval().requires_grad_(False)
        self.solver, self.n, self.mu = solver, num_scales, mu

    def num_scales(self, step: int, total_steps: int) -> int:
        return self.n

    def target_decay(self, step: int, total_steps: int) -> float | None:
        return self.mu

    def __call__(self, model: nn.Module, target: nn.Module, x: torch.Tensor, *, step: int, total_steps: int,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sigmas = self.sigmas(self.n, x.device)
        n = torch.randint(0, self.n - 1, (x.shape[0],), device=x.device)  # 0-based: t_n = sigmas[n]
        t_cur, t_next = sigmas[n], sigmas[n + 1]
        x_next = x + t_next.view(-1, 1, 1, 1) * torch.randn_like(x)
        self.teacher.to(x.device)
        with torch.no_grad():
            x_hat = SOLVERS[self.solver](self.teacher, x_next, t_next, t_cur, class_labels).float()
        online, target_out = consistency_pair(model, target, x_next, t_next, x_hat, t_cur, class_labels)
        return self.distance(online.float(), target_out.float())  # lambda = 1 (CM)


def student_from_teacher(teacher: nn.Module) -> nn.Module:
    """A ConsistencyModel whose network starts as a copy of an EDMDenoiser's (CM initialises the student this way)."""
    import copy

    from .model import ConsistencyModel

    if not hasattr(teacher, "net"):
        raise TypeError("student_from_teacher needs an EDMDenoiser (a wrapper with .net); build the student yourself "
                        "for other teachers")
    return ConsistencyModel(copy.deepcopy(teacher.net), sigma_data=teacher.sigma_data, sigma_min=teacher.sigma_min,
                            sigma_max=teacher.sigma_max)
