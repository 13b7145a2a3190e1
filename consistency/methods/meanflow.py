"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, "Mean Flows for One-step Generative Modeling").

Flow matching's convention: z_t = (1 - t) x + t e, e ~ N(0, I), v = e - x. The network models the average velocity
u(z, r, t) = (1 / (t - r)) int_r^t v(z_s, s) ds, trained on the MeanFlow identity

    u_tgt = v - (t - r) du/dt,   du/dt = v . d_z u + d_t u   (a JVP with tangents (v, 0, 1) for (z, r, t))
    loss = w ||u_theta(z, r, t) - stopgrad(u_tgt)||^2,   w = stopgrad(1 / (||.||^2 + c)^p)   (adaptive weighting)

with (t, r) from a logit-normal, t >= r, and a fraction of the pairs with r = t (plain flow matching there). One step
samples x = e - u(e, 0, 1). The model (MeanFlowModel) takes both times, as (t, t - r).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..jvp import JVP_METHODS, jvp, unwrap
from ..model import MeanFlowModel
from ..sampling import Sampler, check_sigmas, register_sampler
from ..schedule import SIGMA_DATA, SIGMA_MAX
from ..utils import rng_state, set_rng_state
from .base import Method, MethodOutput, check_levels, check_range


@torch.no_grad()
def meanflow_sampler(
    model: nn.Module,
    x: torch.Tensor,
    sigmas: list[float],
    *,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """MeanFlow's sampler: here `sigmas` are flow times t_0 = 1 > ... > 0 and x = e (t_0 = 1: pure noise);
    each step jumps z_r = z_t - (t - r) u(z_t, r, t). One step: x = e - u(e, 0, 1)."""
    check_sigmas(sigmas, model, "meanflow")
    for i, (t, r) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x = x - (t - r) * model.velocity(x, r, t, class_labels)
        if callback is not None:
            callback(i, x)
    return x


def meanflow_times(steps: int, sigma_min: float, sigma_max: float, **_) -> list[float]:
    """Equally spaced flow times from 1 to 0: [1, 0] for one step, [1, 0.5, 0] for two."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()


register_sampler("meanflow", Sampler(meanflow_sampler, meanflow_times, lambda k: k, (1, 2), time_range=(0.0, 1.0)))


class MeanFlow(Method):
    """MeanFlow with the paper's defaults (ImageNet 256: logit-normal(-0.4, 1.0), 25% of pairs with r != t, p = 1).

    Guidance in training (the paper's section 4.2, its JAX code's guidance_fn): with omega != 1 or kappa != 0 the
    sample velocity v = e - x is replaced, for t in [t_start, t_end] and for samples whose label was not dropped, by

        v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null)

    (the network's own instantaneous velocities, in eval mode and without gradient), used both as the JVP's tangent
    and in the target; the effective guidance scale is omega / (1 - kappa), and one step samples guided. It needs a
    null class: --label-dropout 0.1, the code's class dropout. Its code's B/4 setting: omega = 1, kappa = 0.5.
    Choices stated: c = 1e-3 (py-meanflow's CIFAR-10 code, with p = 0.75 there) where the JAX code uses 0.01 with
    p = 1: at MNIST's small per-sample errors the smaller c keeps the weighting 1 / (||.||^2 + c)^p adaptive.
    `pairs="independent"` draws t and r from their own logit-normals and takes r = min(t, r) (py-meanflow's "v1"
    sampler; its CIFAR-10 values -0.6 / 1.6 for t and -4.0 / 1.6 for r) instead of sorting two draws of one.
    """

    name = "meanflow"
    sampler = "meanflow"
    uses_jvp = True
    net_options = {"num_times": 2, "time_scale": 1.0}  # (t, t - r) in [0, 1], embedded without the 1000x scale

    def __init__(
        self,
        *,
        p_mean: float = -0.4,  # MeanFlow: logit-normal time distribution
        p_std: float = 1.0,  # MeanFlow
        ratio: float = 0.25,  # MeanFlow: fraction of pairs with r != t (0.75 in the CIFAR-10 code)
        p: float = 1.0,  # MeanFlow: adaptive weighting power (0.75 in the CIFAR-10 code)
        c: float = 1e-3,  # adaptive weighting constant: py-meanflow's (the JAX code: 0.01)
        omega: float = 1.0,  # training-time guidance (1 with kappa 0: none); the JAX code's B/4 run: 1
        kappa: float = 0.0,  # training-time guidance's conditional share; the JAX code's B/4 run: 0.5
        t_start: float = 0.0,  # guidance applies for t in [t_start, t_end] (the code's defaults; XL: t_end 0.75)
        t_end: float = 1.0,
        pairs: str = "sorted",  # "sorted" (the paper) or "independent" (py-meanflow's "v1": t, r from their own)
        r_mean: float = -4.0,  # pairs="independent": r's logit-normal (py-meanflow CIFAR-10)
        r_std: float = 1.6,
        jvp: str = "autograd",  # or "finite_difference"
        sigma_data: float = SIGMA_DATA,
        sigma_min: float = 0.0,
        sigma_max: float = SIGMA_MAX,  # the noise level the x0 interface maps to t = sigma / (1 + sigma)
    ):
        check_levels(self.name, sigma_min, sigma_max, sigma_data)
        check_range(self.name, p_mean=(p_mean, True, ""), p_std=(p_std, p_std > 0, "> 0"),
                    ratio=(ratio, 0 <= ratio <= 1, "in [0, 1]"),
                    p=(p, p >= 0, ">= 0"), c=(c, c > 0, "> 0"), omega=(omega, omega >= 0, ">= 0"),
                    kappa=(kappa, 0 <= kappa < 1, "in [0, 1)"),
                    t_start=(t_start, 0 <= t_start <= 1, "in [0, 1]"),
                    t_end=(t_end, t_start <= t_end <= 1, f"in [t_start, 1] (t_start = {t_start})"),
                    pairs=(pairs, pairs in ("sorted", "independent"), "'sorted' or 'independent'"),
                    r_mean=(r_mean, True, ""), r_std=(r_std, r_std > 0, "> 0"),
                    jvp=(jvp, jvp in JVP_METHODS, f"one of {JVP_METHODS}"))
        self.p_mean, self.p_std, self.ratio, self.p, self.c = p_mean, p_std, ratio, p, c
        self.omega, self.kappa, self.t_start, self.t_end = omega, kappa, t_start, t_end
        self.pairs, self.r_mean, self.r_std = pairs, r_mean, r_std
        self.jvp_method, self.sigma_data, self.sigma_min, self.sigma_max = jvp, sigma_data, sigma_min, sigma_max

    def wrap(self, net: nn.Module) -> nn.Module:
        return MeanFlowModel(net, sigma_data=self.sigma_data, sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    @property
    def guided(self) -> bool:
        return self.omega != 1 or self.kappa != 0

    def sample_times(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, t): two logit-normal times ordered r <= t (or, pairs="independent", t and r from their own, r =
        min(t, r)), then r = t for a fraction 1 - ratio of the pairs."""
        if self.pairs == "independent":
            t = (torch.randn(batch, device=device) * self.p_std + self.p_mean).sigmoid()
            r = torch.minimum(t, (torch.randn(batch, device=device) * self.r_std + self.r_mean).sigmoid())
        else:
            a, b = (torch.randn(2, batch, device=device) * self.p_std + self.p_mean).sigmoid()
            t, r = torch.maximum(a, b), torch.minimum(a, b)
        r = torch.where(torch.rand(batch, device=device) < self.ratio, r, t)
        return r, t

    @torch.no_grad()
    def guided_velocity(self, base: nn.Module, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                        class_labels: torch.Tensor | None) -> torch.Tensor:
        """v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null) inside [t_start, t_end] for
        the samples whose label was not dropped; v elsewhere (see the class docstring)."""
        null = getattr(base, "null_class", None)
        if class_labels is None or null is None:
            raise ValueError("MeanFlow's training-time guidance (omega, kappa) needs a class-conditional network with a "
                             "null class: train with --label-dropout 0.1 (its code's class dropout)")
        b = (-1, 1, 1, 1)
        inside = (t >= self.t_start) & (t <= self.t_end)
        omega = torch.where(inside, self.omega, 1.0).view(b)
        kappa = torch.where(inside, self.kappa, 0.0).view(b)
        was_training = base.training
        base.eval()  # as the code (train=False): no dropout in these passes, and no draw from the RNG
        try:
            with torch.autocast(z.device.type, enabled=False):
                uncond = base.velocity(z, t, t, torch.full_like(class_labels, null)).float()
                cond = base.velocity(z, t, t, class_labels).float() if self.kappa else 0.0
        finally:
            base.train(was_training)
        guided = omega * v + kappa * cond + (1 - omega - kappa) * uncond
        return torch.where((class_labels == null).view(b), v, guided)  # a dropped label learns plain flow matching

    def target(self, velocity: Callable[..., torch.Tensor], z: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, u_tgt) with u_tgt = v - (t - r) du/dt, du/dt by a JVP of velocity(z, r, t) along (v, 0, 1)."""
        u, dudt = jvp(velocity, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)), method=self.jvp_method)
        return u, v - (t - r).view(-1, 1, 1, 1) * dudt

    def __call__(self, model: nn.Module, target: nn.Module | None, x: torch.Tensor,
                 class_labels: torch.Tensor | None = None, *, step: int, total_steps: int) -> MethodOutput:
        x = x.float()
        r, t = self.sample_times(x.shape[0], x.device)
        e = torch.randn_like(x)
        b = (-1, 1, 1, 1)
        z = (1 - t).view(b) * x + t.view(b) * e
        v = e - x
        base = unwrap(model)
        if self.guided:
            v = self.guided_velocity(base, z, t, v, class_labels)
        state = rng_state(x.device)
        _, u_tgt = self.target(lambda zz, rr, tt: base.velocity(zz, rr, tt, class_labels), z, r, t, v)
        set_rng_state(state, x.device)  # the gradient pass draws the JVP pass's dropout masks
        u = model(z, None, class_labels, r=r, t=t).float()  # through DDP: its gradients are averaged
        squared = (u - u_tgt).flatten(1).square().sum(1)
        weight = 1.0 / (squared.detach() + self.c) ** self.p
        return MethodOutput(weight * squared, {"r_ne_t": (r < t).float().mean()})
