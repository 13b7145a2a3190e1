import pytest
import torch

from consistency import ConsistencyModel, default_sigmas
from consistency.editing import (
    LUMA,
    color_op,
    colorize,
    denoise,
    edit,
    inpaint,
    interpolate,
    orthogonal_basis,
    patch_op,
    slerp,
    stroke_edit,
    super_resolve,
)
from tests.conftest import randomize_, tiny_model, tiny_unet

SIGMAS = [80.0, 5.0, 0.5]


def rgb_model():
    return randomize_(tiny_model(channels=3)).eval()


def test_orthogonal_basis_first_axis():
    q = orthogonal_basis(torch.tensor([1.0, 2.0, 2.0]))
    assert torch.allclose(q.T @ q, torch.eye(3, dtype=q.dtype), atol=1e-12)
    assert torch.allclose(q[:, 0], torch.tensor([1.0, 2.0, 2.0], dtype=q.dtype) / 3)


@pytest.mark.parametrize("op,channels", [(color_op(), 3), (patch_op(2), 3), (patch_op(4), 1)])
def test_transforms_are_orthogonal_with_exact_inverses(op, channels):
    x = torch.randn(2, channels, 8, 8)
    y = op.forward(x)
    assert torch.allclose(op.inverse(y), x, atol=1e-5)
    assert torch.allclose(y.square().sum(), x.square().sum(), rtol=1e-5)  # orthogonal: norms are preserved


def test_patch_op_first_coefficient_is_the_patch_mean():
    x = torch.randn(1, 1, 4, 4)
    y = patch_op(2).forward(x)
    means = x.view(1, 1, 2, 2, 2, 2).mean(dim=(3, 5))  # (1, 1, 2, 2) per 2x2 patch
    assert torch.allclose(y[..., ::2, ::2], means * 2, atol=1e-6)  # unit-norm axis (1,1,1,1)/2 -> 2 * mean


