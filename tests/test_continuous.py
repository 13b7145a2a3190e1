"""sCM (TrigFlow) and MeanFlow: the JVP utility, closed forms on Gaussian data, boundaries, sampling, DDP and bf16.

Gaussian data N(0, s^2) in one dimension. TrigFlow (z ~ N(0, sd^2)): x_t = cos t x0 + sin t z has variance
V_t = cos^2 t s^2 + sin^2 t sd^2, the PF-ODE velocity is sin t cos t (sd^2 - s^2) / V_t x_t, and the consistency
function is f(x_t, t) = x_t s / sqrt(V_t); in the library's convention (x = x0 + sigma e) that is x s / sqrt(s^2 + sigma^2).
MeanFlow (z_t = (1 - t) x + t e): V(t) = (1 - t)^2 s^2 + t^2, the velocity is (t - (1 - t) s^2) / V(t) z and the average
velocity u(z, r, t) = z (1 - sqrt(V(r) / V(t))) / (t - r).
"""

import math
import warnings

import pytest
import torch
from torch import nn

from consistency import (
    ConsistencyModel,
    ContinuousConsistencyDistillation,
    EDMDenoiser,
    EDMLoss,
    MeanFlow,
    MeanFlowModel,
    SimplifiedConsistencyTraining,
    UNet,
    generate,
    sample,
)
from consistency.jvp import jvp, unwrap
from consistency.model import trigflow_network, trigflow_velocity
from tests.conftest import randomize_, tiny_unet

S, SD = 0.3, 0.5


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_jvp_through_the_unet_matches_central_differences():
    torch.manual_seed(0)
    net = randomize_(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3)).double().eval()
    model = ConsistencyModel(net, sigma_min=0.0)
    x, t = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0.3, 1.2], dtype=torch.float64)
    vx, vt = torch.randn_like(x), torch.tensor([0.7, -0.4], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    fn = lambda xx, tt: trigflow_network(model, xx, tt, labels)  # noqa: E731 (attention, norms and the embedding)
    out, tangent = jvp(fn, (x, t), (vx, vt))
    h = 1e-6
    central = (fn(x + h * vx, t + h * vt) - fn(x - h * vx, t - h * vt)) / (2 * h)
    assert relative(tangent, central) < 1e-7  # float64: forward-mode AD agrees with central differences to 1e-7
    torch.testing.assert_close(out, fn(x, t))
    _, fd = jvp(fn, (x, t), (vx, vt), method="finite_difference", eps=1e-6)
    assert relative(fd, tangent) < 1e-6  # the fallback computes the same quantity
    model32 = ConsistencyModel(net.float(), sigma_min=0.0)
    fn32 = lambda xx, tt: trigflow_network(model32, xx, tt, labels)  # noqa: E731
    _, fd = jvp(fn32, (x.float(), t.float()), (vx.float(), vt.float()), method="finite_difference")
    _, ad = jvp(fn32, (x.float(), t.float()), (vx.float(), vt.float()))
    # In float32 at the default step the fallback is approximate: 1.6% on this (randomised, very nonlinear) UNet.
    assert relative(fd, ad) < 3e-2
    with pytest.raises(ValueError, match="unknown JVP method"):
        jvp(fn, (x, t), (vx, vt), method="complex_step")


def test_unwrap_finds_the_module_inside_wrappers():
    model = ConsistencyModel(tiny_unet())
    assert unwrap(model) is model and unwrap(torch.compile(model)) is model


# ---------------------------------------------------------------------------------------------------- TrigFlow
class IdealDenoiser(nn.Module):
    sigma_data = SD

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).view(-1, 1, 1, 1)
        return S**2 / (S**2 + sigma**2) * x


class IdealConsistency(IdealDenoiser):
    """x s / sqrt(s^2 + sigma^2); with another s it still meets the boundary f(x, 0) = x but is not constant along
    these trajectories (a scaled f* would be: consistency and the boundary together pin f down)."""

    def __init__(self, s=S):
        super().__init__()
        self.s = s

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).view(-1, 1, 1, 1)
        return x * self.s / (self.s**2 + sigma**2).sqrt()


