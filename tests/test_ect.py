"""ECT as published (locuslab/ect): the r(t) mapping, the boundary, the start from the teacher, and the Gaussian case.

For data N(0, s^2) (one dimension) the ideal denoiser is D(x, t) = s^2 / (s^2 + t^2) x and the ideal consistency
function with its boundary at t = 0 is f(x, t) = x s / sqrt(s^2 + t^2).
"""

import math

import pytest
import torch
from torch import nn

from consistency import ConsistencyModel, EasyConsistencyTraining, EDMDenoiser
from tests.conftest import randomize_, tiny_unet

S = 0.5


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_r_of_t_at_hand_computed_points():
    ect = EasyConsistencyTraining()
    t = torch.tensor([0.5, 1.0, 3.0, 80.0], dtype=torch.float64)
    for stage in (0, 1, 3):
        expected = [max(0.0, v * (1 - (1 + 8 * sigmoid(-v)) / 2 ** (stage + 1))) for v in t.tolist()]
        torch.testing.assert_close(ect.r_of_t(t, stage), torch.tensor(expected, dtype=torch.float64))
    # stage 0: r = 0 below ln 7 (where 1 + 8 sigmoid(-t) >= 2), so small t trains towards the clean image
    assert ect.r_of_t(t, 0)[:2].tolist() == [0.0, 0.0] and ect.r_of_t(torch.tensor([2.0]), 0).item() > 0
    assert ect.r_of_t(torch.tensor([3.0]), 0).item() == pytest.approx(3 * (1 - (1 + 8 * sigmoid(-3)) / 2), rel=1e-6)
    # from stage 2 on, r > 0 for every t (1 + 8 sigmoid(-t) <= 5 < 2^3), and t - r halves with each stage at large t
    assert (ect.r_of_t(torch.tensor([1e-3, 0.5, 10.0]), 2) > 0).all()
    gap = [80 - ect.r_of_t(torch.tensor([80.0]), s).item() for s in range(4)]
    assert all(a / b == pytest.approx(2.0, rel=1e-3) for a, b in zip(gap, gap[1:]))
    assert ect.stage(0, 800) == 0 and ect.stage(100, 800) == 1 and ect.stage(799, 800) == 7 and ect.stage(800, 800) == 7


def test_the_loss_by_hand_with_the_boundary_target():
    # t from the lognormal (unclamped), the L2 norm over the sample (c = 0), weight 1 / (t - r), one z; where r = 0
    # the target is the clean image.
    model = randomize_(ConsistencyModel(tiny_unet(), sigma_min=0.0)).eval()
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    ect = EasyConsistencyTraining()
    torch.manual_seed(0)
    out = ect(model, None, x, step=0, total_steps=10)
    torch.manual_seed(0)
    t = (torch.randn(64) * 2.0 - 1.1).exp()
    r = (t * (1 - (1 + 8 * torch.sigmoid(-t)) / 2)).clamp(min=0)
    z = torch.randn_like(x)
    b = (-1, 1, 1, 1)
    with torch.no_grad():
        target = torch.where((r > 0).view(b), model(x + r.clamp(min=1e-8).view(b) * z, r.clamp(min=1e-8)), x)
        expected = (model(x + t.view(b) * z, t) - target).flatten(1).norm(dim=1) / (t - r)
    assert (r == 0).any() and (r > 0).any()  # both kinds of sample in the batch
    assert out.logs == {"stage": 0}
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)


def test_the_student_starts_as_the_teachers_one_step_denoiser():
    teacher = EDMDenoiser(randomize_(tiny_unet(num_classes=3))).eval()
    ect = EasyConsistencyTraining(teacher)
    student = ect.wrap(tiny_unet(num_classes=3)).eval()
    x, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    for t in (0.01, 0.5, 3.0, 80.0):
        torch.testing.assert_close(student(x, t, labels), teacher(x, t, labels), rtol=0, atol=0)
    assert student.sigma_min == 0.0 and ect.config()["tuned"] is True
    with pytest.raises(ValueError, match="architecture"):
        ect.wrap(tiny_unet(num_classes=3, dropout=0.0).__class__(1, base_channels=16, channel_mult=(1, 2),
                                                                 num_res_blocks=1, num_classes=3))
    with pytest.raises(ValueError, match="time_scale=1000.0 but the teacher's has 1.0"):
        EasyConsistencyTraining(EDMDenoiser(tiny_unet(num_classes=3, time_scale=1.0))).wrap(tiny_unet(num_classes=3))


