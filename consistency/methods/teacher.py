"""What the methods that start from, or distil, a diffusion teacher share: a teacher of any kind as a module, the
student's network settings from the teacher's, and the start from the teacher's weights (CM initialises its CD
student this way; ECT and sCM tune from a teacher)."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..model import ConsistencyModel


class _CallableDenoiser(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        return self.fn(x, sigma, class_labels)


def as_denoiser(fn: Callable[..., torch.Tensor]) -> nn.Module:
    """Wrap any callable fn(x, sigma, class_labels) -> x0 (a denoiser in the EDM convention: data in [-1, 1],
    x = x0 + sigma * noise) as a teacher module. sigma arrives as a float or a (B,) tensor."""
    if not callable(fn):
        raise TypeError(f"a teacher is an nn.Module or a callable fn(x, sigma, class_labels) -> x0 (an EDM denoiser), "
                        f"got {type(fn).__name__}: load one with cm.load_model(path)")
    return fn if isinstance(fn, nn.Module) else _CallableDenoiser(fn)


TIME_EMBEDDING = ("time_scale", "num_times")  # UNet settings that are not weights: load_state_dict cannot check them


def teacher_net_options(teacher: nn.Module | None) -> dict:
    """The UNet keywords a student of `teacher` needs besides its architecture: the teacher's time embedding."""
    config = getattr(getattr(teacher, "net", None), "config", {})
    return {key: config[key] for key in TIME_EMBEDDING if key in config}


def copy_teacher_weights(teacher: nn.Module, net: nn.Module) -> None:
    """Start a student network as the teacher's (an EDMDenoiser's .net); a teacher of another kind is left alone."""
    teacher_net = getattr(teacher, "net", None)
    if teacher_net is None:
        return
    theirs, mine = teacher_net_options(teacher), getattr(net, "config", {})
    for key in TIME_EMBEDDING:
        if key in theirs and key in mine and theirs[key] != mine[key]:
            raise ValueError(f"the student network has {key}={mine[key]} but the teacher's has {theirs[key]}: the "
                             f"student starts from the teacher's weights, so build it with {key}={theirs[key]} "
                             "(UNet(..., **teacher.net.config) rebuilds the teacher's network)")
    try:
        net.load_state_dict(teacher_net.state_dict())
    except RuntimeError as exc:
        raise ValueError("the student network differs from the teacher's (the student starts from the teacher's "
                         "weights): build it with the teacher's architecture") from exc


def student_from_teacher(teacher: nn.Module) -> ConsistencyModel:
    """A ConsistencyModel whose network starts as a copy of an EDMDenoiser's (CM initialises the student this way)."""
    if not hasattr(teacher, "net"):
        raise TypeError("student_from_teacher needs an EDMDenoiser (a wrapper with .net); build the student yourself "
                        "for other teachers")
    return ConsistencyModel(copy.deepcopy(teacher.net), sigma_data=teacher.sigma_data, sigma_min=teacher.sigma_min,
                            sigma_max=teacher.sigma_max)
