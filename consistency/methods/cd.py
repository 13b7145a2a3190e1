"""Consistency distillation, CD (CM Algorithm 2): a diffusion teacher's ODE step links neighbouring noise levels."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..schedule import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from ..solvers import euler_step, heun_step
from .base import ConsistencyMethod, Distance, MethodOutput, check_range, consistency_pair
from .teacher import TeacherGuidance, as_denoiser, copy_teacher_weights, teacher_net_options

SOLVERS = {"euler": euler_step, "heun": heun_step}


class ConsistencyDistillation(ConsistencyMethod):
    """CM Algorithm 2: x_hat = one teacher ODE step from (x + t_{n+1} z, t_{n+1}) to t_n; target network, fixed mu.

    loss = d(f_theta(x + t_{n+1} z, t_{n+1}), f_theta-(x_hat, t_n)), lambda = 1. `wrap(net)` starts the student
    from the teacher's weights when the teacher is an EDMDenoiser (CM initialises the student this way). With
    `guidance`, the teacher's step is classifier-free guided (teacher.TeacherGuidance, LCM's guided distillation).
    """

    name = "cd"

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
        sigma_data: float = SIGMA_DATA,
        guidance: float | tuple[float, float] | None = None,  # distil the guided teacher: a fixed w, or (w_min, w_max)
    ):
        super().__init__(sigma_min, sigma_max, rho, distance, sigma_data)
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}: choose one of {sorted(SOLVERS)}")
        check_range(self.name, num_scales=(num_scales, num_scales >= 2, ">= 2 (N levels make N - 1 links)"),
                    mu=(mu, 0 <= mu < 1, "in [0, 1)"))
        self._teacher = as_denoiser(teacher).eval().requires_grad_(False)  # not a hyper-parameter: kept out of config
        self.solver, self.num_scales, self.mu = solver, num_scales, mu
        self._guidance = TeacherGuidance(self.name, self._teacher, guidance)
        if self._guidance.range:  # recorded in the config
            self.guidance_min, self.guidance_max = self._guidance.range

    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    @property
    def net_options(self) -> dict:
        return {**teacher_net_options(self._teacher), **self._guidance.net_options}

    def target_decay(self, step: int, total_steps: int) -> float | None:
        return self.mu

    def wrap(self, net: nn.Module) -> nn.Module:
        """The student: a ConsistencyModel around `net`, whose weights are set to the teacher network's."""
        copy_teacher_weights(self._teacher, net)
        return super().wrap(net)

    @torch.no_grad()
    def teacher_step(self, x_next: torch.Tensor, t_next: torch.Tensor, t_cur: torch.Tensor,
                     class_labels: torch.Tensor | None, w: float | torch.Tensor | None = None) -> torch.Tensor:
        """x_hat: one step of the teacher's probability-flow ODE from t_{n+1} to t_n (guided with w when given)."""
        self._teacher.to(x_next.device)
        teacher = self._guidance.teacher(self._teacher, w)
        return SOLVERS[self.solver](teacher, x_next, t_next, t_cur, class_labels).float()

    def __call__(self, model: nn.Module, target: nn.Module | None, x: torch.Tensor,
                 class_labels: torch.Tensor | None = None, *, step: int, total_steps: int) -> MethodOutput:
        sigmas = self.sigmas(self.num_scales, x.device)
        n = torch.randint(0, self.num_scales - 1, (x.shape[0],), device=x.device)  # 0-based: t_n = sigmas[n]
        t_cur, t_next = sigmas[n], sigmas[n + 1]
        x_next = x + t_next.view(-1, 1, 1, 1) * torch.randn_like(x)
        w = self._guidance.draw(x.shape[0], x.device)  # None: the teacher unguided
        x_hat = self.teacher_step(x_next, t_next, t_cur, class_labels, w)
        online, target_out = consistency_pair(model, target, x_next, t_next, x_hat, t_cur, class_labels,
                                              **self._guidance.student(w))
        return MethodOutput(self.distance(online.float(), target_out.float()), {"N": self.num_scales})  # lambda = 1
