"""The training methods: distances, each loss against a hand computation, the method interface and its registry."""

import math

import pytest
import torch

from consistency import (
    EMA,
    METHODS,
    ConsistencyDistillation,
    ConsistencyTraining,
    EasyConsistencyTraining,
    EDMDenoiser,
    EDMLoss,
    ImprovedConsistencyTraining,
    build_method,
    karras_sigmas,
    pseudo_huber_distance,
)
from consistency.methods import (
    as_denoiser,
    consistency_pair,
    get_distance,
    l1_distance,
    l2_distance,
    method_options,
    needs_teacher,
    student_from_teacher,
)
from consistency.sampling import SAMPLERS
from consistency.solvers import heun_step
from tests.conftest import randomize_, tiny_model, tiny_unet

SD, EPS = 0.5, 0.002


def test_pseudo_huber_known_value():
    x = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 1, 2, 2)
    c = 0.00054 * math.sqrt(4)  # dim = C*H*W = 4
    assert pseudo_huber_distance(x, y).item() == pytest.approx(math.sqrt(25 + c**2) - c, rel=1e-6)
    # The norm runs over the whole sample, not per pixel: a per-pixel version would give 3 + 4 - 2c.
    assert pseudo_huber_distance(x, y, c=1.0).item() == pytest.approx(math.sqrt(26) - 1, rel=1e-6)
    big = torch.zeros(1, 3, 8, 8)  # c scales with sqrt(C*H*W): 0.00054 * sqrt(192)
    assert pseudo_huber_distance(big, big + 1e-3).item() == pytest.approx(
        math.sqrt(192e-6 + (0.00054 * math.sqrt(192)) ** 2) - 0.00054 * math.sqrt(192), rel=1e-4)


def test_l1_l2_values_and_unknown_distance():
    x, y = torch.ones(2, 1, 1, 2), torch.tensor([[2.0, 4.0], [1.0, 3.0]]).view(2, 1, 1, 2)
    assert l2_distance(x, y).tolist() == [5.0, 2.0]
    assert l1_distance(x, y).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="unknown distance"):
        get_distance("lpips")

    def my_distance(a, b):
        return (a - b).abs().flatten(1).amax(1)

    assert get_distance(my_distance) is my_distance
    assert ImprovedConsistencyTraining(distance=my_distance).config()["distance_name"] == "my_distance"
    assert ImprovedConsistencyTraining(distance=torch.nn.L1Loss()).config()["distance_name"] == "L1Loss"


def f_zero_net(x, t):
    """The consistency function of a model whose network outputs 0 (the UNet's zero-initialised output layer)."""
    t = t.view(-1, 1, 1, 1)
    return SD**2 / ((t - EPS) ** 2 + SD**2) * x


def test_ct_loss_matches_a_hand_computation():
    # CM Algorithm 3 with lambda = 1 and L2, recomputed from the same random draws: n ~ U{0..N-2}, one z for both sides.
    model, x = tiny_model().eval(), torch.rand(6, 1, 8, 8) * 2 - 1
    target = randomize_(tiny_model(seed=1)).eval()  # theta-: other weights than theta
    ct = ConsistencyTraining(s1=40)
    ct(model, target, x, step=0, total_steps=1000)  # an earlier N (2 levels): nothing cached for it may leak
    torch.manual_seed(3)
    out = ct(model, target, x, step=500, total_steps=1000)
    torch.manual_seed(3)
    n_levels = ct.num_scales(500, 1000)
    sigmas = karras_sigmas(n_levels).float()
    n = torch.randint(0, n_levels - 1, (6,))
    z = torch.randn_like(x)
    with torch.no_grad():
        target_out = target(x + sigmas[n].view(-1, 1, 1, 1) * z, sigmas[n])
    expected = (f_zero_net(x + sigmas[n + 1].view(-1, 1, 1, 1) * z, sigmas[n + 1]) - target_out).square().flatten(1).mean(1)
    assert out.logs == {"N": n_levels} and n_levels == math.ceil(math.sqrt(0.5 * (41**2 - 4) + 4) - 1) + 1
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-7)


