"""sCM (Lu & Song 2025, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models"): continuous-time
consistency training (sCT) and distillation (sCD) in the TrigFlow formulation, Algorithm 1 of the paper.

    z ~ N(0, sd^2 I), tau ~ N(P_mean, P_std^2), t = arctan(e^tau / sd), x_t = cos t x0 + sin t z
    dx_t/dt = cos t z - sin t x0 (sCT)   or   the teacher's PF-ODE velocity at (x_t, t) (sCD)
    g = -cos^2 t (sd F- - dx_t/dt) - r cos t sin t (x_t + sd dF-/dt),   g <- g / (rms(g) + c)
    loss = e^w(t) / D ||F_theta - stopgrad(F_theta) - g||^2 - w(t)

F is the TrigFlow network of the model (model.trigflow_network), F- = F_theta under stop-gradient, dF-/dt its total
derivative along the trajectory, taken by a JVP with tangents (cos t sin t dx_t/dt, cos t sin t) for (x_t, t); r is
the tangent warm-up min(1, step / warmup) (a warmup below 1 is that fraction of the run); w is the learned adaptive
weighting (a small head on t, trained with the model). The model is a consistency model with sigma_min = 0: f(x, sigma)
with EDM's preconditioning is the TrigFlow f(x_t, t) at sigma = sd tan t, x = x_t / cos t, so an EDM teacher's network
is a valid start, and sampling and editing work through the noise-level mapping.

Choices where the paper leaves room, and where this differs from it:
- the loss's F- is the gradient pass's own output under stop-gradient, so that F_theta - F- is exactly 0 in any
  precision (the JVP pass runs in fp32 and a bf16 gradient pass would otherwise differ from it by rounding);
- g is normalised by its root mean square over the sample, as FastGen does (the paper's ||g|| does not say over
  what): c = 0.1 then acts per element, and the learned weighting starts near its optimum;
- the network's time input is EDM's c_noise = ln(sigma) / 4 (not t), embedded without the UNet's usual 1000x scale
  (EDM's and FastGen's convention, keeping dF/dt's time part small, which the paper shows matters for stability).
  Tuned from or distilled from a teacher, the student keeps the teacher's network: the library's EDM teachers embed
  time the same way (since 0.2; an older teacher's 1000x scale made sCD diverge, and is warned about);
- the weighting head is a linear layer on sinusoidal features of t, computed in fp32; the trainer's gradient
  clipping does not include it;
- no prior weighting by default. The paper weights the distance by a prior 1 / (sd tan t), that is 1 / sigma
  (as xandergos/sCM-mnist notes, training with 1 itself), inside the learned weighting; NVlabs/FastGen applies it by
  default (`prior_weighting_enabled`). `prior_weighting=True` applies it as FastGen does. Measured on MNIST at
  equal compute (20 minutes on one CPU core each, about 320 updates, docs/results.md): without it one-step FID 343
  against 462 with it (two steps 283 against 350), so it stays off; not measured at the papers' budgets.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import nn

from ..jvp import JVP_METHODS, jvp, unwrap
from ..model import trigflow_network, trigflow_velocity
from ..sampling import Sampler, consistency_sampler, consistency_sigmas, register_sampler
from ..schedule import RHO, SIGMA_DATA, SIGMA_MAX
from ..unet import PositionalEmbedding
from ..utils import rng_state, set_rng_state
from .base import Method, MethodOutput, check_levels, check_lognormal, check_range
from .teacher import TeacherGuidance, as_denoiser, copy_teacher_weights, teacher_net_options


def scm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = RHO, sigma_data: float = SIGMA_DATA,
               **_) -> list[float]:
    """sCM's levels: one step from sigma_max (t = arctan(sigma_max / sd)); two steps add the paper's t = 1.1 (sigma
    = sd tan 1.1, 0.982 for sd = 0.5, App. G.2); more steps, Karras levels."""
    if steps == 2:
        return [sigma_max, sigma_data * math.tan(1.1)]
    return consistency_sigmas(steps, sigma_min, sigma_max, rho)


register_sampler("scm", Sampler(consistency_sampler, scm_sigmas, lambda k: k, (1, 2)))


class AdaptiveWeighting(nn.Module):
    """w(t): a linear layer on sinusoidal features of the TrigFlow time (EDM2's uncertainty weighting); starts at 0."""

    def __init__(self, features: int = 64):
        super().__init__()
        self.embed = PositionalEmbedding(features, scale=100.0)  # t in (0, pi/2): arguments up to ~150
        self.linear = nn.Linear(features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(t.device.type, enabled=False):  # fp32: e^w moves in 3% steps in bf16
            return self.linear(self.embed(t.float())).squeeze(1)


class SimplifiedConsistencyTraining(nn.Module, Method):
    """sCT: consistency training in continuous time (sCM's Algorithm 1 with dx_t/dt = cos t z - sin t x0).

    Given a `teacher` (an EDM denoiser) the student starts from its weights, as the paper initialises sCT from a
    diffusion model; ContinuousConsistencyDistillation (sCD) also takes dx_t/dt from the teacher.
    """

    name = "scm"
    sampler = "scm"
    uses_jvp = True

    def __init__(
        self,
        teacher: nn.Module | Callable[..., torch.Tensor] | None = None,
        *,
        p_mean: float = -1.0,  # sCM, CIFAR-10 (App. G.2)
        p_std: float = 1.4,  # sCM, CIFAR-10
        tangent_c: float = 0.1,  # sCM: g / (||g|| + 0.1)
        warmup: float = 10_000,  # sCM: tangent warm-up over the first 10k iterations (below 1: that fraction of the run)
        adaptive_weighting: bool = True,  # sCM
        prior_weighting: bool = False,  # the paper's prior 1 / (sd tan t) = 1 / sigma (FastGen: on; here off, measured)
        jvp: str = "autograd",  # or "finite_difference"
        sigma_data: float = SIGMA_DATA,
        sigma_min: float = 0.0,  # TrigFlow's boundary is t = 0
        sigma_max: float = SIGMA_MAX,  # sampling starts at t = arctan(sigma_max / sigma_data)
    ):
        nn.Module.__init__(self)
        check_levels(self.name, sigma_min, sigma_max, sigma_data)
        check_lognormal(self.name, p_mean, p_std, 1e-3, 1e3)  # the levels it draws are kept in [1e-3, 1e3]
        check_range(self.name, tangent_c=(tangent_c, tangent_c > 0, "> 0"),
                    warmup=(warmup, warmup >= 0, ">= 0"), jvp=(jvp, jvp in JVP_METHODS, f"one of {JVP_METHODS}"))
        self.p_mean, self.p_std, self.tangent_c, self.warmup = p_mean, p_std, tangent_c, warmup
        self.jvp_method, self.sigma_data, self.sigma_min, self.sigma_max = jvp, sigma_data, sigma_min, sigma_max
        self.adaptive_weighting, self.prior_weighting = adaptive_weighting, prior_weighting
        self.weighting = AdaptiveWeighting() if adaptive_weighting else None
        # kept out of the module's parameters and state dict: the teacher is frozen and lives in its own checkpoint
        self._teacher = [as_denoiser(teacher).eval().requires_grad_(False)] if teacher is not None else []
        self.tuned = teacher is not None
        scale = teacher_net_options(teacher).get("time_scale", 1.0)
        if scale > 1:  # the student keeps the teacher's network, and dF/dt grows with the time input's scale
            warnings.warn(f"the teacher's network scales its time input {scale:g}x (the UNet's default, and "
                          f"--method edm teachers before 0.2): {self.name}'s tangent holds dF/dt, which that scale "
                          f"makes {scale:g}x larger, and sCD from such a teacher diverged on MNIST. Train the teacher "
                          "with time_scale=1 (EDMLoss.net_options; --method edm does so now)", stacklevel=2)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    @property
    def net_options(self) -> dict:
        """From scratch, the time embedding without the 1000x scale; from a teacher, the teacher's."""
        return teacher_net_options(self.teacher) if self._teacher else {"time_scale": 1.0}

    def wrap(self, net: nn.Module) -> nn.Module:
        if self.teacher is not None:
            copy_teacher_weights(self.teacher, net)
        return Method.wrap(self, net)

    def sample_time(self, batch: int, device: torch.device) -> torch.Tensor:
        """t = arctan(e^tau / sd), tau ~ N(P_mean, P_std^2) (the noise level e^tau kept in [1e-3, 1e3] for float32)."""
        sigma = (torch.randn(batch, device=device) * self.p_std + self.p_mean).exp().clamp(1e-3, 1e3)
        return torch.atan(sigma / self.sigma_data)

    def guidance_scales(self, batch: int, device: torch.device) -> float | torch.Tensor | None:
        """This step's guidance scale(s) w: None for sCT (no teacher to guide); see sCD."""
        return None

    def velocity(self, x0: torch.Tensor, z: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                 class_labels: torch.Tensor | None, w: float | torch.Tensor | None = None) -> torch.Tensor:
        """dx_t/dt: for sCT the conditional velocity cos t z - sin t x0 (one sample of the PF-ODE's)."""
        b = (-1, 1, 1, 1)
        return t.cos().view(b) * z - t.sin().view(b) * x0

    def tangent(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, dxdt: torch.Tensor, ratio: float,
                class_labels: torch.Tensor | None = None, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(F-, g) before normalisation: g = -cos^2 t (sd F- - dx/dt) - ratio (cos t sin t x_t + sd cos t sin t dF-/dt).

        The JVP runs on the plain module under stop-gradient: no gradient is taken through it.
        """
        sd, b = self.sigma_data, (-1, 1, 1, 1)
        cos, sin = t.cos().view(b), t.sin().view(b)
        base = unwrap(model)
        f_minus, d_f = jvp(lambda xt, tt: trigflow_network(base, xt, tt, class_labels, sd, **inputs), (x_t, t),
                           (cos * sin * dxdt, (cos * sin).view(-1)), method=self.jvp_method)
        g = -cos.square() * (sd * f_minus - dxdt) - ratio * (cos * sin * x_t + sd * d_f)
        return f_minus, g

    def __call__(self, model: nn.Module, target: nn.Module | None, x: torch.Tensor,
                 class_labels: torch.Tensor | None = None, *, step: int, total_steps: int) -> MethodOutput:
        x = x.float()
        t = self.sample_time(x.shape[0], x.device)
        b = (-1, 1, 1, 1)
        z = torch.randn_like(x) * self.sigma_data
        x_t = t.cos().view(b) * x + t.sin().view(b) * z
        w = self.guidance_scales(x.shape[0], x.device)  # sCD of a guided teacher; else None
        inputs = self._guidance.student(w) if w is not None else {}  # a student of a guided teacher takes w
        dxdt = self.velocity(x, z, x_t, t, class_labels, w)
        warmup = self.warmup * total_steps if self.warmup < 1 else self.warmup
        ratio = min(1.0, step / warmup) if warmup else 1.0
        state = rng_state(x.device)
        _, g = self.tangent(model, x_t, t, dxdt, ratio, class_labels, **inputs)
        rms = g.flatten(1).square().mean(1).sqrt().view(b)
        g = g / (rms + self.tangent_c)
        set_rng_state(state, x.device)  # the gradient pass draws the JVP pass's dropout masks
        f_theta = trigflow_network(model, x_t, t, class_labels, self.sigma_data, **inputs).float()
        squared = (f_theta - f_theta.detach() - g).flatten(1).square().sum(1)
        if self.prior_weighting:  # 1 / (sd tan t) = 1 / sigma, FastGen's default: on the distance, inside e^w / D
            squared = squared / (self.sigma_data * t.tan())
        dim = x[0].numel()
        if self.weighting is not None:
            lw = self.weighting(t)
            loss = lw.exp() / dim * squared - lw
        else:
            loss = squared / dim
        return MethodOutput(loss, {"tangent_rms": rms.mean().detach(), "warmup": ratio})


class ContinuousConsistencyDistillation(SimplifiedConsistencyTraining):
    """sCD: sCM with dx_t/dt the EDM teacher's PF-ODE velocity, read in TrigFlow (model.trigflow_velocity)."""

    name = "scd"

    def __init__(self, teacher: nn.Module | Callable[..., torch.Tensor], *,
                 guidance: float | tuple[float, float] | None = None,  # the guided teacher: a fixed w or (w_min, w_max)
                 **kwargs):
        super().__init__(teacher, **kwargs)
        theirs = getattr(teacher, "sigma_data", self.sigma_data)
        check_range(self.name, sigma_data=(self.sigma_data, abs(theirs - self.sigma_data) < 1e-12,
                                           f"the teacher's ({theirs})"))
        self._guidance = TeacherGuidance(self.name, self.teacher, guidance)
        if self._guidance.range:  # recorded in the config
            self.guidance_min, self.guidance_max = self._guidance.range

    @property
    def net_options(self) -> dict:
        return {**super().net_options, **self._guidance.net_options}

    def guidance_scales(self, batch: int, device: torch.device) -> float | torch.Tensor | None:
        return self._guidance.draw(batch, device)

    def velocity(self, x0, z, x_t, t, class_labels, w=None):
        self.teacher.to(x_t.device)
        with torch.no_grad(), torch.autocast(x_t.device.type, enabled=False):
            teacher = self._guidance.teacher(self.teacher, w)
            return trigflow_velocity(teacher, x_t, t, class_labels, self.sigma_data).float()
