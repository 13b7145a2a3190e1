"""Classifier-free guidance (issue 22): label dropout, guided sampling, guided distillation, MeanFlow's training-time
guidance, sCM's prior weighting, and precision / recall."""

import math

import pytest
import torch
from torch import nn

from consistency import (
    ConsistencyDistillation,
    ConsistencyModel,
    EDMDenoiser,
    MeanFlow,
    UNet,
    build_method,
    generate,
)
from consistency.data import split_batch
from consistency.metrics import precision_recall
from consistency.model import Guided
from consistency.solvers import heun_step
from tests.conftest import randomize_, synthetic_images, tiny_model
from tests.test_trainer import make_trainer


def guidable(wrapper=ConsistencyModel, **options):
    net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3, null_class=True, **options)
    model = randomize_(wrapper(net)).eval()
    model.image_shape = (1, 8, 8)
    return model


@pytest.mark.parametrize("sampler", ["consistency", "edm", "meanflow"])
def test_w_1_is_the_conditional_model_bit_for_bit_and_w_0_the_null_class(sampler):
    if sampler == "meanflow":
        model = guidable(MeanFlow().wrap, **MeanFlow.net_options)
    else:
        model = guidable(EDMDenoiser if sampler == "edm" else ConsistencyModel)
    steps = 3 if sampler == "edm" else 2
    labels = torch.tensor([0, 1, 2, 1])
    plain = generate(model, 4, steps=steps, sampler=sampler, class_labels=labels, seed=3)
    assert torch.equal(generate(model, 4, steps=steps, sampler=sampler, class_labels=labels, seed=3, guidance=1.0),
                       plain)
    null = generate(model, 4, steps=steps, sampler=sampler, class_labels=torch.full((4,), 3), seed=3)
    assert torch.equal(generate(model, 4, steps=steps, sampler=sampler, class_labels=labels, seed=3, guidance=0.0),
                       null)
    guided2 = generate(model, 4, steps=steps, sampler=sampler, class_labels=labels, seed=3, guidance=2.0)
    assert not torch.equal(guided2, plain) and torch.isfinite(guided2).all()


class MixtureDenoiser(nn.Module):
    """The exact denoiser of a two-class Gaussian mixture in 2-D (data (B, 2, 1, 1)): class k is N(mu_k, s^2 I), the
    null class the 50/50 mixture. E[x0 | x, sigma, k] = mu_k + s^2 / (s^2 + sigma^2) (x - mu_k); unconditionally the
    components' posteriors weight them, p(k | x) ∝ N(x; mu_k, (s^2 + sigma^2) I)."""

    in_channels, num_classes, null_class = 2, 2, 2
    sigma_min, sigma_max, sigma_data = 0.002, 80.0, 0.5

    def __init__(self):
        super().__init__()
        self.mu = torch.tensor([[1.0, 0.5], [-0.8, -0.6]], dtype=torch.float64)
        self.s = 0.3

    def conditional(self, x, sigma, k):
        mu = self.mu[k].view(-1, 2, 1, 1)
        return mu + self.s**2 / (self.s**2 + sigma**2) * (x - mu)

    def forward(self, x, sigma, class_labels):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(len(x)).view(-1, 1, 1, 1)
        var = self.s**2 + sigma**2
        logp = torch.stack([-(x - m.view(1, 2, 1, 1)).square().sum((1, 2, 3)) / (2 * var.view(-1)) for m in self.mu], 1)
        post = logp.softmax(1).view(-1, 2, 1, 1, 1)
        both = torch.stack([self.conditional(x, sigma, torch.full((len(x),), k)) for k in range(2)], 1)
        uncond = (post * both).sum(1)
        cond = self.conditional(x, sigma, class_labels.clamp(max=1))
        return torch.where((class_labels == self.null_class).view(-1, 1, 1, 1), uncond, cond)


def closed_form_guided(gmm, x, sigma, labels, w):
    null = torch.full_like(labels, 2)
    return gmm(x, sigma, null) + w * (gmm(x, sigma, labels) - gmm(x, sigma, null))