def gaussian_trigflow(n, t0=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) * S
    z = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) * SD
    t = torch.full((n,), t0, dtype=torch.float64) if t0 else torch.rand(n, generator=g, dtype=torch.float64) * 1.4 + 0.1
    b = (-1, 1, 1, 1)
    return x0, z, t.cos().view(b) * x0 + t.sin().view(b) * z, t


def test_the_teacher_conversion_gives_the_trigflow_velocity_and_back_the_denoiser():
    _, _, x_t, t = gaussian_trigflow(64)
    b = (-1, 1, 1, 1)
    cos, sin = t.cos().view(b), t.sin().view(b)
    v = trigflow_velocity(IdealDenoiser(), x_t, t, sigma_data=SD)
    closed = sin * cos * (SD**2 - S**2) / (cos**2 * S**2 + sin**2 * SD**2) * x_t
    torch.testing.assert_close(v, closed, rtol=1e-10, atol=1e-12)
    # ... and the EDM denoiser's output is recovered from it: D = cos t x_t - sin t dx_t/dt
    torch.testing.assert_close(cos * x_t - sin * v, IdealDenoiser()(x_t / cos, SD * t.tan()))


def test_trigflow_boundary_and_the_ideal_consistency_function():
    model = randomize_(ConsistencyModel(tiny_unet(), sigma_min=0.0)).eval()  # sCM's model: f(x, 0) = x exactly
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x, 0.0), x)
    _, _, x_t, t = gaussian_trigflow(16)
    ideal = IdealConsistency()
    f = x_t * S / ((t.cos() ** 2 * S**2 + t.sin() ** 2 * SD**2).sqrt()).view(-1, 1, 1, 1)
    torch.testing.assert_close(ideal(x_t / t.cos().view(-1, 1, 1, 1), SD * t.tan()), f)


def test_the_scd_tangent_vanishes_for_the_ideal_consistency_function():
    # With the exact PF-ODE velocity (an ideal teacher), df/dt = 0 along every trajectory: g = 0 before normalising.
    _, _, x_t, t = gaussian_trigflow(256)
    scd = ContinuousConsistencyDistillation(IdealDenoiser(), warmup=0)
    v = scd.velocity(None, None, x_t, t, None)
    _, g = scd.tangent(IdealConsistency(), x_t, t, v, ratio=1.0)
    _, g_wrong = scd.tangent(IdealConsistency(0.4), x_t, t, v, ratio=1.0)
    assert g.abs().max() < 1e-6 and g_wrong.abs().max() > 1e-2  # float64 rounding, near pi/2 amplified


def test_the_sct_tangent_vanishes_in_expectation_for_the_ideal_consistency_function():
    # sCT's dx_t/dt = cos t z - sin t x0 is one sample of the velocity: E[g | x_t] = 0, so E[g x_t] = 0.
    x0, z, x_t, t = gaussian_trigflow(400_000, t0=0.8, seed=1)
    sct = SimplifiedConsistencyTraining(warmup=0)
    v = sct.velocity(x0, z, x_t, t, None)
    _, g = sct.tangent(IdealConsistency(), x_t, t, v, ratio=1.0)
    _, g_wrong = sct.tangent(IdealConsistency(0.4), x_t, t, v, ratio=1.0)
    scale = (g.square().mean() * x_t.square().mean()).sqrt()
    assert abs((g * x_t).mean()) < 0.01 * scale  # Monte Carlo zero
    assert abs((g_wrong * x_t).mean()) > 0.1 * scale


def test_scm_time_distribution_and_sampling_times():
    scm = SimplifiedConsistencyTraining()
    torch.manual_seed(0)
    t = scm.sample_time(100_000, torch.device("cpu"))
    sigma = SD * t.tan()
    assert sigma.log().median().item() == pytest.approx(-1.0, abs=0.02)  # tan t = e^tau / sd, tau ~ N(-1.0, 1.4^2)
    assert sigma.log().std().item() == pytest.approx(1.4, rel=0.02)
    seen = []

    class Probe(ConsistencyModel):
        def forward(self, x, sigma, class_labels=None):
            seen.append(float(torch.as_tensor(sigma).flatten()[0]))
            return super().forward(x, sigma, class_labels)

    model = Probe(tiny_unet(), sigma_min=0.0).eval()
    sample(model, (2, 1, 8, 8), steps=2, sampler="scm")
    assert seen == pytest.approx([80.0, SD * math.tan(1.1)])  # t_max = arctan(160), then the paper's t = 1.1
    assert math.atan(80 / SD) == pytest.approx(1.56455, abs=1e-5)