def test_ict_loss_matches_a_hand_computation():
    # iCT: pseudo-Huber over the whole sample, weight 1 / (t_{n+1} - t_n), n from the discretised lognormal.
    model, x = tiny_model().eval(), torch.rand(6, 1, 8, 8) * 2 - 1
    ict = ImprovedConsistencyTraining(s1=40, p_std=1.5)
    ict(model, None, x, step=99, total_steps=100)  # the last stage first (N = 41): its cached levels must not leak
    torch.manual_seed(4)
    out = ict(model, None, x, step=0, total_steps=100)
    torch.manual_seed(4)
    sigmas = karras_sigmas(11).float()  # N(0) = s0 + 1 = 11
    probs = torch.tensor([math.erf((math.log(sigmas[i + 1]) + 1.1) / (math.sqrt(2) * 1.5))
                          - math.erf((math.log(sigmas[i]) + 1.1) / (math.sqrt(2) * 1.5)) for i in range(10)])
    n = torch.multinomial(probs / probs.sum(), 6, replacement=True)
    z = torch.randn_like(x)
    t_cur, t_next = sigmas[n], sigmas[n + 1]
    d = (f_zero_net(x + t_next.view(-1, 1, 1, 1) * z, t_next) - f_zero_net(x + t_cur.view(-1, 1, 1, 1) * z, t_cur))
    c = 0.00054 * 8
    expected = ((d.flatten(1).square().sum(1) + c**2).sqrt() - c) / (t_next - t_cur)
    assert out.logs == {"N": 11}
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_ict_weighting_and_target_decay():
    loss = ImprovedConsistencyTraining()
    assert loss.target_decay(0, 100) is None
    assert loss.weight(torch.tensor([1.0]), torch.tensor([1.5])).item() == pytest.approx(2.0)
    ct = ConsistencyTraining()
    assert ct.target_decay(0, 100) == pytest.approx(0.9)  # mu(0) = mu0 when N(0) = s0
    assert ct.target_decay(100, 100) == pytest.approx(math.exp(2 * math.log(0.9) / 151))


def test_gradients_reach_theta_and_never_theta_minus():
    torch.manual_seed(0)
    model = randomize_(tiny_model())
    target = EMA(model, 0.9)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    ConsistencyTraining()(model, target, x, step=5, total_steps=10).loss.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.out.parameters())
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())


def test_ict_target_pass_is_stop_gradient():
    # theta- = stopgrad(theta): the gradient is exactly that of d(f(x_next), constant), not zero and not both paths.
    model = randomize_(tiny_model())
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    t_next, t_cur = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5])
    online, target = consistency_pair(model, None, x + 0.1, t_next, x, t_cur)
    assert not target.requires_grad
    (online - target).square().sum().backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    constant = model(x, t_cur).detach()
    (model(x + 0.1, t_next) - constant).square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    assert sum(g.abs().sum() for g in expected) > 0
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)


def test_the_target_pass_uses_the_target_network():
    model, target = randomize_(tiny_model(seed=0)).eval(), randomize_(tiny_model(seed=1), seed=1).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])
    online, target_out = consistency_pair(model, target, x, t, x * 0.5, t / 2)
    torch.testing.assert_close(target_out, target(x * 0.5, t / 2))
    torch.testing.assert_close(online, model(x, t))


def test_online_and_target_share_dropout_masks():
    model = randomize_(tiny_model(dropout=0.5)).train()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 1.0])
    online, target = consistency_pair(model, None, x, t, x, t)
    assert torch.equal(online.detach(), target)  # same input, same masks -> same output
    assert not torch.equal(model(x, t), model(x, t))  # while two plain calls draw different masks
    copy = EMA(model, 0.9).train()  # a separate target network with the same weights draws the same masks too
    online, target = consistency_pair(model, copy, x, t, x, t)
    assert torch.equal(online.detach(), target)


def test_ema_update_formula():
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    randomize_(a, 0), randomize_(b, 1)
    ema = EMA(a, 0.9)
    assert all(torch.equal(p, q) for p, q in zip(ema.module.parameters(), a.parameters()))
    ema.update(b)
    for e, p, q in zip(ema.module.parameters(), a.parameters(), b.parameters()):
        assert torch.allclose(e, 0.9 * p + 0.1 * q, atol=1e-7)
    ema.update(b, decay=0.0)  # a changing decay (CM's mu(k)) is honoured
    assert all(torch.allclose(e, q) for e, q in zip(ema.module.parameters(), b.parameters()))