def test_the_guided_edm_step_and_the_guided_cd_target_match_the_closed_form():
    gmm = MixtureDenoiser()
    x = torch.randn(6, 2, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    for w in (0.0, 1.0, 1.5, 3.0):
        guided = Guided(gmm, w)
        torch.testing.assert_close(guided(x, 1.3, labels), closed_form_guided(gmm, x, 1.3, labels, w))
        # one guided Heun step of the probability-flow ODE dx/dt = (x - D_w(x, t)) / t, by hand
        t, t_next = 2.0, 1.2
        d1 = (x - closed_form_guided(gmm, x, t, labels, w)) / t
        euler = x + (t_next - t) * d1
        d2 = (euler - closed_form_guided(gmm, euler, t_next, labels, w)) / t_next
        torch.testing.assert_close(heun_step(guided, x, t, t_next, labels), x + (t_next - t) * (d1 + d2) / 2)
    # CD's target from the guided teacher: per-sample scales as LCM draws them
    cd = ConsistencyDistillation(gmm, guidance=(1.0, 4.0), num_scales=4)
    assert cd.net_options["guidance_embed"] and cd.config()["guidance_max"] == 4.0
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 1.5, 2.5], dtype=torch.float64)
    t_next, t_cur = torch.full((6,), 2.0, dtype=torch.float64), torch.full((6,), 1.2, dtype=torch.float64)
    expected = torch.cat([heun_step(Guided(gmm, float(w[i])), x[i:i + 1], 2.0, 1.2, labels[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(cd.teacher_step(x, t_next, t_cur, labels, w).double(), expected.float().double())
    fixed = ConsistencyDistillation(gmm, guidance=2.0)
    assert "guidance_embed" not in fixed.net_options and fixed._guidance.draw(6, x.device) == 2.0
    with pytest.raises(ValueError, match="no null class"):
        ConsistencyDistillation(EDMDenoiser(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                                 num_classes=3)), guidance=2.0)


def test_a_guided_teachers_student_takes_w_and_starts_as_the_teacher():
    teacher = guidable(EDMDenoiser, time_scale=1.0)
    cd = ConsistencyDistillation(teacher, guidance=(1.0, 3.0))
    student = cd.wrap(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3, null_class=True,
                           **cd.net_options))
    assert student.takes_guidance
    x, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    for w in (1.0, 2.5):  # the w-embedding starts at zero: the student's network is the teacher's for every w
        torch.testing.assert_close(student.net(x, torch.full((4,), 0.1), labels, guidance=torch.full((4,), w)),
                                   teacher.net(x, torch.full((4,), 0.1), labels))
    seen = []
    original = student.forward
    student.forward = lambda *a, **k: seen.append(k.get("guidance")) or original(*a, **k)
    trainer = make_trainer([(synthetic_images(8), torch.arange(8) % 3)], method=cd, model=student)
    trainer.step((synthetic_images(8), torch.arange(8) % 3))
    assert seen and all(g is not None and ((g >= 1) & (g <= 3)).all() for g in seen)
    assert generate(student, 3, steps=1, guidance=2.0).shape == (3, 1, 8, 8)  # w goes in, one pass


def test_guidance_scales_a_model_cannot_take_are_refused_before_sampling():
    """check_guidance, which every command line calls before any work: non-finite or out-of-range w, a student that
    distilled one fixed guided teacher (guided already), and a w outside the range a w-taking student learned."""
    from consistency.model import MAX_GUIDANCE, check_guidance

    model = guidable()
    for w in (None, 0.0, 1.0, 2.5, MAX_GUIDANCE):
        check_guidance(model, w)
    for w in (float("nan"), float("inf"), -1.0, MAX_GUIDANCE + 1, 1e9):
        with pytest.raises(ValueError, match="must be a number from 0 to"):
            check_guidance(model, w)
    teacher = guidable(EDMDenoiser, time_scale=1.0)
    fixed = ConsistencyDistillation(teacher, guidance=2.0)
    check_guidance(model, 1.0, fixed.config())
    with pytest.raises(ValueError, match="distilled its teacher guided at w = 2: its samples are guided already"):
        check_guidance(model, 3.0, fixed.config())
    ranged = ConsistencyDistillation(teacher, guidance=(1.0, 3.0))
    student = ranged.wrap(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3,
                               null_class=True, **ranged.net_options))
    check_guidance(student, 3.0, ranged.config())
    student.image_shape = (1, 8, 8)
    from consistency.model import guided  # a model guided already is sampled as it is, or at a new w

    assert generate(guided(student, None), 2, steps=1).shape == (2, 1, 8, 8)
    assert torch.equal(generate(guided(student, 3.0), 2, steps=1, guidance=2.0), generate(student, 2, steps=1,
                                                                                        guidance=2.0))
    with pytest.raises(ValueError, match="learned guidance scales from 1 to 3"):
        check_guidance(student, 10.0, ranged.config())
    with pytest.raises(ValueError, match="without label dropout"):
        check_guidance(tiny_model(num_classes=3), 2.0)
    for w in (float("nan"), 1e9, -1.0):  # the Python API too, not only the command lines
        with pytest.raises(ValueError, match="must be a number from 0 to"):
            generate(model, 2, steps=1, guidance=w)
    for bad in ((1.0,), (1.0, 2.0, 3.0), "abc", (1.0, float("nan")), (4.0, 1.0), 1e9, True):
        with pytest.raises(ValueError, match="guidance"):
            ConsistencyDistillation(teacher, guidance=bad)


def test_label_dropout_replaces_the_share_asked_for_and_never_with_p_0():
    x, y = synthetic_images(64), torch.arange(64) % 3
    kept = [split_batch((x, y), in_channels=1, image_shape=None, num_classes=3, device=torch.device("cpu"),
                        label_dropout=0.25, null_class=3)[1] for _ in range(400)]
    share = torch.stack(kept).eq(3).float().mean()
    assert abs(share - 0.25) < 0.01  # 25,600 draws: the standard error is 0.003
    assert all(torch.equal(k[k != 3], y[k != 3]) for k in kept)  # the others keep their label
    none = split_batch((x, y), in_channels=1, image_shape=None, num_classes=3, device=torch.device("cpu"),
                       null_class=3)[1]
    assert torch.equal(none, y)
    seen = []
    model = guidable()
    original = model.forward
    model.forward = lambda x, s, labels=None, **k: seen.append(labels.clone()) or original(x, s, labels, **k)
    trainer = make_trainer([(x[:8], y[:8])], model=model, dropout=0.0)
    for _ in range(10):
        trainer.step((x[:8], y[:8]))
    assert all((s < 3).all() for s in seen)  # p = 0: the null class never reaches the model
    with pytest.raises(ValueError, match="null class"):
        make_trainer([(x[:8], y[:8])], label_dropout=0.1, model=tiny_model(num_classes=3)).step((x[:8], y[:8]))


def test_a_model_without_a_null_class_refuses_guidance_but_samples(tmp_path):
    old = ConsistencyModel(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3))
    old.image_shape = (1, 8, 8)
    assert generate(old, 3, steps=1, guidance=1.0).shape == (3, 1, 8, 8)  # w = 1 is unguided: fine
    with pytest.raises(ValueError, match="without label dropout"):
        generate(old, 3, steps=1, guidance=2.0)
    assert "null_class" not in old.net.config  # its description is the one earlier versions wrote


