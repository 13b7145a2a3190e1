import math

import pytest
import torch

from consistency import EMA, ConsistencyTraining, ImprovedConsistencyTraining, pseudo_huber_distance
from consistency.losses import consistency_pair, get_distance, l1_distance, l2_distance
from tests.conftest import randomize_, tiny_model


def test_pseudo_huber_known_value():
    x = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([3.0, 4.0, 0.0, 0.0]).view(1, 1, 2, 2)
    c = 0.00054 * math.sqrt(4)  # dim = C*H*W = 4
    assert pseudo_huber_distance(x, y).item() == pytest.approx(math.sqrt(25 + c**2) - c, rel=1e-6)
    # The norm runs over the whole sample, not per pixel: a per-pixel version would give 3 + 4 - 2c.
    assert pseudo_huber_distance(x, y, c=1.0).item() == pytest.approx(math.sqrt(26) - 1, rel=1e-6)


def test_l1_l2_values_and_unknown_distance():
    x, y = torch.zeros(2, 1, 1, 2), torch.tensor([[1.0, 3.0], [0.0, 2.0]]).view(2, 1, 1, 2)
    assert l2_distance(x, y).tolist() == [5.0, 2.0]
    assert l1_distance(x, y).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="unknown distance"):
        get_distance("lpips")


def test_ict_weighting_and_target_decay():
    loss = ImprovedConsistencyTraining()
    assert loss.target_decay(0, 100) is None
    assert loss.weight(torch.tensor([1.0]), torch.tensor([1.5])).item() == pytest.approx(2.0)
    ct = ConsistencyTraining()
    assert ct.target_decay(0, 100) == pytest.approx(0.9)  # mu(0) = mu0 when N(0) = s0


def test_gradients_reach_theta_and_never_theta_minus():
    torch.manual_seed(0)
    model = randomize_(tiny_model())
    target = EMA(model, 0.9)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = ConsistencyTraining()(model, target, x, step=5, total_steps=10).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.out.parameters())
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())


def test_ict_target_pass_is_stop_gradient():
    # With theta- = stopgrad(theta), the gradient must equal the one of d(f(x_next), const) - not the sum of both paths.
    model = randomize_(tiny_model())
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    t_next, t_cur = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5])
    online, target = consistency_pair(model, model, x + 0.1, t_next, x, t_cur)
    assert not target.requires_grad
    (online - target).square().sum().backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    both = (model(x + 0.1, t_next) - model(x, t_cur)).square().sum()
    both.backward()
    assert any(not torch.allclose(a, p.grad) for a, p in zip(ours, model.parameters()))


def test_online_and_target_share_dropout_masks():
    model = randomize_(tiny_model(dropout=0.5)).train()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 1.0])
    online, target = consistency_pair(model, model, x, t, x, t)
    assert torch.equal(online.detach(), target)  # same input, same masks -> same output
    assert not torch.equal(model(x, t), model(x, t))  # while two plain calls draw different masks


def test_loss_is_per_sample_and_finite():
    model = tiny_model()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    for loss in (ConsistencyTraining(), ImprovedConsistencyTraining()):
        value = loss(model, model, x, step=0, total_steps=100)
        assert value.shape == (5,) and torch.isfinite(value).all() and (value >= 0).all()


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
    from consistency import EasyConsistencyTraining

    loss = EasyConsistencyTraining()
    t = torch.tensor([0.01, 0.5, 1.0, 80.0])
    r0 = loss.r_of_t(t, stage=0)
    assert torch.equal(r0[:3], torch.full((3,), 0.002))  # small t: the target is the data (boundary)
    assert r0[3].item() == pytest.approx(40.0, rel=1e-4)  # large t: r = t (1 - 1/2)
    r3 = loss.r_of_t(t, stage=3)
    expected = t * (1 - 2.0**-4 * (1 + 8 * torch.sigmoid(-t)))
    assert torch.allclose(r3, expected.clamp(min=0.002))
    assert ((t - r3) < (t - r0)).all() and (r3 < t).all()
    assert loss.num_scales(0, 600) == 0 and loss.num_scales(599, 600) == 5


def test_ect_loss_is_finite_and_weighted():
    from consistency import EasyConsistencyTraining

    model = tiny_model()
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    value = EasyConsistencyTraining()(model, model, x, step=0, total_steps=10)
    assert value.shape == (6,) and torch.isfinite(value).all()
