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
    c_skip, c_out, c_in, c_noise = m.scalings(torch.tensor([0.002, 1.0, 80.0]))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    sd, eps = 0.5, 0.002
    assert c_skip[1].item() == pytest.approx(sd**2 / ((1 - eps) ** 2 + sd**2))
    assert c_out[1].item() == pytest.approx((1 - eps) * sd / (1 + sd**2) ** 0.5)
    assert c_in[2].item() == pytest.approx(1 / (80**2 + sd**2) ** 0.5)
    assert c_noise[1].item() == pytest.approx(0.0)


def test_edm_scalings():
    d = EDMDenoiser(tiny_unet())
    c_skip, c_out, c_in, c_noise = d.scalings(torch.tensor([0.5]))
    assert c_skip.item() == pytest.approx(0.5) and c_out.item() == pytest.approx(0.25 / 0.5**0.5)
    assert c_noise.item() == pytest.approx(torch.log(torch.tensor(0.5)).item() / 4)


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
