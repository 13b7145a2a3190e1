"""Preconditioning wrappers, and the interface every model the library trains or samples declares.

The model interface (any nn.Module may implement it; the wrappers here do):
    model(x, sigma, class_labels=None) -> x0     x = x0 + sigma z in the EDM / VE convention, data in [-1, 1],
                                                 sigma a float or a (B,) tensor; returns the clean-image estimate
    model.in_channels: int                       image channels C
    model.num_classes: int | None                classes it is conditioned on (None: unconditional)
    model.sigma_min, model.sigma_max, model.sigma_data
                                                 its noise range (defaults 0.002, 80, 0.5 when absent)
    model.image_shape: (C, H, W) | None          the image size it was trained on; the trainer sets it

ConsistencyModel: f(x, t) = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t)) with f(x, eps) = x exactly (CM eq. 7
and appendix C). EDMDenoiser: D(x, sigma) with EDM's scalings (EDM table 1), the diffusion teacher.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .schedule import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN


def as_levels(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """A noise level (or time) as a (B,) tensor on x's device, in fp32 at least and in float64 with float64 data."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    if torch.is_tensor(sigma):
        dtype = torch.promote_types(dtype, sigma.dtype)
    sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


class Preconditioned(nn.Module):
    """model(x, sigma, class_labels) = c_skip x + c_out F(c_in x, c_noise, class_labels) around a network F."""

    def __init__(self, net: nn.Module, *, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, image_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    @property
    def in_channels(self) -> int:
        return self.net.in_channels

    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

    @property
    def null_class(self) -> int | None:
        """The label that means "no class" (trained by label dropout; what classifier-free guidance needs), or None."""
        return getattr(self.net, "null_class", None)

    @property
    def takes_guidance(self) -> bool:
        """Whether the network takes a guidance scale w as an input (a student distilled from a guided teacher)."""
        return getattr(self.net, "guidance_embed", None) is not None

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    # The ecosystem's folder format (model.safetensors, config.json, README.md): consistency/pretrained.py.
    def save_pretrained(self, folder, **info):
        """Write this model as a folder that cm.load_model (and the Hugging Face Hub) reads."""
        from .pretrained import save_pretrained

        return save_pretrained(self, folder, **info)

    @classmethod
    def from_pretrained(cls, source, *, device="cpu"):
        """The model of a folder, a trainer checkpoint or a hub id "owner/name", in eval mode."""
        from .pretrained import from_pretrained

        return from_pretrained(cls, source, device)

    def push_to_hub(self, repo_id: str, *, private: bool = False, **info) -> str:
        """save_pretrained into a temporary folder, then upload it (the [hub] extra; a token and a connection)."""
        import tempfile

        from .pretrained import push_to_hub, save_pretrained

        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(self, tmp, **info)
            return push_to_hub(tmp, repo_id, private=private)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                guidance: torch.Tensor | float | None = None) -> torch.Tensor:
        sigma = as_levels(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        b = (-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
        # The network may run in bf16 under autocast; the skip path and the result stay in x's precision.
        extra = {"guidance": as_levels(guidance, x)} if guidance is not None else {}
        out = self.net(c_in.view(b).to(x.dtype) * x, c_noise, class_labels, **extra)
        return c_skip.view(b) * x + c_out.view(b) * out.to(x.dtype)


class ConsistencyModel(Preconditioned):
    """f_theta(x, t), parameterised so that f(x, sigma_min) = x exactly (CM appendix C)."""

    def scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd, eps = self.sigma_data, self.sigma_min
        c_skip = sd**2 / ((t - eps) ** 2 + sd**2)
        c_out = (t - eps) * sd / (t**2 + sd**2).sqrt()
        c_in = 1 / (t**2 + sd**2).sqrt()
        # EDM's ln(t)/4; the UNet's embedding scales it by 1000 (= the CM code's 250 ln t). Floored so that a model with
        # sigma_min = 0 (ECT, sCM) evaluates to x exactly at t = 0 instead of 0 * F(-inf) = NaN.
        c_noise = t.clamp(min=1e-20).log() / 4
        return c_skip, c_out, c_in, c_noise


class EDMDenoiser(Preconditioned):
    """D_phi(x, sigma), the EDM-preconditioned denoiser (EDM table 1); the diffusion teacher for distillation."""

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class MeanFlowModel(Preconditioned):
    """MeanFlow's average velocity u(z, r, t) (Geng et al. 2025) around a network with two time inputs (t, t - r).

    Flow-matching convention: z_t = (1 - t) x + t e, t = 0 data, t = 1 noise. As every model here it also answers
    model(x, sigma) -> x0, by one jump to t = 0 from the matching time: x = x0 + sigma e is z_t (1 + sigma) with
    t = sigma / (1 + sigma), so x0 = z_t - t u(z_t, 0, t). That makes consistency sampling and editing work on it.
    """

    def __init__(self, net: nn.Module, *, sigma_data: float = SIGMA_DATA, sigma_min: float = 0.0,
                 sigma_max: float = SIGMA_MAX, image_shape: tuple[int, int, int] | None = None):
        if getattr(net, "num_times", 2) != 2:
            raise ValueError("MeanFlow needs a network with two time inputs: build the UNet with num_times=2")
        super().__init__(net, sigma_data=sigma_data, sigma_min=sigma_min, sigma_max=sigma_max, image_shape=image_shape)

    def velocity(self, z: torch.Tensor, r: torch.Tensor | float, t: torch.Tensor | float,
                 class_labels: torch.Tensor | None = None, guidance: torch.Tensor | float | None = None) -> torch.Tensor:
        """u(z, r, t), the average velocity from time r to t; u(z, t, t) is the instantaneous velocity."""
        t, r = as_levels(t, z), as_levels(r, z)
        extra = {"guidance": as_levels(guidance, z)} if guidance is not None else {}
        return self.net(z, torch.stack([t, t - r], dim=1), class_labels, **extra).to(z.dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float | None, class_labels: torch.Tensor | None = None,
                guidance: torch.Tensor | float | None = None, *, r: torch.Tensor | None = None,
                t: torch.Tensor | None = None) -> torch.Tensor:
        """x0 from x = x0 + sigma e; or, given r and t (sigma None), the average velocity u(x, r, t) (the training
        call, which goes through forward so that DistributedDataParallel sees it)."""
        extra = {"guidance": guidance} if guidance is not None else {}
        if t is not None:
            return self.velocity(x, r, t, class_labels, **extra)
        sigma = as_levels(sigma, x)
        t = sigma / (1 + sigma)
        z = x / (1 + sigma).view(-1, 1, 1, 1).to(x.dtype)
        return z - t.view(-1, 1, 1, 1).to(x.dtype) * self.velocity(z, 0.0, t, class_labels, **extra)


class Guided(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) of a class-conditional model with a null class:

        D_w(x, sigma, c) = D(x, sigma, null) + w (D(x, sigma, c) - D(x, sigma, null))

    w = 1 is the conditional model itself (called as it is, bit for bit), w = 0 the unconditional one (the null class
    alone); otherwise both passes run as one batch. w is a float or a (B,) tensor (a scale per sample). A model that
    takes w as an input (a student distilled from a guided teacher) is given it instead, in one pass. It answers the
    model interface (and a MeanFlow model's velocity()), so every sampler and editor guides through it.
    """

    def __init__(self, model: nn.Module, w: float | torch.Tensor):
        super().__init__()
        self.model, self.w = model, w
        if not getattr(model, "num_classes", None):
            raise ValueError("guidance needs a class-conditional model; this one is unconditional")
        unguided = not torch.is_tensor(w) and w == 1
        if not self.takes_guidance and self.null_class is None and not unguided:
            raise ValueError("this model cannot be guided: it was trained without label dropout, so it has no null "
                             "class to guide against (models before 0.3, or --label-dropout 0). Sample it unguided "
                             "(w = 1), or train one with --label-dropout 0.1")

    in_channels = property(lambda self: self.model.in_channels)
    num_classes = property(lambda self: self.model.num_classes)
    null_class = property(lambda self: getattr(self.model, "null_class", None))
    takes_guidance = property(lambda self: getattr(self.model, "takes_guidance", False))
    sigma_min = property(lambda self: self.model.sigma_min)
    sigma_max = property(lambda self: self.model.sigma_max)
    sigma_data = property(lambda self: self.model.sigma_data)
    image_shape = property(lambda self: getattr(self.model, "image_shape", None))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self._guide(self.model, x, (sigma,), class_labels)

    def velocity(self, z: torch.Tensor, r: torch.Tensor | float, t: torch.Tensor | float,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._guide(self.model.velocity, z, (r, t), class_labels)

    def _guide(self, fn, x: torch.Tensor, levels: tuple, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("guidance needs the class labels to guide towards")
        if self.takes_guidance:
            return fn(x, *levels, labels, guidance=self.w)
        if not torch.is_tensor(self.w) and self.w == 1:
            return fn(x, *levels, labels)
        null = torch.full_like(labels, self.null_class)
        if not torch.is_tensor(self.w) and self.w == 0:
            return fn(x, *levels, null)
        two = lambda v: torch.cat([v, v]) if torch.is_tensor(v) and v.ndim else v  # noqa: E731
        cond, uncond = fn(torch.cat([x, x]), *map(two, levels), torch.cat([labels, null])).chunk(2)
        w = self.w.view(-1, *[1] * (x.ndim - 1)).to(cond.dtype) if torch.is_tensor(self.w) else self.w
        return uncond + w * (cond - uncond)


MAX_GUIDANCE = 50.0  # the largest guidance scale accepted (the papers use 1 to 8; beyond 50 images saturate)


def check_scale(w: Any) -> None:
    """A guidance scale is a finite number in [0, MAX_GUIDANCE]."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 <= w <= MAX_GUIDANCE:
        raise ValueError(f"the guidance scale must be a number from 0 to {MAX_GUIDANCE:g} (1 = unguided), got {w}")


def check_guidance(model: nn.Module, w: float | None, method: dict | None = None) -> None:
    """Refuse, before any sampling, a guidance scale w this model cannot take: not finite, outside [0, MAX_GUIDANCE],
    a model without a null class, a student that distilled one fixed guided teacher (its samples are guided already),
    or a w outside the range a w-taking student learned. `method` is the checkpoint's method config."""
    if w is None:
        return
    check_scale(w)
    low, high = (method or {}).get("guidance_min"), (method or {}).get("guidance_max")
    if low is not None and not getattr(model, "takes_guidance", False) and w != 1:
        raise ValueError(f"this model distilled its teacher guided at w = {low:g}: its samples are guided already "
                         "(sample it without --guidance)")
    if low is not None and getattr(model, "takes_guidance", False) and not low <= w <= high:
        raise ValueError(f"this student learned guidance scales from {low:g} to {high:g} (its w-embedding was "
                         f"trained there): choose w in that range, got {w:g}")
    guided(model, w)  # a model without a null class refuses here, with the reason


def guided(model: nn.Module, w: float | torch.Tensor | None) -> nn.Module:
    """`model` guided with scale w; None (and w = 1 for a model without a w input) leaves it as it is, except that a
    model taking w as an input gets w = 1 (unguided)."""
    if w is not None and not torch.is_tensor(w):
        check_scale(w)
    if isinstance(model, Guided):  # guided already: None keeps its scale, a new w replaces it
        if w is None:
            return model
        model = model.model
    takes = getattr(model, "takes_guidance", False)
    if w is None and not takes or (not takes and not torch.is_tensor(w) and w == 1):
        return model
    return Guided(model, 1.0 if w is None else w)


# ---------------------------------------------------------------------------------------------------- TrigFlow
# sCM (Lu & Song 2025) writes models in TrigFlow: x_t = cos(t) x0 + sin(t) z, z ~ N(0, sigma_d^2), and the consistency
# function f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, t). A model of the library, f(x, sigma) for
# x = x0 + sigma e, is the same function at sigma = sigma_d tan(t) with x = x_t / cos(t): the helpers below convert.


def trigflow_time(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """t = arctan(sigma / sigma_d): the TrigFlow time of a noise level (sigma = 80 -> t = 1.5645 for sigma_d = 0.5)."""
    return torch.atan(sigma / sigma_data)


def trigflow_network(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                     sigma_data: float = SIGMA_DATA, **inputs) -> torch.Tensor:
    """F(x_t / sigma_d, t) of the TrigFlow form of `model`: (cos t x_t - f(x_t / cos t, sigma_d tan t)) / (sigma_d sin t).

    For the library's EDM-preconditioned consistency models (sigma_min = 0) this is minus their network's output.
    sigma_data is passed, not read from the model: a DDP wrapper does not forward attributes.
    """
    sd = sigma_data
    b = (-1, *[1] * (x_t.ndim - 1))
    cos, sin = t.cos().view(b), t.sin().view(b)
    x0 = model(x_t / cos, sd * t.tan(), class_labels, **inputs)
    return (cos * x_t - x0) / (sd * sin)


def trigflow_velocity(denoiser: nn.Module, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                      sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """dx_t/dt of the PF-ODE in TrigFlow from an EDM denoiser D(x, sigma): (cos t x_t - D(x_t / cos t, sd tan t)) / sin t.

    This is how an EDM-preconditioned teacher is read in TrigFlow: the noise levels match at sigma = sd tan t.
    """
    b = (-1, *[1] * (x_t.ndim - 1))
    cos, sin = t.cos().view(b), t.sin().view(b)
    return (cos * x_t - denoiser(x_t / cos, sigma_data * t.tan(), class_labels)) / sin


def declared_interface(model: nn.Module, image_shape: tuple[int, int, int] | None = None
                       ) -> tuple[int, int | None, tuple[int, int, int] | None]:
    """(in_channels, num_classes, image_shape) a model declares (image_shape given here wins); no in_channels, and no
    image shape to read them from, is an error that says what to add."""
    shape = tuple(image_shape) if image_shape else getattr(model, "image_shape", None)
    in_channels = getattr(model, "in_channels", None) or (shape[0] if shape else None)
    if in_channels is None:
        raise ValueError("the model declares no in_channels: give it that attribute (and num_classes for a "
                         "class-conditional model), or pass image_shape=(C, H, W)")
    return in_channels, getattr(model, "num_classes", None), shape


def noise_range(model: nn.Module) -> tuple[float, float]:
    """(sigma_min, sigma_max) a model declares, with the EDM / CM defaults for a model that declares none."""
    return float(getattr(model, "sigma_min", SIGMA_MIN)), float(getattr(model, "sigma_max", SIGMA_MAX))
