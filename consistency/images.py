"""Small image utilities: tensors in [-1, 1] to uint8 / PNG grids, and a loss-curve PNG drawn with Pillow."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) -> uint8 [0, 255], rounded, clipped."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1]."""
    return x.float() / 127.5 - 1


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Write a batch of images in [-1, 1] as one PNG grid (nrow images per row; square by default)."""
    nrow = nrow or max(1, math.isqrt(images.shape[0] - 1) + 1)
    grid = make_grid(to_uint8(images.cpu()), nrow=nrow, padding=2, pad_value=255)  # (C, H, W) uint8
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).squeeze(-1).numpy()).save(path)


def load_image(path: str | os.PathLike, channels: int) -> torch.Tensor:
    """Read a PNG/JPEG as (C, H, W) in [-1, 1] with 1 (grayscale) or 3 (RGB) channels."""
    img = Image.open(path).convert("L" if channels == 1 else "RGB")
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, channels)
    return from_uint8(x.permute(2, 0, 1))


def plot_curve(steps: list[int], values: list[float], path: str | os.PathLike, title: str = "loss") -> None:
    """A line plot (log-scale y when the values are positive) as a PNG, without matplotlib."""
    width, height, margin = 640, 400, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([margin, margin // 2, width - margin // 2, height - margin], outline="black")
    if len(values) >= 2:
        log = all(v > 0 for v in values)
        ys = [math.log10(v) for v in values] if log else list(values)
        x0, x1, y0, y1 = min(steps), max(steps), min(ys), max(ys)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)
        px = lambda s: margin + (s - x0) / (x1 - x0) * (width - 1.5 * margin)  # noqa: E731
        py = lambda v: height - margin - (v - y0) / (y1 - y0) * (height - 1.5 * margin)  # noqa: E731
        draw.line([(px(s), py(v)) for s, v in zip(steps, ys)], fill=(31, 119, 180), width=2)
        fmt = (lambda v: f"{10 ** v:.3g}") if log else (lambda v: f"{v:.3g}")
        draw.text((4, margin // 2), fmt(y1), fill="black")
        draw.text((4, height - margin - 10), fmt(y0), fill="black")
        draw.text((margin, height - margin + 8), str(x0), fill="black")
        draw.text((width - margin, height - margin + 8), str(max(steps)), fill="black")
    draw.text((width // 2 - 40, 5), f"{title} vs step", fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