# ---------------------------------------------------------------------------------------------------- MeanFlow
def meanflow_v(t):
    return (t - (1 - t) * S**2) / ((1 - t) ** 2 * S**2 + t**2)


def ideal_u(z, r, t, scale=1.0):
    b = (-1, 1, 1, 1)
    r, t = r.view(b), t.view(b)
    var = lambda s: (1 - s) ** 2 * S**2 + s**2  # noqa: E731
    gap = t - r
    avg = (1 - (var(r) / var(t)).sqrt()) / torch.where(gap > 0, gap, torch.ones_like(gap))
    return scale * z * torch.where(gap > 0, avg, meanflow_v(t))  # r = t: the instantaneous velocity


def test_the_meanflow_target_of_the_ideal_average_velocity_is_itself():
    # u_tgt = v - (t - r) du/dt with the true velocity and du/dt by the JVP along (v, 0, 1): u_tgt = u exactly.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 1, 1, 1, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    r = t * torch.rand(64, generator=g, dtype=torch.float64)
    v = meanflow_v(t).view(-1, 1, 1, 1) * z
    mf = MeanFlow()
    u, u_tgt = mf.target(ideal_u, z, r, t, v)
    torch.testing.assert_close(u_tgt, u, rtol=1e-9, atol=1e-12)
    u, u_tgt = mf.target(lambda zz, rr, tt: ideal_u(zz, rr, tt, 1.1), z, r, t, v)
    assert (u_tgt - u).abs().max() > 1e-2


def test_meanflow_boundary_and_conditional_target():
    g = torch.Generator().manual_seed(1)
    n = 400_000
    x = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) * S
    e = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    t = torch.full((n,), 0.6, dtype=torch.float64)
    r = torch.full((n,), 0.2, dtype=torch.float64)
    z = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * e
    mf = MeanFlow()
    u, u_tgt = mf.target(ideal_u, z, t, t, e - x)
    assert torch.equal(u_tgt, e - x)  # r = t: the target is the velocity itself (flow matching)
    u, u_tgt = mf.target(ideal_u, z, r, t, e - x)  # the conditional velocity: the residual is zero in expectation
    scale = ((u - u_tgt).square().mean() * z.square().mean()).sqrt()
    assert abs(((u - u_tgt) * z).mean()) < 0.01 * scale