def test_the_registry_builds_every_method_by_name():
    for name, cls in METHODS.items():
        teacher = EDMDenoiser(tiny_unet(**EDMLoss.net_options)) if needs_teacher(name) else None
        method = build_method(name, teacher=teacher)
        assert isinstance(method, cls) and method.name == name and method.config()["name"] == name
        assert method.sampler in SAMPLERS
    assert build_method("ict", s1=320).s1 == 320
    with pytest.raises(ValueError, match="takes no option num_scales"):
        build_method("ict", num_scales=10)
    with pytest.raises(ValueError, match="distils a teacher"):
        build_method("cd")
    with pytest.raises(ValueError, match="unknown method"):
        build_method("gan")
    assert "s1" in method_options("ict") and "num_scales" in method_options("cd") and "teacher" not in method_options("cd")
    assert "warmup" in method_options("scd") and needs_teacher("scd") and not needs_teacher("scm")  # **kwargs: parent's


class NeedsLabels(torch.nn.Module):
    """A class-conditional model that fails loudly when a pass forgets the labels."""

    in_channels, num_classes = 1, 3

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.sigma_min, self.sigma_max, self.sigma_data = inner.sigma_min, inner.sigma_max, inner.sigma_data

    def forward(self, x, sigma, class_labels=None, **kw):
        assert class_labels is not None, "a pass dropped the class labels"
        return self.inner(x, sigma, class_labels, **kw)

    def velocity(self, z, r, t, class_labels=None):
        assert class_labels is not None, "a pass dropped the class labels"
        return self.inner.velocity(z, r, t, class_labels)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_pass_of_every_method_gets_the_class_labels(name):
    from consistency import UNet

    x, labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0])
    teacher = NeedsLabels(EDMDenoiser(randomize_(tiny_unet(num_classes=3)))) if needs_teacher(name) else None
    method = build_method(name, teacher=teacher)  # the teacher's ODE steps need the labels too

    def model():
        net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3, **method.net_options)
        return NeedsLabels(method.wrap(randomize_(net)))

    out = method(model(), model() if method.target_decay(0, 10) is not None else None, x, labels, step=3,
                 total_steps=10)
    assert out.loss.shape == (4,) and torch.isfinite(out.loss).all()


def test_edm_loss_matches_a_hand_computation():
    # ln sigma ~ N(-1.2, 1.2^2), weight (sigma^2 + sd^2) / (sigma sd)^2, loss weight * mean (D(x + sigma n) - x)^2
    model, x = EDMDenoiser(randomize_(tiny_unet())).eval(), torch.rand(5, 1, 8, 8) * 2 - 1
    torch.manual_seed(6)
    out = EDMLoss()(model, None, x, step=0, total_steps=1)
    torch.manual_seed(6)
    sigma = (torch.randn(5) * 1.2 - 1.2).exp()
    noisy = x + sigma.view(-1, 1, 1, 1) * torch.randn_like(x)
    expected = (sigma**2 + SD**2) / (sigma * SD) ** 2 * (model(noisy, sigma) - x).square().flatten(1).mean(1)
    assert out.logs == {}
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_cd_loss_matches_a_hand_computation():
    # CM Algorithm 2: n ~ U{0..N-2}, x_next = x + t_{n+1} z, x_hat = Heun step of the teacher to t_n, lambda = 1.
    teacher = EDMDenoiser(randomize_(tiny_unet())).eval()
    student, target = randomize_(tiny_model(seed=2), seed=2).eval(), randomize_(tiny_model(seed=3), seed=3).eval()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    cd = ConsistencyDistillation(teacher, num_scales=7, distance="l2")
    torch.manual_seed(7)
    out = cd(student, target, x, step=0, total_steps=1)
    torch.manual_seed(7)
    sigmas = karras_sigmas(7).float()
    n = torch.randint(0, 6, (5,))
    x_next = x + sigmas[n + 1].view(-1, 1, 1, 1) * torch.randn_like(x)
    with torch.no_grad():
        x_hat = heun_step(teacher, x_next, sigmas[n + 1], sigmas[n])
        expected = (student(x_next, sigmas[n + 1]) - target(x_hat, sigmas[n])).square().flatten(1).mean(1)
    assert out.logs == {"N": 7}
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_cd_guards_and_teacher():
    teacher = EDMDenoiser(tiny_unet(), sigma_min=0.01, sigma_max=40.0, sigma_data=0.7)
    assert not any(p.requires_grad for p in ConsistencyDistillation(teacher).teacher.parameters())
    ConsistencyDistillation(teacher, num_scales=2)  # one link is the smallest discretisation
    with pytest.raises(ValueError, match="num_scales must be >= 2"):
        ConsistencyDistillation(teacher, num_scales=1)
    student = student_from_teacher(teacher)
    assert (student.sigma_min, student.sigma_max, student.sigma_data) == (0.01, 40.0, 0.7)
    built = build_method("cd", teacher=teacher, num_scales=7)
    assert built.teacher is teacher and built.num_scales == 7
    seen = []
    wrapped = as_denoiser(lambda x, sigma, labels: seen.append((sigma, labels)) or x)
    assert isinstance(wrapped, torch.nn.Module) and as_denoiser(teacher) is teacher
    wrapped(torch.zeros(1, 1, 2, 2), 0.5, "labels")
    assert seen == [(0.5, "labels")]


