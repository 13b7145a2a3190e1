import math

import pytest
import torch

from consistency.schedule import ct_ema_decay, ct_num_scales, ict_num_scales, karras_sigmas, lognormal_index_probs


def test_karras_endpoints_and_monotone():
    s = karras_sigmas(18)
    assert s[0].item() == 0.002 and s[-1].item() == 80.0
    assert (s[1:] > s[:-1]).all()


def test_karras_matches_formula():
    n, rho = 5, 7.0
    lo, hi = 0.002 ** (1 / rho), 80.0 ** (1 / rho)
    expected = [(lo + (i - 1) / (n - 1) * (hi - lo)) ** rho for i in range(1, n + 1)]
    assert torch.allclose(karras_sigmas(n), torch.tensor(expected, dtype=torch.float64), rtol=1e-12)


def test_karras_regression_values():
    # The 18 levels of EDM's CIFAR-10 sampler (sigma_min = 0.002), pinned to catch any change to the formula.
    s = karras_sigmas(18).flip(0)
    assert s[1].item() == pytest.approx(57.585985, abs=1e-5)
    assert s[2].item() == pytest.approx(40.785574, abs=1e-5)
    assert s[-2].item() == pytest.approx(0.0075280, abs=1e-6)


def test_karras_rejects_single_level():
    with pytest.raises(ValueError, match="n >= 2"):
        karras_sigmas(1)


def test_ct_curriculum_endpoints():
    # N(0) = ceil(sqrt(s0^2) - 1) + 1 = s0; N(K) = ceil(s1 + 1 - 1) + 1 = s1 + 1 (CM appendix C).
    assert ct_num_scales(0, 1000, s0=2, s1=150) == 2
    assert ct_num_scales(1000, 1000, s0=2, s1=150) == 151
    mid = ct_num_scales(500, 1000, s0=2, s1=150)
    assert mid == math.ceil(math.sqrt(0.5 * (151**2 - 4) + 4) - 1) + 1
    values = [ct_num_scales(k, 1000) for k in range(0, 1001, 50)]
    assert values == sorted(values)


def test_ct_ema_decay():
    assert ct_ema_decay(2, s0=2, mu0=0.9) == pytest.approx(0.9)
    assert ct_ema_decay(151, s0=2, mu0=0.9) == pytest.approx(math.exp(2 * math.log(0.9) / 151))


def test_ict_curriculum_endpoints():
    total = 800_000  # the iCT paper's CIFAR-10 length: K' = floor(800000 / 8) = 100000
    assert ict_num_scales(0, total) == 11
    assert ict_num_scales(99_999, total) == 11
    assert ict_num_scales(100_000, total) == 21
    assert ict_num_scales(total, total) == 1281
    assert ict_num_scales(7 * 100_000, total) == 1281  # the last stage reaches s1
    assert ict_num_scales(6 * 100_000, total) == 641


def test_lognormal_probs_sum_to_one_and_peak_near_p_mean():
    sigmas = karras_sigmas(1281)
    p = lognormal_index_probs(sigmas)
    assert p.shape == (1280,)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (p >= 0).all()
    # The most likely interval holds sigma ~ exp(P_mean) (the lognormal's median is exp(-1.1) ~ 0.33, mode lower).
    mid = (sigmas[:-1] * sigmas[1:]).sqrt()
    median_interval = torch.searchsorted(p.cumsum(0), torch.tensor(0.5, dtype=torch.float64))
    assert mid[median_interval].item() == pytest.approx(math.exp(-1.1), rel=0.02)


@pytest.mark.parametrize("p_mean,p_std", [(-1.1, 2.0), (0.5, 0.7)])
def test_lognormal_probs_match_the_erf_formula(p_mean, p_std):
    # iCT: p(n) ∝ erf((ln t_{n+1} - P_mean) / (sqrt(2) P_std)) - erf((ln t_n - P_mean) / (sqrt(2) P_std)).
    sigmas = karras_sigmas(12)
    cdf = [math.erf((math.log(s) - p_mean) / (math.sqrt(2) * p_std)) for s in sigmas.tolist()]
    expected = torch.tensor([b - a for a, b in zip(cdf, cdf[1:])], dtype=torch.float64)
    torch.testing.assert_close(lognormal_index_probs(sigmas, p_mean, p_std), expected / expected.sum(), rtol=1e-12, atol=0)


def test_ct_curriculum_never_drops_below_two_levels():
    # CM's code guards N(k) >= 2: with s0 = 1 the formula alone gives N(0) = 1, and karras_sigmas needs 2.
    assert ct_num_scales(0, 1000, s0=1, s1=150) == 2
    assert ct_num_scales(1000, 1000, s0=1, s1=150) == 151
    karras_sigmas(ct_num_scales(0, 1000, s0=1))


def test_curricula_with_other_constants_and_short_runs():
    # s0 = 3 tells s0^2 from 2 s0; a one-step run is already at its end; K' = 1 doubles every step.
    assert ct_num_scales(500, 1000, s0=3, s1=40) == math.ceil(math.sqrt(0.5 * (41**2 - 9) + 9) - 1) + 1
    assert ct_num_scales(1, 1, s0=2, s1=40) == 41
    assert ict_num_scales(1, 3, s0=10, s1=20) == 21  # K' = floor(3 / (log2(2) + 1)) = 1
    assert ict_num_scales(0, 3, s0=10, s1=20) == 11
    assert karras_sigmas(5, dtype=torch.float32).dtype == torch.float32


def test_curriculum_defaults_by_call():
    # CM's s0 = 2, s1 = 150, mu0 = 0.9, taken when not given; at the end N = s1 + 1 for any s0 (s0^2 cancels there)
    assert ct_num_scales(0, 100) == 2 and ct_num_scales(100, 100) == 151
    assert ct_num_scales(1000, 1000, s0=10, s1=20) == 21
    assert ct_ema_decay(2) == pytest.approx(0.9) and ct_ema_decay(151) == pytest.approx(math.exp(2 * math.log(0.9) / 151))
    assert ict_num_scales(0, 800_000) == 11 and ict_num_scales(800_000, 800_000) == 1281
