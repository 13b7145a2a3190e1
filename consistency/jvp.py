"""Jacobian-vector products through a network, for the continuous-time methods (sCM, MeanFlow).

    out, tangent_out = jvp(fn, primals, tangents)                       # torch.func.jvp: exact, one pass
    out, tangent_out = jvp(fn, primals, tangents, method="finite_difference")   # central differences: two passes

`fn` is a function of tensors (a lambda around the model); `primals` and `tangents` are tuples of equal shapes.
The JVP runs without autocast (fp32), since the tangent is the small difference the training target is made of. It
is meant for stop-gradient targets: call it on the plain module (`unwrap(model)`), and compute the prediction that
carries gradients with a separate call of the (DDP-wrapped) model, so that DistributedDataParallel still averages
the gradients: a gradient taken through the unwrapped module would silently skip that synchronisation.
Dropout: the finite-difference passes draw the same masks (the RNG is rewound between them).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn

from .utils import rng_state, set_rng_state

JVP_METHODS = ("autograd", "finite_difference")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def _fp32(device_type: str):
    with torch.autocast(device_type, enabled=False):
        yield


def jvp(
    fn: Callable[..., torch.Tensor],
    primals: Sequence[torch.Tensor],
    tangents: Sequence[torch.Tensor],
    *,
    method: str = "autograd",
    eps: float = 3e-4,  # float32's best trade between rounding and truncation on the UNet (tests/test_continuous.py)
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(*primals), d/de fn(primals + e tangents) at e = 0), without gradients, in fp32.

    method "autograd" uses torch.func.jvp (forward-mode AD); "finite_difference" the central difference
    (fn(p + h v) - fn(p - h v)) / 2h with h = eps, for networks whose layers have no forward-mode rule.
    """
    if method not in JVP_METHODS:
        raise ValueError(f"unknown JVP method {method!r}: choose one of {', '.join(JVP_METHODS)}")
    low = (torch.float16, torch.bfloat16)  # reduced precision becomes fp32; float64 stays (tests compare in it)
    primals = tuple(p.float() if p.dtype in low else p for p in primals)
    tangents = tuple(t.to(p.dtype) for p, t in zip(primals, tangents))
    device_type = primals[0].device.type
    with torch.no_grad(), _fp32(device_type):
        if method == "autograd":
            return torch.func.jvp(fn, primals, tangents)
        state = rng_state(primals[0].device)
        out = fn(*primals)
        set_rng_state(state, primals[0].device)
        plus = fn(*(p + eps * t for p, t in zip(primals, tangents)))
        set_rng_state(state, primals[0].device)
        minus = fn(*(p - eps * t for p, t in zip(primals, tangents)))
        return out, (plus - minus) / (2 * eps)

