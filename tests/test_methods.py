"""The training methods: distances, each loss against a hand computation, the method interface and its registry."""

import math

import pytest
import torch

from consistency import (
    EMA,
    METHODS,
    ConsistencyTraining,
    EasyConsistencyTraining,
    ImprovedConsistencyTraining,
    build_method,
    karras_sigmas,
    pseudo_huber_distance,
)
from consistency.methods import consistency_pair, get_distance, l1_distance, l2_distance, method_options
from tests.conftest import randomize_, tiny_model

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
    x, y = torch.zeros(2, 1, 1, 2), torch.tensor([[1.0, 3.0], [0.0, 2.0]]).view(2, 1, 1, 2)
    assert l2_distance(x, y).tolist() == [5.0, 2.0]
    assert l1_distance(x, y).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="unknown distance"):
        get_distance("lpips")


def f_zero_net(x, t):
    """The consistency function of a model whose network outputs 0 (the UNet's zero-initialised output layer)."""
    t = t.view(-1, 1, 1, 1)
    return SD**2 / ((t - EPS) ** 2 + SD**2) * x


def test_ct_loss_matches_a_hand_computation():
    # CM Algorithm 3 with lambda = 1 and L2, recomputed from the same random draws: n ~ U{0..N-2}, one z for both sides.
    model, x = tiny_model().eval(), torch.rand(6, 1, 8, 8) * 2 - 1
    ct = ConsistencyTraining()
    torch.manual_seed(3)
    out = ct(model, model, x, step=500, total_steps=1000)
    torch.manual_seed(3)
    n_levels = ct.num_scales(500, 1000)
    sigmas = karras_sigmas(n_levels).float()
    n = torch.randint(0, n_levels - 1, (6,))
    z = torch.randn_like(x)
    expected = (f_zero_net(x + sigmas[n + 1].view(-1, 1, 1, 1) * z, sigmas[n + 1])
                - f_zero_net(x + sigmas[n].view(-1, 1, 1, 1) * z, sigmas[n])).square().flatten(1).mean(1)
    assert out.logs == {"N": n_levels} and n_levels == math.ceil(math.sqrt(0.5 * (151**2 - 4) + 4) - 1) + 1
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-7)


def test_ict_loss_matches_a_hand_computation():
    # iCT: pseudo-Huber over the whole sample, weight 1 / (t_{n+1} - t_n), n from the discretised lognormal.
    model, x = tiny_model().eval(), torch.rand(6, 1, 8, 8) * 2 - 1
    ict = ImprovedConsistencyTraining(s1=40)
    torch.manual_seed(4)
    out = ict(model, None, x, step=0, total_steps=100)
    torch.manual_seed(4)
    sigmas = karras_sigmas(11).float()  # N(0) = s0 + 1 = 11
    probs = torch.tensor([math.erf((math.log(sigmas[i + 1]) + 1.1) / (math.sqrt(2) * 2.0))
                          - math.erf((math.log(sigmas[i]) + 1.1) / (math.sqrt(2) * 2.0)) for i in range(10)])
    n = torch.multinomial(probs / probs.sum(), 6, replacement=True)
    z = torch.randn_like(x)
    t_cur, t_next = sigmas[n], sigmas[n + 1]
    d = (f_zero_net(x + t_next.view(-1, 1, 1, 1) * z, t_next) - f_zero_net(x + t_cur.view(-1, 1, 1, 1) * z, t_cur))
    c = 0.00054 * 8
    expected = ((d.flatten(1).square().sum(1) + c**2).sqrt() - c) / (t_next - t_cur)
    assert out.logs == {"N": 11}
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_ect_loss_matches_a_hand_computation():
    # ECT: t lognormal(-1.1, 2) clamped to [2 eps, T], r = r(t) at the stage, weight 1 / (t - r), one z.
    model, x = tiny_model().eval(), torch.rand(6, 1, 8, 8) * 2 - 1
    ect = EasyConsistencyTraining(stages=4)
    torch.manual_seed(5)
    out = ect(model, None, x, step=60, total_steps=100)  # stage floor(60 * 4 / 100) = 2
    torch.manual_seed(5)
    t = (torch.randn(6) * 2.0 - 1.1).exp().clamp(2 * EPS, 80.0)
    r = (t * (1 - 2.0**-3 * (1 + 8 * torch.sigmoid(-t)))).clamp(min=EPS)
    z = torch.randn_like(x)
    d = f_zero_net(x + t.view(-1, 1, 1, 1) * z, t) - f_zero_net(x + r.view(-1, 1, 1, 1) * z, r)
    c = 0.00054 * 8
    expected = ((d.flatten(1).square().sum(1) + c**2).sqrt() - c) / (t - r)
    assert out.logs == {"stage": 2}
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


def test_ect_mapping_starts_as_denoising_and_tightens():
    loss = EasyConsistencyTraining()
    t = torch.tensor([0.01, 0.5, 1.0, 80.0])
    r0 = loss.r_of_t(t, stage=0)
    assert torch.equal(r0[:3], torch.full((3,), 0.002))  # small t: the target is the data (boundary)
    assert r0[3].item() == pytest.approx(40.0, rel=1e-4)  # large t: r = t (1 - 1/2)
    r3 = loss.r_of_t(t, stage=3)
    expected = t * (1 - 2.0**-4 * (1 + 8 * torch.sigmoid(-t)))
    assert torch.allclose(r3, expected.clamp(min=0.002))
    assert ((t - r3) < (t - r0)).all() and (r3 < t).all()
    assert loss.stage(0, 600) == 0 and loss.stage(599, 600) == 5


def test_the_registry_builds_every_method_by_name():
    for name, cls in METHODS.items():
        method = build_method(name, teacher=tiny_model() if name == "cd" else None)
        assert isinstance(method, cls) and method.name == name and method.config()["name"] == name
        assert method.sampler in ("consistency", "edm")
    assert build_method("ict", s1=320).s1 == 320
    with pytest.raises(ValueError, match="takes no option num_scales"):
        build_method("ict", num_scales=10)
    with pytest.raises(ValueError, match="distils a teacher"):
        build_method("cd")
    with pytest.raises(ValueError, match="unknown method"):
        build_method("gan")
    assert "s1" in method_options("ict") and "num_scales" in method_options("cd") and "teacher" not in method_options("cd")