def test_meanflow_guided_target_velocity():
    class Stub(nn.Module):
        null_class = 3
        training = True

        def velocity(self, z, r, t, labels):
            return torch.where((labels == 3).view(-1, 1, 1, 1), -torch.ones_like(z), torch.ones_like(z))

    method = MeanFlow(omega=1.5, kappa=0.25, t_start=0.1, t_end=0.9)
    assert method.guided and not MeanFlow().guided
    z, v = torch.zeros(4, 1, 2, 2), torch.full((4, 1, 2, 2), 0.5)
    t = torch.tensor([0.5, 0.5, 0.95, 0.05])
    labels = torch.tensor([1, 3, 1, 1])  # the second was dropped
    out = method.guided_velocity(Stub(), z, t, v, labels)
    inside = 1.5 * 0.5 + 0.25 * 1.0 + (1 - 1.5 - 0.25) * -1.0  # omega v + kappa u(c) + (1 - omega - kappa) u(null)
    assert torch.allclose(out[0], torch.full_like(out[0], inside))
    assert torch.equal(out[1], v[1]) and torch.equal(out[2], v[2]) and torch.equal(out[3], v[3])
    with pytest.raises(ValueError, match="label-dropout"):
        method.guided_velocity(Stub(), z, t, v, None)


def test_meanflow_independent_pairs():
    method = MeanFlow(pairs="independent", ratio=1.0, p_mean=0.0, p_std=1.0, r_mean=-4.0, r_std=1.6)
    torch.manual_seed(0)
    r, t = method.sample_times(20_000, torch.device("cpu"))
    assert (r <= t).all()
    assert abs(torch.logit(t).mean()) < 0.05  # t keeps its own logit-normal: not the max of two draws
    assert (r < t).float().mean() > 0.9  # r drawn near 0


