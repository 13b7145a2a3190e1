"""Distillation maths on the Gaussian case, where everything is known in closed form.

Data ~ N(0, s^2 I): the ideal denoiser is D(x, t) = s^2 / (s^2 + t^2) x, the PF-ODE solution is
x(t) = x(T) sqrt(s^2 + t^2) / sqrt(s^2 + T^2), and the ideal consistency function is f(x, t) = x sqrt(s^2 + eps^2) / sqrt(s^2 + t^2).
"""

import math

import pytest
import torch
from torch import nn

from consistency import EMA
from consistency.methods import ConsistencyDistillation, EDMLoss, as_denoiser, student_from_teacher
from consistency.model import EDMDenoiser
from consistency.sampling import sample
from consistency.solvers import euler_step, heun_step
from tests.conftest import randomize_, tiny_unet

S = 0.5  # data standard deviation
EPS = 0.002


class IdealDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).view(-1, *[1] * (x.ndim - 1))
        return S**2 / (S**2 + sigma**2) * x


class IdealConsistency(IdealDenoiser):
    def forward(self, x, t, class_labels=None):
        t = torch.as_tensor(t, dtype=x.dtype).view(-1, *[1] * (x.ndim - 1))
        return x * math.sqrt(S**2 + EPS**2) / (S**2 + t**2).sqrt()


def exact(x_T, T, t):
    return x_T * math.sqrt(S**2 + t**2) / math.sqrt(S**2 + T**2)


def integrate(step, n, T=2.0, t_end=0.1):
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    ts = torch.linspace(T, t_end, n + 1, dtype=torch.float64).tolist()
    for a, b in zip(ts[:-1], ts[1:]):
        x = step(IdealDenoiser().double(), x, a, b)
    return (x - exact(torch.ones(()), T, t_end)).abs().item()


def test_euler_is_first_order_and_heun_second_order():
    e_ratio = integrate(euler_step, 20) / integrate(euler_step, 40)
    h_ratio = integrate(heun_step, 20) / integrate(heun_step, 40)
    assert e_ratio == pytest.approx(2.0, rel=0.1)
    assert h_ratio == pytest.approx(4.0, rel=0.1)
    assert integrate(heun_step, 20) < integrate(euler_step, 20) / 10


def test_edm_sampler_with_the_ideal_denoiser_lands_on_the_data_distribution():
    # 18 Heun levels leave a few per cent of discretisation error on this ODE; it shrinks at second order.
    stds = {}
    for steps in (18, 64):
        x = sample(IdealDenoiser(), (20000, 1, 1, 1), steps=steps, sampler="edm", generator=torch.Generator().manual_seed(0))
        stds[steps] = x.std().item()
        assert abs(x.mean().item()) < 0.02
    assert stds[64] == pytest.approx(S, rel=0.02)
    assert abs(stds[64] - S) < abs(stds[18] - S) / 4


def test_edm_sampler_counts_35_evaluations_for_18_steps():
    calls = []

    class Counting(IdealDenoiser):
        def forward(self, x, sigma, class_labels=None):
            calls.append(1)
            return super().forward(x, sigma)

    sample(Counting(), (2, 1, 1, 1), steps=18, sampler="edm")
    assert len(calls) == 35


def test_cd_loss_of_the_ideal_pair_vanishes_as_n_grows():
    x = torch.randn(4096, 1, 1, 1) * S
    ideal = IdealConsistency()
    losses = []
    for n in (10, 40, 160):
        torch.manual_seed(0)
        cd = ConsistencyDistillation(IdealDenoiser(), num_scales=n, distance="l2")
        losses.append(cd(ideal, ideal, x, step=0, total_steps=1).loss.mean().item())
    assert losses[0] > losses[1] > losses[2] and losses[2] < losses[0] / 100
    # ... while a wrong consistency function does not get there
    torch.manual_seed(0)
    wrong = ConsistencyDistillation(IdealDenoiser(), num_scales=160, distance="l2")(IdealDenoiser(), IdealDenoiser(), x, step=0, total_steps=1).loss
    assert wrong.mean().item() > 100 * losses[2]


def test_cd_euler_vs_heun_on_the_ideal_pair():
    x = torch.randn(4096, 1, 1, 1) * S
    values = {}
    for solver in ("euler", "heun"):
        torch.manual_seed(0)
        values[solver] = ConsistencyDistillation(IdealDenoiser(), solver=solver, num_scales=40, distance="l2")(
            IdealConsistency(), IdealConsistency(), x, step=0, total_steps=1).loss.mean().item()
    assert values["heun"] < values["euler"] / 10


def test_cd_gradients_reach_the_student_only():
    teacher = EDMDenoiser(randomize_(tiny_unet()))
    student = student_from_teacher(teacher)
    assert all(torch.equal(a, b) for a, b in zip(student.net.parameters(), teacher.net.parameters()))
    target = EMA(student, 0.95)
    loss = ConsistencyDistillation(teacher, num_scales=18)
    assert loss.target_decay(0, 10) == 0.95
    loss(student, target, torch.rand(4, 1, 8, 8) * 2 - 1, step=0, total_steps=1).loss.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in target.parameters())


def test_edm_loss_weighting_and_perfect_denoiser():
    loss = EDMLoss()
    x = torch.zeros(8, 1, 4, 4)  # data that is all zeros: the ideal denoiser (s = 0) returns 0, loss 0
    zero = as_denoiser(lambda y, sigma, labels=None: torch.zeros_like(y))
    assert torch.equal(loss(zero, None, x, step=0, total_steps=1).loss, torch.zeros(8))
    ones = as_denoiser(lambda y, sigma, labels=None: torch.ones_like(y))
    torch.manual_seed(0)
    value = loss(ones, None, x, step=0, total_steps=1).loss
    torch.manual_seed(0)
    sigma = (torch.randn(8) * 1.2 - 1.2).exp()
    assert torch.allclose(value, (sigma**2 + 0.25) / (sigma * 0.5) ** 2)


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver"):
        ConsistencyDistillation(IdealDenoiser(), solver="rk4")


def test_ode_steps_pass_the_class_labels_to_the_denoiser():
    seen = []

    class Labelled(IdealDenoiser):
        def forward(self, x, sigma, class_labels=None):
            seen.append(class_labels)
            return super().forward(x, sigma)

    labels = torch.tensor([3])
    x = torch.ones(1, 1, 1, 1)
    euler_step(Labelled(), x, 2.0, 1.0, labels)
    heun_step(Labelled(), x, 2.0, 1.0, labels)
    assert len(seen) == 3 and all(s is labels for s in seen)
