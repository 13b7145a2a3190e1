"""ECT (Geng et al. 2024, "Consistency Models Made Easy"): continuous-time consistency training that tunes a
diffusion model into a consistency model, as the released code (locuslab/ect) does it.

    t ~ lognormal(P_mean, P_std), not clamped;  r = max(0, t (1 - (1 + k sigmoid(-b t)) / q^(stage + 1)))
    loss = d(f_theta(x + t z, t), f_theta-(x + r z, r)) / (t - r),  theta- = stopgrad(theta), one z for both
    d(a, b) = sqrt(||a - b||^2 + c^2) - c  with c = 0 by default (the plain L2 norm; c is not scaled by dimension)
    where r = 0 the target is the clean image x itself (the boundary condition f(x, 0) = x)

The model is a consistency model with sigma_min = 0, i.e. exactly EDM's preconditioning, so an EDM teacher's network
is a valid starting point: `wrap(net)` copies the teacher's weights and the student starts as the teacher's one-step
denoiser. Stages: the run is split into `stages` equal parts and t - r halves (q = 2) from one to the next (the code
doubles every fixed number of iterations; 8 stages on CIFAR-10). Without a teacher the same objective trains from
scratch (its first stage is then mostly denoising: r = 0 for t < ln 7, four fifths of the draws). Two-step sampling
uses ECT's mid_t = 0.821.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..sampling import Sampler, consistency_sampler, consistency_sigmas, register_sampler
from ..schedule import RHO, SIGMA_DATA, SIGMA_MAX
from .base import ConsistencyMethod, Distance, MethodOutput, check_lognormal, check_range, consistency_pair
from .teacher import as_denoiser, copy_teacher_weights, teacher_net_options


def ect_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = RHO, **_) -> list[float]:
    """ECT's levels: one step from sigma_max; two steps add ECT's mid_t = 0.821 (its code's default); more steps,
    Karras levels."""
    if steps == 2:
        return [sigma_max, 0.821]
    return consistency_sigmas(steps, sigma_min, sigma_max, rho)


register_sampler("ect", Sampler(consistency_sampler, ect_sigmas, lambda k: k, (1, 2)))


def norm_distance(c: float = 0.0) -> Distance:
    """ECT's sqrt(||x - y||^2 + c^2) - c over the whole sample, c unscaled (0: the L2 norm itself)."""

    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        squared = (x - y).flatten(1).square().sum(1)
        return (squared + c * c + 1e-20).sqrt() - c  # 1e-20: a finite gradient where x == y and c = 0

    distance.__name__ = f"ect_norm_c{c:g}"
    return distance


class EasyConsistencyTraining(ConsistencyMethod):
    """ECT, tuned from an EDM `teacher` (the published method) or, without one, trained from scratch."""

    name = "ect"
    sampler = "ect"  # two steps at ECT's mid_t = 0.821
    curriculum = "stage"

    def __init__(
        self,
        teacher: nn.Module | Callable[..., torch.Tensor] | None = None,
        *,
        stages: int = 8,  # ECT's CIFAR-10 run: 200k iterations, t - r halved every 25k
        q: float = 2.0,  # ECT
        k: float = 8.0,  # ECT
        b: float = 1.0,  # ECT
        p_mean: float = -1.1,  # ECT (as iCT)
        p_std: float = 2.0,  # ECT (as iCT)
        c: float = 0.0,  # ECT's CIFAR-10 code: the plain L2 norm (0.06 on ImageNet 64)
        distance: str | Distance | None = None,  # None: norm_distance(c)
        sigma_min: float = 0.0,  # the boundary is at t = 0: EDM's preconditioning, as the teacher's
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
        sigma_data: float = SIGMA_DATA,
    ):
        super().__init__(sigma_min, sigma_max, rho, distance if distance is not None else norm_distance(c), sigma_data)
        check_range(self.name, stages=(stages, stages >= 1, ">= 1"), q=(q, q > 1, "> 1"), k=(k, k >= 0, ">= 0"),
                    b=(b, True, ""), c=(c, c >= 0, ">= 0"))
        check_lognormal(self.name, p_mean, p_std, 1e-30, 1e30)  # t is not clamped (ECT): it must only be finite
        self._teacher = as_denoiser(teacher).eval().requires_grad_(False) if teacher is not None else None
        self.tuned = teacher is not None
        self.stages, self.q, self.k, self.b, self.p_mean, self.p_std, self.c = stages, q, k, b, p_mean, p_std, c

    @property
    def net_options(self) -> dict:
        return teacher_net_options(self._teacher)

    def stage(self, step: int, total_steps: int) -> int:
        """The curriculum stage at step k: 0 .. stages - 1, equal lengths."""
        return min(step * self.stages // max(total_steps, 1), self.stages - 1)

    def r_of_t(self, t: torch.Tensor, stage: int) -> torch.Tensor:
        """r(t) = t (1 - (1 + k sigmoid(-b t)) / q^(stage + 1)), clamped at 0 (ECT's code)."""
        r = t * (1 - (1 + self.k * torch.sigmoid(-self.b * t)) / self.q ** (stage + 1))
        return r.clamp(min=0)

    def wrap(self, net: nn.Module) -> nn.Module:
        """The consistency model (sigma_min = 0: EDM's scalings); tuned, it starts as the teacher's denoiser."""
        if self._teacher is not None:
            copy_teacher_weights(self._teacher, net)
        return super().wrap(net)

    def __call__(self, model: nn.Module, target: nn.Module | None, x: torch.Tensor,
                 class_labels: torch.Tensor | None = None, *, step: int, total_steps: int) -> MethodOutput:
        stage = self.stage(step, total_steps)
        t = (torch.randn(x.shape[0], device=x.device) * self.p_std + self.p_mean).exp()
        r = self.r_of_t(t, stage)
        z = torch.randn_like(x)
        b = (-1, 1, 1, 1)
        # The target pass runs on every sample (rows with r = 0 at a tiny level instead of log 0), then the boundary
        # rows take the clean image, as ECT's code does.
        online, target_out = consistency_pair(model, target, x + t.view(b) * z, t, x + r.view(b) * z,
                                              r.clamp(min=1e-8), class_labels)
        target_out = torch.where((r > 0).view(b), target_out, x)
        loss = self.distance(online.float(), target_out.float()) / (t - r)  # ECT: weight 1 / (t - r)
        return MethodOutput(loss, {"stage": stage})
