"""The Fréchet distance behind every FID in the README, against closed forms."""

import math

import torch

from consistency.metrics import frechet_distance, gaussian_stats
from consistency.yardstick import class_statistics


def with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples whose sample mean and (unbiased) sample covariance are exactly `mean` and `cov`."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # sample covariance exactly I
    return mean + z @ torch.linalg.cholesky(cov).T


def test_frechet_distance_of_gaussians_with_commuting_covariances():
    # Same eigenvectors Q: Tr((S1 S2)^1/2) = sum sqrt(d1 d2), so FD = |m1 - m2|^2 + sum (sqrt(d1) - sqrt(d2))^2.
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    d1, d2 = torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=torch.float64), torch.tensor([3.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    m1, m2 = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    a = with_moments(500, m1, q @ torch.diag(d1) @ q.T, seed=1)
    b = with_moments(700, m2, q @ torch.diag(d2) @ q.T, seed=2)
    expected = (m1 - m2).square().sum() + (d1.sqrt() - d2.sqrt()).square().sum()
    assert math.isclose(frechet_distance(a, b), float(expected), rel_tol=1e-9)
    assert math.isclose(frechet_distance(b, a), float(expected), rel_tol=1e-9)  # symmetric


def test_frechet_distance_of_non_commuting_covariances_in_two_dimensions():
    # 2x2 closed form: Tr(sqrtm(M)) = sqrt(Tr M + 2 sqrt(det M)) for M = S1 S2 with positive eigenvalues.
    s1 = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, -0.3], [-0.3, 0.5]], dtype=torch.float64)
    a, b = with_moments(300, torch.zeros(2, dtype=torch.float64), s1, 3), with_moments(300, torch.ones(2, dtype=torch.float64), s2, 4)
    m = s1 @ s2
    cross = math.sqrt(float(m.trace()) + 2 * math.sqrt(float(torch.linalg.det(m))))
    expected = 2.0 + float(s1.trace() + s2.trace()) - 2 * cross
    assert math.isclose(frechet_distance(a, b), expected, rel_tol=1e-9)
    assert abs(frechet_distance(a, a)) < 1e-9  # a set against itself
    assert math.isclose(frechet_distance(gaussian_stats(a), b), expected, rel_tol=1e-9)  # statistics pass through


def test_class_statistics():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    stats = class_statistics(probs)
    assert math.isclose(stats["confidence"], (0.9 + 0.8 + 0.6 + 0.7) / 4, rel_tol=1e-6)
    assert stats["class_entropy"] == 1.0 and stats["classes_seen"] == 2  # two classes, two samples each
    one = class_statistics(torch.tensor([[0.9, 0.1], [0.8, 0.2]]))
    assert one["class_entropy"] == 0.0 and one["classes_seen"] == 1
