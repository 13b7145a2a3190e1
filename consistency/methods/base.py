"""The method interface every training method implements, and what the consistency methods share.

A *method* is the objective the trainer optimises. It is a small object (hyper-parameters in `__init__`) that the
trainer calls once per step:

    out = method(model, target, x, class_labels, step=k, total_steps=K)
    out.loss   # (B,) per-sample loss; the trainer takes its mean
    out.logs   # {"N": 21}: scalars worth logging (Python numbers or 0-dim tensors)

What a method receives
    model         the network under training, called as model(x, sigma, class_labels) -> x0. It may be wrapped
                  (DistributedDataParallel, torch.compile): call it, do not read attributes from it.
    target        the target network theta- when the method keeps one (see `target_decay`), else None: a method
                  without a target uses `model` itself under stop-gradient (iCT's theta- = stopgrad(theta)).
    x             the batch, (B, C, H, W) in [-1, 1]; class_labels (B,) or None for an unconditional model.
    step, total_steps
                  where the run is (the curriculum reads them); step counts from 0.

What a method declares
    name          its key in `consistency.methods.METHODS` and for `--method`.
    sampler       how a model trained with it is sampled: a key of `consistency.sampling.SAMPLERS`.
    curriculum    the log key whose changes mark the curriculum's stages on the loss plot (None: no curriculum).
    target_decay(step, total_steps)
                  the decay mu of the target network after this step, or None when the method keeps no target copy.
    wrap(net)     the preconditioned model it trains around a bare network F(x, c_noise, class_labels); the
                  trainer checks that the model's noise range (sigma_min, sigma_max, sigma_data) equals the method's.
    net_options   keywords the network needs (MeanFlow: two time inputs); the command lines pass them to the UNet.
    uses_jvp      whether it takes JVPs through the model (consistency.jvp): they run on the plain module under
                  stop-gradient, and the gradient pass goes through the (DDP-wrapped) model.
    config()      its hyper-parameters as plain data (recorded in checkpoints; a resume under others warns).

Parameters of its own: a method that is also an `nn.Module` (e.g. a learned loss weighting) has its trainable
parameters optimised with the model's, averaged across processes under DDP and saved in the checkpoint. They are
not part of the sampling EMA: a model is sampled without its method.

Adding a method is one file here plus one line in `METHODS` (methods/__init__.py).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import nn

from ..model import ConsistencyModel
from ..schedule import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, karras_sigmas
from ..utils import rng_state, set_rng_state

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MethodOutput(NamedTuple):
    loss: torch.Tensor  # (B,) per-sample loss
    logs: dict[str, Any] = {}  # scalars worth logging: Python numbers or 0-dim tensors (no host sync needed)


class Method(ABC):
    """The interface of a training method (see the module docstring)."""

    name: ClassVar[str]
    sampler: ClassVar[str] = "consistency"  # CM Algorithm 1
    curriculum: ClassVar[str | None] = None
    net_options: ClassVar[dict[str, Any]] = {}  # what the network needs (e.g. MeanFlow: two time inputs)
    uses_jvp: ClassVar[bool] = False  # takes JVPs through the model (sCM, MeanFlow)

    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    sigma_data: float = SIGMA_DATA

    @abstractmethod
    def __call__(self, model: nn.Module, target: nn.Module | None, x: torch.Tensor,
                 class_labels: torch.Tensor | None = None, *, step: int, total_steps: int) -> MethodOutput:
        """The per-sample loss of this batch (and what is worth logging)."""

    def target_decay(self, step: int, total_steps: int) -> float | None:
        """Decay mu(k) of the target network theta- after update k, or None: no copy, theta- = stopgrad(theta)."""
        return None

    def wrap(self, net: nn.Module) -> nn.Module:
        """The model this method trains around a bare network: a consistency model with f(x, sigma_min) = x."""
        return ConsistencyModel(net, sigma_data=self.sigma_data, sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def config(self) -> dict[str, Any]:
        """The method's name and hyper-parameters as plain data."""
        plain = {k: v for k, v in vars(self).items()
                 if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str))}
        return {"name": self.name, **plain}


def check_range(method: str, **checks: tuple[Any, bool, str]) -> None:
    """Refuse hyper-parameters outside their range: check_range("ict", s1=(s1, s1 >= s0, ">= s0")); a number that is
    not finite is refused whatever the rule."""
    for key, (value, ok, rule) in checks.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"method {method!r}: {key} must be a finite number, got {value}")
        if not ok:
            raise ValueError(f"method {method!r}: {key} must be {rule}, got {value}")


def check_levels(method: str, sigma_min: float, sigma_max: float, sigma_data: float, rho: float | None = None) -> None:
    """Refuse a noise range that cannot work, where the method is built: 0 <= sigma_min < sigma_max, sigma_data > 0,
    rho > 0 (the Karras levels' exponent)."""
    check_range(method, sigma_min=(float(sigma_min), sigma_min >= 0, ">= 0"),
                sigma_max=(float(sigma_max), sigma_max > sigma_min, f"> sigma_min ({sigma_min})"),
                sigma_data=(float(sigma_data), sigma_data > 0, "> 0"))
    if rho is not None:
        check_range(method, rho=(float(rho), rho > 0, "> 0"))


