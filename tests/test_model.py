import math

import pytest
import torch

from consistency import ConsistencyModel, EDMDenoiser, UNet
from tests.conftest import randomize_, tiny_model, tiny_unet


def test_boundary_condition_is_exact_at_sigma_min():
    model = randomize_(tiny_model()).eval()
    x = torch.randn(4, 1, 8, 8)
    out = model(x, torch.full((4,), 0.002))
    assert torch.equal(out, x)
    # ... and it is a real constraint: away from sigma_min the randomised network changes the input.
    assert not torch.allclose(model(x, torch.full((4,), 0.5)), x)


def test_consistency_scalings():
    m = tiny_model()
    c_skip, c_out, c_in, c_noise = m.scalings(torch.tensor([0.002, 2.0, 80.0]))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    sd, eps = 0.5, 0.002
    assert c_skip[1].item() == pytest.approx(sd**2 / ((2 - eps) ** 2 + sd**2))
    assert c_out[1].item() == pytest.approx((2 - eps) * sd / (4 + sd**2) ** 0.5)
    assert c_in[2].item() == pytest.approx(1 / (80**2 + sd**2) ** 0.5)
    assert c_noise[1].item() == pytest.approx(math.log(2) / 4)


def test_edm_scalings():
    d = EDMDenoiser(tiny_unet())
    c_skip, c_out, c_in, c_noise = d.scalings(torch.tensor([0.5, 2.0]))
    assert c_skip[0].item() == pytest.approx(0.5) and c_out[0].item() == pytest.approx(0.25 / 0.5**0.5)
    assert c_skip[1].item() == pytest.approx(0.25 / 4.25) and c_out[1].item() == pytest.approx(1.0 / 4.25**0.5)
    assert c_in[1].item() == pytest.approx(1 / 4.25**0.5)
    assert c_noise[0].item() == pytest.approx(math.log(0.5) / 4)


@pytest.mark.parametrize("size,mult", [(28, (1, 2, 2)), (32, (1, 2, 2)), (64, (1, 2, 2, 2))])
def test_unet_shapes(size, mult):
    net = UNet(3 if size != 28 else 1, base_channels=8, channel_mult=mult, num_res_blocks=1)
    x = torch.randn(2, net.in_channels, size, size)
    assert net(x, torch.zeros(2)).shape == x.shape


def test_unet_class_conditioning_changes_output():
    net = randomize_(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=10))
    x = torch.randn(2, 1, 8, 8)
    a = net(x, torch.zeros(2), torch.tensor([0, 0]))
    b = net(x, torch.zeros(2), torch.tensor([3, 3]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="class_labels"):
        net(x, torch.zeros(2))


def test_unet_rejects_indivisible_size():
    net = UNet(1, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1)
    with pytest.raises(ValueError, match="not divisible"):
        net(torch.randn(1, 1, 30, 30), torch.zeros(1))


def test_noise_level_conditions_the_output():
    model = randomize_(ConsistencyModel(tiny_unet()))
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(model.net(x, torch.tensor([0.1])), model.net(x, torch.tensor([0.2])))


class ProbeNet(torch.nn.Module):
    """A network that records what it is given and returns a constant: the wrapper's arithmetic is then visible."""

    in_channels, num_classes = 1, None

    def forward(self, x, c_noise, class_labels=None):
        self.seen = (x, c_noise, class_labels)
        return torch.full_like(x, 0.3)


@pytest.mark.parametrize("wrapper", ["consistency", "edm"])
def test_the_wrapper_feeds_c_in_x_and_c_noise_and_combines_with_c_skip_and_c_out(wrapper):
    sd, eps = 0.5, 0.002
    net = ProbeNet()
    model = ConsistencyModel(net) if wrapper == "consistency" else EDMDenoiser(net)
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([0.5, 3.0])
    labels = torch.tensor([1, 2])
    out = model(x, t, labels)
    if wrapper == "consistency":
        c_skip, c_out = sd**2 / ((t - eps) ** 2 + sd**2), (t - eps) * sd / (t**2 + sd**2).sqrt()
    else:
        c_skip, c_out = sd**2 / (t**2 + sd**2), t * sd / (t**2 + sd**2).sqrt()
    c_in = 1 / (t**2 + sd**2).sqrt()
    b = (-1, 1, 1, 1)
    torch.testing.assert_close(out, c_skip.view(b) * x + c_out.view(b) * 0.3)
    torch.testing.assert_close(net.seen[0], c_in.view(b) * x)
    torch.testing.assert_close(net.seen[1], t.log() / 4)  # EDM's c_noise = ln(t) / 4
    assert torch.equal(net.seen[2], labels)
    torch.testing.assert_close(model(x, 3.0), model(x, torch.full((2,), 3.0)))  # a float sigma is broadcast


def test_wrappers_declare_the_interface():
    model = ConsistencyModel(tiny_unet(), image_shape=(1, 8, 8), sigma_min=0.01)
    assert model.image_shape == (1, 8, 8) and model.in_channels == 1 and model.num_classes is None
    assert model.sigma_min == 0.01 and ConsistencyModel(tiny_unet()).image_shape is None
