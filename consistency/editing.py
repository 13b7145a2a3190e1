"""Zero-shot editing with a consistency model (CM Algorithm 4 and section 6): no extra training.

The core, `edit`, takes an invertible linear map A (as a LinearOp: forward and inverse), a mask Omega in A's
coordinates (1 = generate, 0 = keep) and decreasing times t_1 > ... > t_N. Inpainting, colorization and
super-resolution are that core with different A; stroke-guided generation, interpolation and denoising are short
variants of sampling. Like the samplers, every editor is a no-grad function that takes a `generator` and does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange
from torch import nn

from .model import noise_range
from .sampling import consistency_sampler, consistency_sigmas, default_sigmas
from .utils import module_device, randn

Tensor = torch.Tensor


@dataclass(frozen=True)
class LinearOp:
    """An invertible linear map on images (B, C, H, W) and its inverse."""

    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]


IDENTITY = LinearOp(lambda x: x, lambda x: x)


def orthogonal_basis(first_axis: Tensor) -> Tensor:
    """An orthogonal matrix Q (D, D) whose first column is first_axis / ||first_axis|| (QR of [v | I])."""
    v = first_axis.double().flatten()
    d = v.numel()
    q, _ = torch.linalg.qr(torch.cat([v[:, None], torch.eye(d, dtype=torch.float64)[:, 1:]], dim=1))
    return q * torch.sign(q[0:1, 0:1] * v[0])  # sign fixed so the first column points along first_axis


# ITU-R BT.601 luma weights: the colour axis that colorization keeps (CM section 6).
LUMA = torch.tensor([0.299, 0.587, 0.114])


def color_op() -> LinearOp:
    """A -> coordinates in an orthonormal colour basis whose first axis is luminance (CM's colorization)."""
    q = orthogonal_basis(LUMA).float()  # (3, 3): columns are the new axes

    def forward(x: Tensor) -> Tensor:
        return torch.einsum("ji,bjhw->bihw", q.to(x), x)  # Q^T x per pixel

    def inverse(c: Tensor) -> Tensor:
        return torch.einsum("ij,bjhw->bihw", q.to(c), c)  # Q c per pixel

    return LinearOp(forward, inverse)


def patch_op(factor: int) -> LinearOp:
    """A -> per factor x factor patch, coordinates in an orthonormal basis whose first axis is the patch mean."""
    q = orthogonal_basis(torch.ones(factor * factor)).float()  # (p^2, p^2)

    def forward(x: Tensor) -> Tensor:
        patches = rearrange(x, "b c (h p1) (w p2) -> b c h w (p1 p2)", p1=factor, p2=factor)
        return rearrange(patches @ q.to(x), "b c h w (p1 p2) -> b c (h p1) (w p2)", p1=factor)

    def inverse(c: Tensor) -> Tensor:
        coeffs = rearrange(c, "b c (h p1) (w p2) -> b c h w (p1 p2)", p1=factor, p2=factor)
        return rearrange(coeffs @ q.to(c).T, "b c h w (p1 p2) -> b c (h p1) (w p2)", p1=factor)

    return LinearOp(forward, inverse)


def _check_images(model: nn.Module, images: Tensor) -> None:
    in_ch = getattr(model, "in_channels", images.shape[1])
    if images.ndim != 4 or images.shape[1] != in_ch:
        raise ValueError(f"expected images (B, {in_ch}, H, W) for this model, got {tuple(images.shape)}")


@torch.no_grad()
def edit(
    model: nn.Module,
    images: Tensor,
    mask: Tensor,
    sigmas: list[float],
    op: LinearOp = IDENTITY,
    *,
    generator: torch.Generator | None = None,
    class_labels: Tensor | None = None,
) -> Tensor:
    """CM Algorithm 4. images: the reference y (B, C, H, W); mask: Omega in A-space, 1 = generate (broadcastable).

    y = A^-1[(A y)(1 - Omega)]; then per time t_n: x = f(x + sqrt(t_n^2 - eps^2) z, t_n) (x = y at n = 1, noise t_1 z),
    followed by x = A^-1[(A y)(1 - Omega) + (A x) Omega]. eps is the model's sigma_min.
    """
    _check_images(model, images)
    sigma_min, _ = noise_range(model)
    if any(a <= b for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] < sigma_min:
        raise ValueError(f"sigmas must decrease and stay >= sigma_min, got {sigmas}")
    device = module_device(model)
    images, mask = images.to(device), mask.to(device, images.dtype)
    known = op.forward(images) * (1 - mask)
    x = op.inverse(known)
    for i, t in enumerate(sigmas):
        noise_std = t if i == 0 else math.sqrt(t**2 - sigma_min**2)
        x = model(x + noise_std * randn(tuple(x.shape), generator, device), t, class_labels)
        x = op.inverse(known + op.forward(x) * mask)
    return x


def inpaint(model: nn.Module, images: Tensor, mask: Tensor, sigmas: list[float] | None = None, **kw) -> Tensor:
    """Fill the pixels where mask == 1 (B or 1, 1 or C, H, W); every pixel where mask == 0 is kept exactly."""
    if mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"the mask is {tuple(mask.shape[-2:])} but the images are {tuple(images.shape[-2:])}")
    mask = (mask > 0.5).to(images.dtype)
    out = edit(model, images, mask, sigmas or default_sigmas(4, model), IDENTITY, **kw)
    # A = I: the known pixels are copied back bit for bit (the arithmetic above could round them).
    return torch.where(mask.bool().to(out.device), out, images.to(out.device))