def check_lognormal(method: str, p_mean: float, p_std: float, low: float, high: float) -> None:
    """Refuse a lognormal noise-level distribution ln(sigma) ~ N(p_mean, p_std^2) that (almost) never draws a level in
    [low, high], the model's noise range: its training would see only levels it cannot use."""
    check_range(method, p_mean=(float(p_mean), True, ""), p_std=(float(p_std), p_std > 0, "> 0"))
    cdf = lambda v: 0.5 * (1 + math.erf((math.log(v) - p_mean) / (math.sqrt(2) * p_std)))  # noqa: E731
    mass = cdf(high) - cdf(max(low, 1e-12))
    check_range(method, p_mean=(p_mean, mass > 1e-6, f"such that ln(sigma) ~ N(p_mean, {p_std}^2) draws levels in "
                                                      f"[{low:g}, {high:g}] (it does with probability {mass:.2g})"))


def check_noise_range(method: Method, model: nn.Module) -> None:
    """Refuse a model whose declared noise range (sigma_min, sigma_max, sigma_data) is not the method's."""
    for key in ("sigma_min", "sigma_max", "sigma_data"):
        ours, theirs = getattr(model, key, None), getattr(method, key, None)
        if ours is not None and theirs is not None and not math.isclose(ours, theirs, rel_tol=1e-9):
            raise ValueError(f"the method's {key} is {theirs} but the model's is {ours}: build both with the same "
                             "noise range (method.wrap(net) builds the model the method expects)")


# ---------------------------------------------------------------------------------------------------- distances
def l2_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample (the CM code's 'l2')."""
    return (x - y).square().flatten(1).mean(1)


def l1_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per sample."""
    return (x - y).abs().flatten(1).mean(1)


def pseudo_huber_distance(x: torch.Tensor, y: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """iCT's sqrt(||x - y||_2^2 + c^2) - c, the norm over the whole sample, c = 0.00054 sqrt(C*H*W) by default."""
    diff = (x - y).flatten(1)
    if c is None:
        c = 0.00054 * math.sqrt(diff.shape[1])
    return (diff.square().sum(1) + c**2).sqrt() - c


DISTANCES: dict[str, Distance] = {"l2": l2_distance, "l1": l1_distance, "pseudo_huber": pseudo_huber_distance}


def get_distance(distance: str | Distance) -> Distance:
    if callable(distance):
        return distance
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}: choose one of {sorted(DISTANCES)} or pass a callable")
    return DISTANCES[distance]


def distance_name(distance: str | Distance) -> str:
    return distance if isinstance(distance, str) else getattr(distance, "__name__", type(distance).__name__)


# ---------------------------------------------------------------------------------------------------- shared parts
def consistency_pair(
    model: nn.Module,
    target: nn.Module | None,
    x_next: torch.Tensor,
    t_next: torch.Tensor,
    x_cur: torch.Tensor,
    t_cur: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    **inputs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f_theta(x_next, t_next) with gradients, and f_theta-(x_cur, t_cur) under stop-gradient (target None: theta);
    `inputs` go to both (a guided teacher's student takes guidance=w).

    Both passes draw the same dropout masks (iCT section 3.1; CM's code): the RNG is rewound for the target pass.
    The trainer keeps the target network in the online network's train/eval mode, so dropout runs in both.
    """
    start = rng_state(x_next.device)
    online = model(x_next, t_next, class_labels, **inputs)
    with torch.no_grad():
        end = rng_state(x_next.device)
        set_rng_state(start, x_next.device)
        target_out = (model if target is None else target)(x_cur, t_cur, class_labels, **inputs)
        set_rng_state(end, x_next.device)
    return online, target_out.detach()


class ConsistencyMethod(Method):
    """What CT, iCT, ECT and CD share: a noise range, a distance, and the Karras levels for a given N (cached)."""

    curriculum = "N"

    def __init__(self, sigma_min: float, sigma_max: float, rho: float, distance: str | Distance, sigma_data: float):
        check_levels(self.name, sigma_min, sigma_max, sigma_data, rho)
        self.sigma_min, self.sigma_max, self.rho, self.sigma_data = sigma_min, sigma_max, rho, sigma_data
        self.distance = get_distance(distance)
        self.distance_name = distance_name(distance)
        self._sigmas: dict[tuple, torch.Tensor] = {}

    def sigmas(self, num_scales: int, device: torch.device) -> torch.Tensor:
        """The N ascending Karras levels t_1 = sigma_min < ... < t_N = sigma_max, on `device`."""
        key = (num_scales, str(device))
        if key not in self._sigmas:
            self._sigmas[key] = karras_sigmas(num_scales, self.sigma_min, self.sigma_max, self.rho, device=device).float()
        return self._sigmas[key]


DEFAULT_RANGE = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, sigma_data=SIGMA_DATA)