def test_configs_record_the_hyper_parameters():
    assert ImprovedConsistencyTraining(s1=320).config() == {
        "name": "ict", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0, "sigma_data": 0.5,
        "distance_name": "pseudo_huber", "s0": 10, "s1": 320, "p_mean": -1.1, "p_std": 2.0}
    assert EasyConsistencyTraining().config() == {
        "name": "ect", "sigma_min": 0.0, "sigma_max": 80.0, "rho": 7.0, "sigma_data": 0.5, "tuned": False,
        "distance_name": "ect_norm_c0", "stages": 8, "q": 2.0, "k": 8.0, "b": 1.0, "p_mean": -1.1, "p_std": 2.0,
        "c": 0.0}
    assert ConsistencyDistillation(tiny_model()).config() == {
        "name": "cd", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0, "sigma_data": 0.5,
        "distance_name": "pseudo_huber", "solver": "heun", "num_scales": 18, "mu": 0.95}
    assert ConsistencyTraining(sigma_data=0.7).config()["sigma_data"] == 0.7


def test_the_papers_defaults():
    """Defaults live in the signatures, with the papers' values (REFERENCE.md): pinned here."""
    import inspect

    from consistency import schedule

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    assert defaults(schedule.ct_num_scales) == {"s0": 2, "s1": 150}  # CM, CIFAR-10
    assert defaults(schedule.ct_ema_decay) == {"s0": 2, "mu0": 0.9}
    assert defaults(schedule.ict_num_scales) == {"s0": 10, "s1": 1280}  # iCT
    assert defaults(schedule.lognormal_index_probs) == {"p_mean": -1.1, "p_std": 2.0}
    assert (schedule.SIGMA_MIN, schedule.SIGMA_MAX, schedule.RHO, schedule.SIGMA_DATA) == (0.002, 80.0, 7.0, 0.5)
    ct, ict = ConsistencyTraining(), ImprovedConsistencyTraining()
    assert (ct.s0, ct.s1, ct.mu0, ct.distance_name) == (2, 150, 0.9, "l2")
    assert (ict.s0, ict.s1, ict.p_mean, ict.p_std, ict.distance_name) == (10, 1280, -1.1, 2.0, "pseudo_huber")
    ect = EasyConsistencyTraining()
    assert (ect.q, ect.k, ect.b, ect.p_mean, ect.p_std, ect.c, ect.stages) == (2.0, 8.0, 1.0, -1.1, 2.0, 0.0, 8)
    cd = ConsistencyDistillation(tiny_model())
    assert (cd.solver, cd.num_scales, cd.mu) == ("heun", 18, 0.95)  # CM, CIFAR-10
    edm = EDMLoss()
    assert (edm.p_mean, edm.p_std, edm.sigma_data) == (-1.2, 1.2, 0.5)  # EDM table 1
    for method in (ct, ict, cd, edm):
        assert (method.sigma_min, method.sigma_max, method.sigma_data) == (0.002, 80.0, 0.5)
    assert (ect.sigma_min, ect.sigma_max, ect.sigma_data) == (0.0, 80.0, 0.5)  # ECT: EDM's boundary at 0
    assert ct.target_decay(1000, 1000) == pytest.approx(math.exp(2 * math.log(0.9) / 151))
    assert ConsistencyTraining(mu0=0.95, s1=40).target_decay(1000, 1000) == pytest.approx(math.exp(2 * math.log(0.95) / 41))
    assert ImprovedConsistencyTraining(s1=40).num_scales(100, 100) == 41
