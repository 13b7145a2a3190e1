"""Sampling: every sampler shares one signature (k-diffusion's), and a registry names them for methods and CLIs.

    sampler(model, x, sigmas, *, generator=None, class_labels=None, callback=None) -> images
        x        the initial noisy input, sigmas[0] * z (B, C, H, W)
        sigmas   the decreasing noise levels the sampler visits
        callback called as callback(i, x) after step i

A method declares its sampler by name (`Method.sampler`); checkpoints record it, so the trainer, the sample command
and the benchmarks draw from any model the same way: `generate(model, n, sampler=..., steps=...)`. This module holds
the two generic samplers (consistency: CM Algorithm 1; edm: EDM's Heun); a method whose model is sampled at levels of
its own registers them next to its objective (register_sampler in methods/ect.py, scm.py, meanflow.py).
Samplers take a `generator` (noise is drawn on the generator's device, so a seed gives the same images on any device),
do no I/O and pick no device of their own: they follow the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .model import guided, noise_range
from .schedule import RHO, SIGMA_DATA, karras_sigmas
from .solvers import edm_heun
from .utils import module_device, randn


@torch.no_grad()
def consistency_sampler(
    model: nn.Module,
    x: torch.Tensor,
    sigmas: list[float],
    *,
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling (CM Algorithm 1) from x = tau_1 z over tau_1 > tau_2 > ... >= sigma_min.

    x = f(x, tau_1); then for each later tau: x = f(x + sqrt(tau^2 - eps^2) z', tau), eps = the model's sigma_min.
    """
    sigma_min, _ = noise_range(model)
    check_sigmas(sigmas, model)
    x = model(x, sigmas[0], class_labels)
    if callback is not None:
        callback(0, x)
    for i, tau in enumerate(sigmas[1:], start=1):
        x = x + (tau**2 - sigma_min**2) ** 0.5 * randn(tuple(x.shape), generator, x.device)
        x = model(x, tau, class_labels)
        if callback is not None:
            callback(i, x)
    return x


def check_sigmas(sigmas: list[float], model: nn.Module | None = None, sampler: str = "consistency") -> None:
    """Refuse noise levels a sampler cannot use: not strictly decreasing, or outside the model's range
    [sigma_min, sigma_max] (or the sampler's own range of times; EDM's sampler ends at 0)."""
    spec = get_sampler(sampler)
    sigma_min, sigma_max = spec.time_range or noise_range(model)
    if not sigmas or not all(math.isfinite(v) for v in sigmas) or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"sigmas must be finite and strictly decreasing, got {sigmas}")
    inner = sigmas[:-1] if spec.ends_at_zero and sigmas[-1] == 0 else sigmas
    if min(inner) < sigma_min * (1 - 1e-6) or max(inner) > sigma_max * (1 + 1e-6):
        raise ValueError(f"sigmas must lie in the model's range [sigma_min={sigma_min}, sigma_max={sigma_max}]"
                         f"{' (and may end at 0)' if spec.ends_at_zero else ''}, got {sigmas}")


def consistency_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = RHO, **_) -> list[float]:
    """tau_1 = T > tau_2 > ... > tau_K for K-step sampling: the K+1 Karras levels from T down, without sigma_min.

    For K = 1 this is [T] (one-step sampling); K = 2 gives [80, 2.51] with the default constants.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return karras_sigmas(steps + 1, sigma_min, sigma_max, rho).flip(0)[:-1].tolist()


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = RHO, **_) -> list[float]:
    """EDM's `steps` Karras levels from T down to sigma_min, then 0 (18 levels = 35 evaluations of D)."""
    if steps < 2:
        raise ValueError(f"EDM's sampler needs steps >= 2 Karras levels, got {steps}")
    return karras_sigmas(steps, sigma_min, sigma_max, rho).flip(0).tolist() + [0.0]


