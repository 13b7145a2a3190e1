"""The Fréchet distance between two feature sets (or their Gaussian statistics), the measure behind every FID here, and
precision and recall (Kynkäänniemi et al. 2019), which tell apart what FID mixes: fidelity and coverage.

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


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Each point's distance to its k-th nearest neighbour in the same set (itself excluded): the radius of its ball
    in the k-NN estimate of the set's manifold."""
    radii = []
    for part in features.split(chunk):
        d = torch.cdist(part, features)  # (chunk, N); each point's own distance, 0, is the smallest
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> float:
    """The share of `points` inside the union of the balls (centres, radii)."""
    inside = [(torch.cdist(part, centres) <= radii[None]).any(1) for part in points.split(chunk)]
    return float(torch.cat(inside).float().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: precision = the share of generated features inside the real manifold (balls around
    each real feature with its k-th neighbour's distance), recall = the share of real features inside the generated
    one; k = 3 as in the paper."""
    n = min(len(real), len(fake))  # equal sizes, as the paper compares them (the k-NN radii depend on the size)
    real, fake = real[:n].float(), fake[:n].float()
    return coverage(fake, real, knn_radii(real, k)), coverage(real, fake, knn_radii(fake, k))
