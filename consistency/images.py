"""Small image utilities: tensors in [-1, 1] to and from uint8, PNG grids, reading an image file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image

from .utils import atomic_write


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) -> uint8 [0, 255], rounded, clipped."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1]."""
    return x.float() / 127.5 - 1


def to_pil(images: torch.Tensor, nrow: int | None = None) -> Image.Image:
    """A batch of images in [-1, 1] (B, C, H, W) as one PIL image grid (nrow per row; square by default).

    In a notebook, a PIL image as a cell's last value is displayed.
    """
    from torchvision.utils import make_grid  # imported here: torchvision takes a second to import

    nrow = nrow or max(1, math.isqrt(images.shape[0] - 1) + 1)
    grid = make_grid(to_uint8(images.cpu()), nrow=nrow, padding=2, pad_value=255)  # (C, H, W) uint8
    return Image.fromarray(grid.permute(1, 2, 0).squeeze(-1).numpy())


def check_image_path(path: str | os.PathLike, flag: str = "the output") -> None:
    """Refuse, before any work, an image path whose extension PIL cannot write (.txt, none at all)."""
    suffix = Path(path).suffix.lower()
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if suffix not in writable:
        raise ValueError(f"{flag} {path}: {'no' if not suffix else repr(suffix)} is not an image extension PIL can "
                         "write: end the name with .png (or .jpg)")


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Write a batch of images in [-1, 1] as one image grid (nrow images per row; square by default), atomically: a
    full disk leaves no half-written file."""
    check_image_path(path)
    grid = to_pil(images, nrow)
    atomic_write(path, grid.save)


def load_image(path: str | os.PathLike, channels: int) -> torch.Tensor:
    """Read a PNG/JPEG as (C, H, W) in [-1, 1] with 1 (grayscale) or 3 (RGB) channels."""
    img = Image.open(path).convert("L" if channels == 1 else "RGB")
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, channels)
    return from_uint8(x.permute(2, 0, 1))
