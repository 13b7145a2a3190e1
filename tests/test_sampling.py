import pytest
import torch

from consistency import ConsistencyModel, default_sigmas, generate, sample
from consistency.sampling import consistency_sigmas, edm_sigmas
from tests.conftest import randomize_, tiny_model, tiny_unet


def test_default_sigmas():
    assert default_sigmas(1) == [80.0]
    two = default_sigmas(2)
    assert two[0] == 80.0 and two[1] == pytest.approx(2.5152, abs=1e-4) and len(default_sigmas(5)) == 5
    with pytest.raises(ValueError):
        default_sigmas(0)
    model = ConsistencyModel(tiny_unet(), sigma_min=0.01, sigma_max=20.0)
    assert default_sigmas(3, model) == consistency_sigmas(3, 0.01, 20.0)  # the model's noise range, not the constants
    assert default_sigmas(1, model) == [20.0]
    edm = edm_sigmas(18, 0.002, 80.0)
    assert len(edm) == 19 and edm[0] == 80.0 and edm[-2] == 0.002 and edm[-1] == 0.0
    assert edm_sigmas(2, 0.002, 80.0) == [80.0, 0.002, 0.0]  # the fewest levels: one Heun step, one Euler step
    with pytest.raises(ValueError, match="steps >= 2"):
        edm_sigmas(1, 0.002, 80.0)


def test_shapes_and_seeded_determinism():
    model = randomize_(tiny_model()).eval()
    shape = (3, 1, 8, 8)
    for steps in (1, 3):
        a = sample(model, shape, steps=steps, generator=torch.Generator().manual_seed(1))
        b = sample(model, shape, steps=steps, generator=torch.Generator().manual_seed(1))
        c = sample(model, shape, steps=steps, generator=torch.Generator().manual_seed(2))
        assert a.shape == shape and torch.equal(a, b) and not torch.equal(a, c)


def test_multistep_adds_noise_of_the_right_size():
    # With F = 0 the model is f(x, t) = c_skip(t) x, so each step is deterministic given the noise: check one by hand.
    # A large sigma_min makes sqrt(tau^2 - eps^2) and tau differ by far more than the tolerance.
    eps, sd = 0.5, 0.5
    model = ConsistencyModel(tiny_unet(), sigma_min=eps).eval()  # zero-initialised output layer: F = 0
    out = sample(model, (1, 1, 8, 8), [80.0, 0.6], generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    c = lambda t: sd**2 / ((t - eps) ** 2 + sd**2)  # noqa: E731
    x = c(80.0) * 80.0 * z1
    expected = c(0.6) * (x + (0.6**2 - eps**2) ** 0.5 * z2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_bad_sigmas_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="decreasing"):
        sample(model, (1, 1, 8, 8), [1.0, 2.0])
    with pytest.raises(ValueError, match="sigma_min"):
        sample(model, (1, 1, 8, 8), [1.0, 0.001])


def test_generate_batches_seeds_and_labels():
    model = randomize_(tiny_model(num_classes=3))
    model.image_shape = (1, 8, 8)
    a = generate(model, 7, steps=1, batch_size=3, seed=1)
    b = generate(model, 7, steps=1, batch_size=7, seed=1)
    assert a.shape == (7, 1, 8, 8) and a.abs().max() <= 1
    torch.testing.assert_close(a, b)  # one generator across batches: one-step images do not depend on the batching
    assert torch.equal(generate(model, 7, steps=2, seed=4), generate(model, 7, steps=2, seed=4))
    labels = torch.tensor([2] * 7)
    assert not torch.equal(generate(model, 7, class_labels=labels), generate(model, 7))  # classes in turn by default
    assert model.training  # restored
    with pytest.raises(ValueError, match="image_shape"):
        generate(tiny_model(), 2)