def test_scm_prior_weighting_divides_the_distance_by_sigma():
    x = synthetic_images(4)
    losses = []
    for prior in (False, True):
        method = build_method("scm", adaptive_weighting=False, prior_weighting=prior)
        model = method.wrap(randomize_(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, time_scale=1.0)))
        torch.manual_seed(1)
        losses.append(method(model, None, x, step=5, total_steps=10).loss)
    torch.manual_seed(1)
    t = method.sample_time(4, torch.device("cpu"))  # the step's first draw
    torch.testing.assert_close(losses[1], losses[0] / (0.5 * t.tan()))  # 1 / (sd tan t) = 1 / sigma


def test_precision_and_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.cat([torch.randn(300, 2, generator=g) + 10, torch.randn(300, 2, generator=g) - 10])
    assert precision_recall(real, real) == (1.0, 1.0)
    half = torch.randn(600, 2, generator=g) + 10  # all in one of the two modes
    precision, recall = precision_recall(real, half)
    assert precision > 0.9 and 0.4 < recall < 0.6
    far = torch.randn(600, 2, generator=g) + 100
    assert precision_recall(real, far) == (0.0, 0.0)
    assert math.isclose(sum(precision_recall(real, real[:100])), 2.0)  # equal sizes: the first 100 of each


def test_the_trainer_draws_one_grid_per_sample_guidance_scale(tmp_path):
    """--sample-guidance 1,2 on a model with a null class: a grid per w (and none refused); without one, refused."""
    from consistency import ConsistencyTrainer
    from tests.test_trainer import loader_of

    model = guidable()
    trainer = ConsistencyTrainer(model, loader_of(labels=True), total_steps=1, device="cpu", progress=False,
                                 sample_every=0, checkpoint_every=10**9, num_sample_images=6, label_dropout=0.1,
                                 sample_guidance=(1.0, 2.0), out_dir=tmp_path)
    trainer.train()
    trainer.save_samples("final")
    grids = sorted(p.name for p in (tmp_path / "samples").glob("final_*"))
    assert trainer.sample_steps and grids == sorted(f"final_{k}step_w{w}.png" for k in trainer.sample_steps
                                                    for w in (1, 2)), grids
    plain = ConsistencyModel(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3))
    plain.image_shape = (1, 8, 8)
    with pytest.raises(ValueError, match="no null class to guide against.*train one with --label-dropout 0.1"):
        ConsistencyTrainer(plain, loader_of(labels=True), total_steps=1, device="cpu", progress=False,
                           sample_guidance=(2.0,))
