"""Shared fixtures: tiny networks, synthetic data, a fake MNIST folder in the idx format."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from consistency import ConsistencyModel, Method, MethodOutput, UNet, make_loader

REAL_MNIST = Path(os.environ.get("MNIST_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


def tiny_unet(channels: int = 1, num_classes: int | None = None, dropout: float = 0.0, **options) -> UNet:
    return UNet(channels, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, dropout=dropout,
                num_classes=num_classes, **options)


def tiny_model(channels: int = 1, num_classes: int | None = None, dropout: float = 0.0, seed: int = 0) -> ConsistencyModel:
    torch.manual_seed(seed)
    return ConsistencyModel(tiny_unet(channels, num_classes, dropout))


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (the UNet zero-initialises its output layers, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def synthetic_images(n: int = 32, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


class ReconstructionLoss(Method):
    """A plain regression objective in the method interface, with no randomness: f(x / 2, 1) should give x.

    It tests the trainer's machinery (optimizer, clipping, EMAs, DDP) apart from the consistency objectives.
    """

    name = "reconstruction"

    def __call__(self, model, target, x, class_labels=None, *, step, total_steps):
        return MethodOutput((model(x * 0.5, torch.ones(len(x)), class_labels) - x).square().flatten(1).mean(1))


@pytest.fixture
def synthetic_loader():
    x = synthetic_images(32)
    y = torch.arange(32) % 10
    return make_loader(TensorDataset(x, y), batch_size=8, seed=0)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    """A folder with the four MNIST idx files (gzipped), 64 train and 16 test images of simple bars."""
    root = tmp_path / "mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 16)):
        labels = rng.integers(0, 10, n)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, lab in enumerate(labels):
            images[i, 4 + 2 * lab : 6 + 2 * lab, 4:24] = 255  # a bar whose height encodes the label
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root
