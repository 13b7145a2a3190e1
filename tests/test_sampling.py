import pytest
import torch

from consistency import default_sigmas, sample, sample_multistep, sample_onestep
from tests.conftest import randomize_, tiny_model


def test_default_sigmas():
    assert default_sigmas(1) == [80.0]
    two = default_sigmas(2)
    assert two[0] == 80.0 and 0.002 < two[1] < 80 and len(default_sigmas(5)) == 5
    with pytest.raises(ValueError):
        default_sigmas(0)


def test_shapes_and_seeded_determinism():
    model = randomize_(tiny_model()).eval()
    shape = (3, 1, 8, 8)
    for fn in (lambda g: sample_onestep(model, shape, generator=g), lambda g: sample_multistep(model, shape, 3, generator=g)):
        a = fn(torch.Generator().manual_seed(1))
        b = fn(torch.Generator().manual_seed(1))
        c = fn(torch.Generator().manual_seed(2))
        assert a.shape == shape and torch.equal(a, b) and not torch.equal(a, c)


def test_multistep_adds_noise_of_the_right_size():
    # With F = 0 the model is f(x, t) = c_skip(t) x, so each step is deterministic given the noise: check one by hand.
    model = tiny_model().eval()  # zero-initialised output layer: F = 0
    g = torch.Generator().manual_seed(0)
    out = sample(model, (1, 1, 8, 8), [80.0, 1.0], generator=g)
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    c = lambda t: 0.25 / ((t - 0.002) ** 2 + 0.25)  # noqa: E731
    x = c(80.0) * 80.0 * z1
    expected = c(1.0) * (x + (1.0 - 0.002**2) ** 0.5 * z2)
    assert torch.allclose(out, expected, atol=1e-6)


def test_bad_sigmas_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="decreasing"):
        sample(model, (1, 1, 8, 8), [1.0, 2.0])
    with pytest.raises(ValueError, match="sigma_min"):
        sample(model, (1, 1, 8, 8), [1.0, 0.001])
