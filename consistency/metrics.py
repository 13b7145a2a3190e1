"""The Fréchet distance between two feature sets (or their Gaussian statistics): the measure behind every FID here.

The yardsticks that supply the features are in consistency.yardstick (a small classifier per data set, and
Inception-v3 as an optional extra).
"""

from __future__ import annotations

import torch

Stats = tuple[torch.Tensor, torch.Tensor]  # (mean (D,), covariance (D, D))


def gaussian_stats(features: torch.Tensor | Stats) -> Stats:
    """(mean, covariance) of features (N, D) in float64; statistics pass through."""
    if isinstance(features, tuple):
        return features[0].double(), features[1].double()
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def frechet_distance(a: torch.Tensor | Stats, b: torch.Tensor | Stats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between feature sets (N, D), (M, D) or their statistics."""
    mu_a, cov_a = gaussian_stats(a)
    mu_b, cov_b = gaussian_stats(b)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric PSD.
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)
