"""What the methods that start from, or distil, a diffusion teacher share: a teacher of any kind as a module, the
student's network settings from the teacher's, and the start from the teacher's weights (CM initialises its CD
student this way; ECT and sCM tune from a teacher)."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from ..model import MAX_GUIDANCE, ConsistencyModel


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
    try:  # a student that takes a guidance scale has that embedding besides the teacher's weights (starting at 0)
        missing, unexpected = net.load_state_dict(teacher_net.state_dict(), strict=False)
    except RuntimeError as exc:
        raise ValueError("the student network differs from the teacher's (the student starts from the teacher's "
                         "weights): build it with the teacher's architecture") from exc
    if unexpected or any(not k.startswith("guidance_embed.") for k in missing):
        raise ValueError(f"the student network differs from the teacher's ({(unexpected or missing)[0]}): the student "
                         "starts from the teacher's weights, so build it with the teacher's architecture")


def student_from_teacher(teacher: nn.Module) -> ConsistencyModel:
    """A ConsistencyModel whose network starts as a copy of an EDMDenoiser's (CM initialises the student this way)."""
    if not hasattr(teacher, "net"):
        raise TypeError("student_from_teacher needs an EDMDenoiser (a wrapper with .net); build the student yourself "
                        "for other teachers")
    return ConsistencyModel(copy.deepcopy(teacher.net), sigma_data=teacher.sigma_data, sigma_min=teacher.sigma_min,
                            sigma_max=teacher.sigma_max)


class TeacherGuidance:
    """Distilling a *guided* teacher (LCM, Luo et al. 2023): the teacher's ODE step uses the classifier-free-guided
    denoiser D_w = D(null) + w (D(c) - D(null)). `guidance` is a fixed w (the student learns that one guided model), or
    a range (w_min, w_max) from which w is drawn per sample, uniformly, and given to the student as an input (its
    network has a w-embedding: UNet(guidance_embed=True)), so one student serves every w in the range."""

    def __init__(self, method: str, teacher: nn.Module, guidance: float | tuple[float, float] | None):
        from .base import check_range

        self.range = None
        if guidance is not None:
            number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
            pair = isinstance(guidance, (tuple, list)) and len(guidance) == 2 and all(map(number, guidance))
            if not (number(guidance) or pair):
                raise ValueError(f"method {method!r}: guidance is {guidance!r}: give a scale w >= 0 such as 2.0, or a "
                                 "range of scales such as (1.0, 4.0)")
            low, high = (guidance, guidance) if number(guidance) else tuple(guidance)
            if not 0 <= low <= high <= MAX_GUIDANCE:
                raise ValueError(f"method {method!r}: guidance {guidance!r} must be a scale or a range (w_min, w_max) "
                                 f"with 0 <= w_min <= w_max <= {MAX_GUIDANCE:g}")
            check_range(method, guidance=(float(low), True, ""), w_max=(float(high), True, ""))
            if getattr(teacher, "null_class", None) is None:
                raise ValueError(f"method {method!r}: guidance distils the teacher guided, and this teacher has no null "
                                 "class (it was trained without --label-dropout): train the teacher with "
                                 "--label-dropout 0.1")
            self.range = (float(low), float(high))
        self.student_input = guidance is not None and not isinstance(guidance, (int, float))

    def draw(self, batch: int, device: torch.device) -> float | torch.Tensor | None:
        """This step's w: None (unguided), the fixed w, or (B,) scales drawn from the range."""
        if self.range is None:
            return None
        low, high = self.range
        return torch.rand(batch, device=device) * (high - low) + low if self.student_input else low

    def teacher(self, teacher: nn.Module, w: float | torch.Tensor | None) -> nn.Module:
        from ..model import Guided

        return teacher if w is None else Guided(teacher, w)

    def student(self, w: float | torch.Tensor | None) -> dict:
        """The student's extra input: guidance=w when it takes one."""
        return {"guidance": w} if self.student_input else {}

    def config(self) -> dict:
        return {"guidance_min": self.range[0], "guidance_max": self.range[1]} if self.range else {}

    @property
    def net_options(self) -> dict:
        return {"guidance_embed": True} if self.student_input else {}