def test_meanflow_model_maps_noise_levels_to_times():
    # model(x, sigma) jumps to t = 0 from t = sigma / (1 + sigma): with the ideal u it is the ideal consistency function
    class IdealMeanFlow(MeanFlowModel):
        def velocity(self, z, r, t, class_labels=None):
            shape = (z.shape[0],)
            return ideal_u(z, torch.as_tensor(r, dtype=z.dtype).expand(shape), torch.as_tensor(t, dtype=z.dtype).expand(shape))

    model = IdealMeanFlow(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_times=2))
    x = torch.randn(8, 1, 1, 1, dtype=torch.float64)
    for sigma in (0.1, 1.0, 80.0):
        torch.testing.assert_close(model(x, sigma), x * S / math.sqrt(S**2 + sigma**2), rtol=1e-9, atol=1e-12)
    net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_times=2, time_scale=1.0)
    real = randomize_(MeanFlow().wrap(net)).eval()
    e = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    one = sample(real, (2, 1, 8, 8), steps=1, sampler="meanflow", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(one, e - real.velocity(e, 0.0, 1.0))  # x = e - u(e, 0, 1)
    with pytest.raises(ValueError, match="two time inputs"):
        MeanFlowModel(tiny_unet())


# ---------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["scm", "scd", "meanflow"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_continuous_methods_train(name, precision, tmp_path):
    from torch.utils.data import TensorDataset

    from consistency import ConsistencyTrainer, build_method, make_loader, read_checkpoint
    from tests.conftest import synthetic_images

    teacher = EDMDenoiser(randomize_(tiny_unet(num_classes=3, **EDMLoss.net_options))).eval() \
        if name == "scd" else None
    method = build_method(name, teacher=teacher, **({"warmup": 2} if name != "meanflow" else {}))
    net = UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=3, dropout=0.1,
               **method.net_options)  # the teacher's time embedding for scd
    loader = make_loader(TensorDataset(synthetic_images(32), torch.arange(32) % 3), batch_size=8)
    trainer = ConsistencyTrainer(method.wrap(net), loader, method=method, total_steps=4, device="cpu", progress=False,
                                 out_dir=tmp_path, sample_every=0, precision=precision, lr=1e-3)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert all(math.isfinite(v) for v in trainer.history["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt.sampler == method.sampler
    if name != "meanflow":  # the adaptive weighting is trained and saved with the model
        assert trainer.history["warmup"][-1] == 1.0 and "tangent_rms" in trainer.history
        w = ckpt.weights["method"]["weighting.linear.bias"]
        assert w.abs().item() > 0
    images = generate(trainer.ema.module, 3, steps=2, sampler=method.sampler)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()


def test_a_teacher_with_the_1000x_time_scale_is_warned_about():
    """sCM's tangent holds dF/dt: a teacher whose time input is scaled 1000x made sCD diverge (README)."""
    with pytest.warns(UserWarning, match="scales its time input 1000x"):
        ContinuousConsistencyDistillation(EDMDenoiser(tiny_unet()))
    with pytest.warns(UserWarning, match="scales its time input 1000x"):
        SimplifiedConsistencyTraining(EDMDenoiser(tiny_unet()))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ContinuousConsistencyDistillation(EDMDenoiser(tiny_unet(**EDMLoss.net_options)))
        SimplifiedConsistencyTraining()


@pytest.mark.parametrize("name", ["cd", "ect", "scm", "scd"])
def test_a_student_is_built_with_its_teachers_time_embedding(name):
    from consistency import build_method

    for scale in (1.0, 1000.0):
        teacher = EDMDenoiser(randomize_(tiny_unet(time_scale=scale))).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sCM's warning about the 1000x teacher
            method = build_method(name, teacher=teacher)
        assert method.net_options["time_scale"] == scale
        student = method.wrap(tiny_unet(**method.net_options)).eval()
        x = torch.randn(2, 1, 8, 8)
        if name in ("ect", "scm", "scd"):  # EDM's preconditioning: the student starts as the teacher's denoiser
            torch.testing.assert_close(student(x, 0.7), teacher(x, 0.7), rtol=0, atol=0)
    assert EDMLoss.net_options == {"time_scale": 1.0}


def test_the_command_lines_train_sample_and_edit_with_the_continuous_methods(fake_mnist, tmp_path, capsys):
    import json

    from consistency.cli.edit import main as edit_main
    from consistency.cli.sample import main as sample_main
    from consistency.images import save_grid
    from tests.test_cli import TINY, main_py, succeeds

    digit = tmp_path / "digit.png"
    save_grid(torch.zeros(1, 1, 28, 28), digit)
    succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(tmp_path / "teacher"), "--method", "edm",
                       "--steps", "2", *TINY], capsys)
    for name, extra in (("meanflow", []), ("scm", []), ("scd", ["--teacher", str(tmp_path / "teacher" / "checkpoint.pt")])):
        out = tmp_path / name
        succeeds(main_py, ["--data-root", str(fake_mnist), "--out", str(out), "--method", name, "--steps", "2",
                           *extra, *TINY], capsys)
        config = json.loads((out / "config.json").read_text())
        assert config["method"]["name"] == name
        if name == "meanflow":
            assert config["model"]["net"]["num_times"] == 2 and config["method"]["ratio"] == 0.75  # the CPU preset's
        else:
            assert config["method"]["warmup"] == 0.25
        ckpt = str(out / "checkpoint.pt")
        succeeds(sample_main, ["--checkpoint", ckpt, "--n", "4", "--steps", "2", "--out", str(out / "s.npz")], capsys)
        succeeds(edit_main, ["inpaint", "--checkpoint", ckpt, "--input", str(digit), "--box", "0,14,28,28",
                             "--class-label", "1", "--out", str(out / "e.png")], capsys)