@dataclass(frozen=True)
class Sampler:
    """A sampler with the noise levels it uses for a number of steps, and what a step costs."""

    fn: Callable[..., torch.Tensor]
    sigmas: Callable[..., list[float]]  # sigmas(steps, sigma_min, sigma_max, sigma_data=) -> decreasing levels/times
    nfe: Callable[[int], int]  # network evaluations for `steps`
    default_steps: tuple[int, ...]  # the steps the trainer's sample grids show
    edits: bool = True  # its model maps a noisy image at a known level to a clean one (CM Algorithm 4 applies)
    time_range: tuple[float, float] | None = None  # its levels' range if not the model's noise range (flow times)
    ends_at_zero: bool = False  # its last level may be 0 (EDM's last Euler step)


# The two generic samplers; a method with levels of its own registers them in its file (methods/ect.py, scm.py, ...).
SAMPLERS: dict[str, Sampler] = {
    "consistency": Sampler(consistency_sampler, consistency_sigmas, lambda k: k, (1, 2)),
    "edm": Sampler(edm_heun, edm_sigmas, lambda k: 2 * k - 1, (18,), edits=False, ends_at_zero=True),
}


def register_sampler(name: str, sampler: Sampler) -> Sampler:
    """Make `sampler` known by `name` (the name a method's `sampler` gives and checkpoints record)."""
    SAMPLERS[name] = sampler
    return sampler


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def default_sigmas(steps: int, model: nn.Module | None = None, sampler: str = "consistency") -> list[float]:
    """The noise levels `sampler` visits in `steps` steps, for the model's noise range."""
    sigma_min, sigma_max = noise_range(model)
    return get_sampler(sampler).sigmas(steps, sigma_min, sigma_max,
                                       sigma_data=float(getattr(model, "sigma_data", SIGMA_DATA)))


@torch.no_grad()
def sample(
    model: nn.Module,
    shape: tuple[int, ...],
    sigmas: list[float] | None = None,
    *,
    steps: int = 1,
    sampler: str = "consistency",
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    guidance: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Images (B, C, H, W) of the given shape: noise sigmas[0] z, then `sampler` over `sigmas`.

    `sigmas` defaults to the sampler's levels for `steps` (for a consistency model: [T] = one network evaluation).
    `guidance` w guides a class-conditional model (model.Guided; None or 1: unguided). For a model trained without a
    teacher (iCT, ECT, sCT) guiding every step's consistency output this way is a heuristic, not a guided ODE.
    """
    model = guided(model, guidance)
    sigmas = list(sigmas) if sigmas is not None else default_sigmas(steps, model, sampler)
    device = module_device(model)
    x = sigmas[0] * randn(tuple(shape), generator, device)
    if class_labels is not None:
        class_labels = class_labels.to(device)
    return get_sampler(sampler).fn(model, x, sigmas, generator=generator, class_labels=class_labels, callback=callback)


@torch.no_grad()
def generate(
    model: nn.Module,
    n: int,
    image_shape: tuple[int, int, int] | None = None,
    *,
    steps: int = 1,
    sigmas: list[float] | None = None,
    sampler: str = "consistency",
    seed: int = 0,
    batch_size: int = 500,
    class_labels: torch.Tensor | None = None,
    progress: bool = False,
    guidance: float | None = None,
) -> torch.Tensor:
    """n images in [-1, 1] (n, C, H, W) on the CPU, drawn in batches from one seeded generator.

    The image shape defaults to the model's `image_shape`. A class-conditional model without `class_labels` is
    asked for the classes in turn (0, 1, ..., K-1, 0, ...); `guidance` w guides it (see sample()). The model is put in
    eval mode for the draw and restored.
    """
    shape = tuple(image_shape) if image_shape is not None else getattr(model, "image_shape", None)
    if not shape:
        raise ValueError("the model declares no image_shape: pass image_shape=(C, H, W)")
    num_classes = getattr(model, "num_classes", None)
    if class_labels is None and num_classes:
        class_labels = torch.arange(n) % num_classes
    if class_labels is not None and len(class_labels) != n:
        raise ValueError(f"class_labels has {len(class_labels)} entries for {n} images")
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in tqdm(range(0, n, batch_size), disable=not progress, desc="sample"):
            b = min(batch_size, n - start)
            labels = class_labels[start : start + b] if class_labels is not None else None
            x = sample(model, (b, *shape), sigmas, steps=steps, sampler=sampler, generator=generator, class_labels=labels,
                       guidance=guidance)
            out.append(x.clamp(-1, 1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