class Ideal(nn.Module):
    """The ideal denoiser (kind='denoiser') or consistency function (kind='consistency') of N(0, S^2) data."""

    def __init__(self, kind, scale=1.0):
        super().__init__()
        self.kind, self.scale = kind, scale
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, class_labels=None):
        t = torch.as_tensor(t, dtype=x.dtype).view(-1, 1, 1, 1)
        coef = S**2 / (S**2 + t**2) if self.kind == "denoiser" else S / (S**2 + t**2).sqrt()
        return self.scale * coef * x


def fixed_t(t0, **kw):
    return EasyConsistencyTraining(p_mean=math.log(t0), p_std=1e-9, distance="l2", **kw)


def test_at_the_first_stage_ect_is_denoising_training():
    # t = 1 < ln 7: r = 0, the target is x, and the loss of the ideal denoiser is its Bayes error over t:
    # E (D(x + t z) - x)^2 = s^2 t^2 / (s^2 + t^2).
    torch.manual_seed(0)
    x = torch.randn(200_000, 1, 1, 1, dtype=torch.float64) * S
    loss = fixed_t(1.0)(Ideal("denoiser"), None, x, step=0, total_steps=10).loss.mean().item()
    assert loss == pytest.approx(S**2 * 1.0 / (S**2 + 1.0) / 1.0, rel=0.01)


def test_the_ideal_consistency_function_loss_vanishes_as_the_stages_tighten():
    # E (f(x + t z, t) - f(x + r z, r))^2 / (t - r) = [(a_t - a_r)^2 s^2 + (a_t t - a_r r)^2] / (t - r), a_t =
    # s / sqrt(s^2 + t^2): it shrinks like t - r (halving with each stage), while a perturbed function's grows.
    t0 = 3.0
    torch.manual_seed(1)
    x = torch.randn(200_000, 1, 1, 1, dtype=torch.float64) * S
    ideal, wrong = [], []
    for stage in range(3, 8):
        ect = fixed_t(t0, stages=8)
        r = ect.r_of_t(torch.tensor([t0], dtype=torch.float64), stage).item()
        a_t, a_r = S / math.sqrt(S**2 + t0**2), S / math.sqrt(S**2 + r**2)
        closed = ((a_t - a_r) ** 2 * S**2 + (a_t * t0 - a_r * r) ** 2) / (t0 - r)
        step = stage * 10  # stage k of 8 over 80 steps
        torch.manual_seed(2)
        got = ect(Ideal("consistency"), None, x, step=step, total_steps=80).loss.mean().item()
        assert got == pytest.approx(closed, rel=0.03), stage
        ideal.append(got)
        torch.manual_seed(2)
        wrong.append(ect(Ideal("consistency", 1.1), Ideal("consistency"), x, step=step, total_steps=80)
                     .loss.mean().item())
    assert all(a / b == pytest.approx(2.0, rel=0.12) for a, b in zip(ideal, ideal[1:]))  # first order in t - r
    assert wrong[-1] > 20 * ideal[-1] and wrong[-1] > wrong[0]


@pytest.mark.parametrize("t0,step", [(200.0, 7), (1e-3, 0)])
def test_t_is_not_clamped(t0, step):
    # ECT's code draws t from the lognormal and uses it as it is: beyond sigma_max, and below the old clamp at 2 eps
    # (where at stage 0 r = 0 and the target is the clean image).
    x = torch.randn(8, 1, 1, 1, dtype=torch.float64) * S
    ect = EasyConsistencyTraining(p_mean=math.log(t0), p_std=1e-12, distance="l2")
    torch.manual_seed(0)
    loss = ect(Ideal("consistency"), None, x, step=step, total_steps=8).loss
    torch.manual_seed(0)
    torch.randn(8)  # t
    z = torch.randn_like(x)
    r = ect.r_of_t(torch.tensor([t0], dtype=torch.float64), step).item()
    a_t, a_r = S / math.sqrt(S**2 + t0**2), S / math.sqrt(S**2 + r**2)
    expected = ((a_t * (x + t0 * z) - a_r * (x + r * z)).square().flatten(1).mean(1)) / (t0 - r)
    assert (r == 0) == (step == 0)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-3, atol=1e-12)  # the distance is taken in fp32