def test_inpaint_keeps_every_known_pixel_exactly():
    model = randomize_(tiny_model()).eval()
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1  # generate the lower half
    out = inpaint(model, images, mask, SIGMAS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[..., :4, :], images[..., :4, :])
    assert not torch.allclose(out[..., 4:, :], images[..., 4:, :])
    again = inpaint(model, images, mask, SIGMAS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded


def test_edit_core_keeps_known_coordinates():
    model = rgb_model()
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    out = edit(model, images, torch.tensor([0.0, 1.0, 1.0]).view(1, 3, 1, 1), SIGMAS, color_op())
    assert torch.allclose(color_op().forward(out)[:, 0], color_op().forward(images)[:, 0], atol=1e-5)
    assert not torch.allclose(out, images, atol=1e-2)


def test_colorize_keeps_luminance():
    model = rgb_model()
    grey = (torch.rand(2, 1, 8, 8) * 2 - 1).expand(2, 3, 8, 8)
    out = colorize(model, grey, SIGMAS, generator=torch.Generator().manual_seed(1))
    luma = lambda x: torch.einsum("c,bchw->bhw", LUMA, x)  # noqa: E731
    assert torch.allclose(luma(out), luma(grey), atol=1e-5)
    assert out.std(dim=1).mean() > 1e-3  # colour was added: the channels differ


def test_colorize_by_hand():
    # With F = 0, Algorithm 4 with A = the colour basis Q: keep the luma coordinate, regenerate the two chroma ones.
    model = ConsistencyModel(tiny_unet(channels=3)).eval()
    grey = (torch.rand(2, 1, 8, 8) * 2 - 1).expand(2, 3, 8, 8)
    sigmas = [3.0, 0.5]
    out = colorize(model, grey, sigmas, generator=torch.Generator().manual_seed(0))
    q = orthogonal_basis(LUMA).float()
    fwd = lambda x: torch.einsum("ji,bjhw->bihw", q, x)  # noqa: E731
    inv = lambda c: torch.einsum("ij,bjhw->bihw", q, c)  # noqa: E731
    keep = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    known = fwd(grey) * keep
    g = torch.Generator().manual_seed(0)
    x = inv(known)
    for i, t in enumerate(sigmas):
        std = t if i == 0 else (t**2 - 0.002**2) ** 0.5
        x = c_skip(t) * (x + std * torch.randn(2, 3, 8, 8, generator=g))
        x = inv(known + fwd(x) * (1 - keep))
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


def test_editors_default_to_four_levels():
    # models with their own noise range (T = 20): the default levels are the model's, not the module constants'
    model = randomize_(ConsistencyModel(tiny_unet(), sigma_max=20.0)).eval()
    rgb = randomize_(ConsistencyModel(tiny_unet(channels=3), sigma_max=20.0)).eval()
    images, mask = torch.rand(2, 1, 8, 8) * 2 - 1, torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    levels = default_sigmas(4, model)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(inpaint(model, images, mask, generator=g()), inpaint(model, images, mask, levels, generator=g()))
    assert torch.equal(super_resolve(model, images[..., :4, :4], 2, generator=g()),
                       super_resolve(model, images[..., :4, :4], 2, levels, generator=g()))
    grey = images.expand(2, 3, 8, 8)
    assert torch.equal(colorize(rgb, grey, generator=g()), colorize(rgb, grey, levels, generator=g()))
    assert torch.equal(stroke_edit(model, images, generator=g()), stroke_edit(model, images, 5.0, 3, generator=g()))
    with pytest.raises(ValueError, match=r"t_start must lie in \(0.002, 20.0\]"):
        stroke_edit(model, images, t_start=50.0)
    assert torch.equal(super_resolve(model, images, 1), images)  # factor 1: every pixel is its own patch mean
    half = torch.full((1, 1, 8, 8), 0.5)  # a mask value of exactly 0.5 keeps the pixel
    assert torch.equal(inpaint(model, images, half, generator=g()), images)


def test_colorize_refuses_grayscale_models():
    with pytest.raises(ValueError, match="RGB"):
        colorize(tiny_model(), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolution_keeps_patch_means(factor):
    model = randomize_(tiny_model()).eval()
    low = torch.rand(2, 1, 8 // factor, 8 // factor) * 2 - 1
    out = super_resolve(model, low, factor, SIGMAS, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 8, 8)
    means = torch.nn.functional.avg_pool2d(out, factor)
    assert torch.allclose(means, low, atol=1e-5)
    assert out.std() > 0 and not torch.allclose(out, low.repeat_interleave(factor, -1).repeat_interleave(factor, -2))


def test_interpolation_end_points_and_slerp_norm():
    model = randomize_(tiny_model()).eval()
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    path = interpolate(model, z1, z2, [0.0, 0.5, 1.0])
    assert path.shape == (3, 2, 1, 8, 8)
    assert torch.allclose(path[0], model(80.0 * z1, 80.0), atol=1e-5)
    assert torch.allclose(path[2], model(80.0 * z2, 80.0), atol=1e-5)
    # Between latents of equal norm the path stays on that sphere (a straight line would cut inside it).
    z2 = z2 * (z1.flatten(1).norm(dim=1) / z2.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    for alpha in (0.25, 0.5):
        assert torch.allclose(slerp(z1, z2, alpha).flatten(1).norm(dim=1), z1.flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.allclose(slerp(z1, z1, 0.3), z1, atol=1e-5)  # parallel latents do not give NaN
    # antiparallel latents: the great circle is undefined, the straight line (1 - a) z1 + a z2 is used
    torch.testing.assert_close(slerp(z1, -z1, 0.25), 0.5 * z1)


def c_skip(t, eps=0.002, sd=0.5):
    return sd**2 / ((t - eps) ** 2 + sd**2)


def test_algorithm_4_noise_levels_by_hand():
    # With F = 0 (the zero-initialised output layer) f(x, t) = c_skip(t) x: Algorithm 4 is computable by hand.
    # A large eps separates sqrt(t^2 - eps^2) from t; the first level adds t_1 z, the later ones sqrt(t_n^2 - eps^2) z.
    eps = 0.4
    model = ConsistencyModel(tiny_unet(), sigma_min=eps).eval()
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    sigmas = [3.0, 1.0, 0.5]
    out = edit(model, images, mask, sigmas, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    known = images * (1 - mask)
    x = known
    for i, t in enumerate(sigmas):
        std = t if i == 0 else (t**2 - eps**2) ** 0.5
        x = c_skip(t, eps) * (x + std * torch.randn(2, 1, 8, 8, generator=g))
        x = known + x * mask
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)


def test_stroke_edit_by_hand_and_it_follows_the_strokes():
    model = tiny_model().eval()  # F = 0: one step from t_start gives c_skip(t_start) (strokes + t_start z)
    strokes = torch.rand(2, 1, 8, 8) * 2 - 1
    out = stroke_edit(model, strokes, t_start=2.0, steps=1, generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, c_skip(2.0) * (strokes + 2.0 * z), rtol=1e-5, atol=1e-6)
    model = randomize_(tiny_model()).eval()
    a = stroke_edit(model, strokes, t_start=2.0, steps=2, generator=torch.Generator().manual_seed(0))
    b = stroke_edit(model, strokes, t_start=2.0, steps=2, generator=torch.Generator().manual_seed(0))
    c = stroke_edit(model, -strokes, t_start=2.0, steps=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == strokes.shape and torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)
    with pytest.raises(ValueError, match="t_start"):
        stroke_edit(model, strokes, t_start=500.0)
    with pytest.raises(ValueError, match="t_start"):
        stroke_edit(model, strokes, t_start=0.002)  # at sigma_min there is nothing to denoise
    assert stroke_edit(model, strokes, t_start=80.0, steps=1).shape == strokes.shape  # T itself is allowed
    labelled = randomize_(tiny_model(num_classes=3)).eval()
    a = stroke_edit(labelled, strokes, 2.0, 1, generator=torch.Generator().manual_seed(0), class_labels=torch.tensor([0, 0]))
    b = stroke_edit(labelled, strokes, 2.0, 1, generator=torch.Generator().manual_seed(0), class_labels=torch.tensor([2, 2]))
    assert not torch.allclose(a, b)  # the labels reach the model


def test_denoise():
    model = randomize_(tiny_model()).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(denoise(model, x, 0.002), x)  # the boundary condition: no noise, nothing changes
    assert torch.allclose(denoise(model, x, 1.0), model(x, 1.0))
    with pytest.raises(ValueError, match="sigma must lie"):
        denoise(model, x, 500.0)
    wide = ConsistencyModel(tiny_unet(), sigma_min=0.01).eval()  # the model's own range
    with pytest.raises(ValueError, match=r"\[0.01, 80.0\]"):
        denoise(wide, x, 0.005)


def test_wrong_shapes_are_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"expected images \(B, 1, H, W\)"):
        inpaint(model, torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="the mask is"):
        inpaint(model, torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="factor"):
        super_resolve(model, torch.zeros(1, 1, 4, 4), 0)
