"""Sample-quality yardsticks: the Frechet distance between feature sets, and a small MNIST classifier to supply them.

FID proper uses Inception features; for MNIST we use the penultimate layer of a digit classifier trained here, which
knows what digits look like and needs no download. Numbers are comparable only with the same classifier.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between feature sets a (N, D) and b (M, D)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric PSD.
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


class MNISTClassifier(nn.Module):
    """A small CNN (about 99% test accuracy after two epochs). features() is the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 28, 28) in [-1, 1] -> (B, 128)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.enable_grad()
def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 2, batch_size: int = 128, seed: int = 0) -> MNISTClassifier:
    """Train MNISTClassifier on images in [-1, 1] (N, 1, 28, 28) with small random shifts (CPU: about a minute)."""
    torch.manual_seed(seed)
    model = MNISTClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * (len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(len(images) // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = images[idx]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()  # shift augmentation: robustness to offsets
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def classifier_outputs(model: MNISTClassifier, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128), softmax probabilities (N, 10)) for images in [-1, 1]."""
    feats, probs = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.float())
        feats.append(f)
        probs.append(model.head(f).softmax(1))
    return torch.cat(feats), torch.cat(probs)


def class_statistics(probs: torch.Tensor) -> dict[str, float]:
    """Mean top-1 confidence, and the entropy of the predicted-class histogram divided by ln(10) (1 = all balanced)."""
    hist = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
    p = hist / hist.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum() / math.log(probs.shape[1])
    return {"confidence": float(probs.max(1).values.mean()), "class_entropy": max(float(entropy), 0.0) + 0.0,  # + 0.0: never print -0.0
            "classes_seen": int((hist > 0).sum())}