def test_the_scm_loss_by_hand_with_shared_dropout_masks():
    """Algorithm 1 recomputed from the same draws: t, z, dx/dt, the JVP, g, its RMS normalisation, e^w / D and -w;
    the loss's F- is F_theta under stop-gradient, and with dropout both passes draw the same masks."""
    torch.manual_seed(0)
    net = randomize_(UNet(1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, dropout=0.3, time_scale=1.0))
    model = ConsistencyModel(net, sigma_min=0.0).train()
    scm = SimplifiedConsistencyTraining(warmup=8)  # ratio = 4 / 8 at step 4
    with torch.no_grad():
        scm.weighting.linear.bias.fill_(0.7)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    torch.manual_seed(1)
    out = scm(model, None, x, step=4, total_steps=100)
    torch.manual_seed(1)
    t = torch.atan((torch.randn(3) * 1.4 - 1.0).exp().clamp(1e-3, 1e3) / SD)
    b = (-1, 1, 1, 1)
    cos, sin = t.cos().view(b), t.sin().view(b)
    z = torch.randn_like(x) * SD
    x_t = cos * x + sin * z
    dxdt = cos * z - sin * x
    state = torch.get_rng_state()
    fn = lambda xx, tt: trigflow_network(model, xx, tt, None, SD)  # noqa: E731
    with torch.no_grad():
        f_minus, d_f = torch.func.jvp(fn, (x_t, t), (cos * sin * dxdt, (cos * sin).view(-1)))
    g = -cos**2 * (SD * f_minus - dxdt) - 0.5 * (cos * sin * x_t + SD * d_f)
    g = g / (g.flatten(1).square().mean(1).sqrt().view(b) + 0.1)
    torch.set_rng_state(state)
    f_theta = fn(x_t, t)
    torch.testing.assert_close(f_theta.detach(), f_minus, rtol=1e-4, atol=1e-5)  # same masks in both passes
    w = scm.weighting(t)
    expected = w.exp() / 64 * (f_theta - f_theta.detach() - g).flatten(1).square().sum(1) - w
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    assert out.logs["warmup"] == 0.5
    # the gradient reaching the network is that of -2 e^w / D <g, F_theta>: the consistency signal, whatever F- is
    model.zero_grad()
    out.loss.sum().backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.set_rng_state(state)
    (-2 * w.detach().exp() / 64 * (g * fn(x_t, t)).flatten(1).sum(1)).sum().backward()
    for a, p in zip(ours, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_meanflow_times_weighting_and_network_inputs():
    mf = MeanFlow(ratio=0.75, p=0.75, c=1e-3)
    torch.manual_seed(0)
    r, t = mf.sample_times(100_000, torch.device("cpu"))
    assert (r <= t).all() and (r >= 0).all() and (t <= 1).all()
    assert (r < t).float().mean().item() == pytest.approx(0.75, abs=0.01)  # a fraction 1 - ratio has r = t
    a = torch.logit(torch.cat([t, r])).median().item()
    assert -1.0 < a < 0.2  # both from the logit-normal(-0.4, 1): the max pulls t up, the min pulls r down
    seen = []

    class Probe(nn.Module):
        in_channels, num_classes, num_times = 1, None, 2

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.3))

        def forward(self, z, times, class_labels=None):
            seen.append(times.detach().clone())
            return self.w * z * (1 + times[:, :1].view(-1, 1, 1, 1) + 2 * times[:, 1:].view(-1, 1, 1, 1))

    model = MeanFlowModel(Probe())
    x = torch.rand(4, 1, 2, 2) * 2 - 1
    torch.manual_seed(3)
    out = mf(model, None, x, step=0, total_steps=1)
    torch.manual_seed(3)
    r, t = mf.sample_times(4, torch.device("cpu"))
    e = torch.randn_like(x)
    b = (-1, 1, 1, 1)
    z = (1 - t).view(b) * x + t.view(b) * e
    v = e - x
    assert torch.allclose(seen[-1], torch.stack([t, t - r], 1))  # the network sees (t, t - r)
    u = 0.3 * z * (1 + t.view(b) + 2 * (t - r).view(b))
    dudt = 0.3 * (v * (1 + t.view(b) + 2 * (t - r).view(b)) + z * 3)  # d/dt along (v, 0, 1): both inputs move
    target = v - (t - r).view(b) * dudt
    squared = (u - target).flatten(1).square().sum(1)
    torch.testing.assert_close(out.loss, squared / (squared + 1e-3) ** 0.75, rtol=1e-5, atol=1e-7)