def colorize(model: nn.Module, images: Tensor, sigmas: list[float] | None = None, **kw) -> Tensor:
    """Colour an RGB model's input keeping its luminance: only the two chroma axes are generated."""
    if images.shape[1] != 3:
        raise ValueError(f"colorization needs an RGB model and RGB (or grey-as-RGB) images; got {images.shape[1]} channel(s)")
    mask = torch.tensor([0.0, 1.0, 1.0]).view(1, 3, 1, 1)
    return edit(model, images, mask, sigmas or default_sigmas(4, model), color_op(), **kw)


def super_resolve(model: nn.Module, low_res: Tensor, factor: int, sigmas: list[float] | None = None, **kw) -> Tensor:
    """Upscale low_res (B, C, H/f, W/f) by the integer factor f: each f x f patch keeps its low-res value as its mean."""
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    images = low_res.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    mask = torch.ones(1, 1, *images.shape[-2:])
    mask[..., ::factor, ::factor] = 0  # in patch_op's layout the first coefficient of each patch sits at its corner
    return edit(model, images, mask, sigmas or default_sigmas(4, model), patch_op(factor), **kw)


def stroke_edit(model: nn.Module, strokes: Tensor, t_start: float = 5.0, steps: int = 3, *, generator=None, class_labels=None) -> Tensor:
    """SDEdit-like: noise a rough stroke painting to t_start, then denoise with `steps` Karras levels from t_start."""
    _check_images(model, strokes)
    sigma_min, sigma_max = noise_range(model)
    if not sigma_min < t_start <= sigma_max:
        raise ValueError(f"t_start must lie in ({sigma_min}, {sigma_max}], the model's noise range; got {t_start}")
    device = module_device(model)
    sigmas = consistency_sigmas(steps, sigma_min, t_start)  # Karras levels from t_start down
    x = strokes.to(device) + t_start * randn(tuple(strokes.shape), generator, device)
    return consistency_sampler(model, x, sigmas, generator=generator, class_labels=class_labels)


def slerp(z1: Tensor, z2: Tensor, alpha: float) -> Tensor:
    """Spherical interpolation per sample between latents z1 and z2 (B, ...); alpha 0 -> z1, alpha 1 -> z2."""
    a, b = z1.flatten(1).double(), z2.flatten(1).double()  # float64: the angle of near-(anti)parallel latents
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1)).view(-1, *[1] * (z1.ndim - 1))
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-6  # (anti)parallel latents: the great circle is undefined, fall back to a straight line
    w1 = torch.where(parallel, torch.full_like(theta, 1 - alpha), torch.sin((1 - alpha) * theta) / sin)
    w2 = torch.where(parallel, torch.full_like(theta, alpha), torch.sin(alpha * theta) / sin)
    return w1.to(z1.dtype) * z1 + w2.to(z2.dtype) * z2


@torch.no_grad()
def interpolate(model: nn.Module, z1: Tensor, z2: Tensor, alphas: list[float], *, class_labels=None) -> Tensor:
    """One-step samples along the slerp between latents z1, z2 (B, C, H, W): returns (len(alphas), B, C, H, W)."""
    _, t = noise_range(model)
    return torch.stack([model(t * slerp(z1, z2, a).to(module_device(model)), t, class_labels) for a in alphas])


@torch.no_grad()
def denoise(model: nn.Module, noisy: Tensor, sigma: float, *, class_labels=None) -> Tensor:
    """Remove Gaussian noise of known standard deviation sigma (in [-1, 1] units) in one evaluation: f(x, sigma)."""
    _check_images(model, noisy)
    sigma_min, sigma_max = noise_range(model)
    if not sigma_min <= sigma <= sigma_max:
        raise ValueError(f"sigma must lie in [{sigma_min}, {sigma_max}], the model's noise range; got {sigma}")
    return model(noisy.to(module_device(model)), sigma, class_labels)
