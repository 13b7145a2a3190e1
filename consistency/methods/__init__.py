"""Training methods, one file each, all implementing `Method` (base.py). METHODS maps --method names to classes."""

from __future__ import annotations

import inspect
import math
from typing import Any

from .base import (
    DISTANCES,
    ConsistencyMethod,
    Distance,
    Method,
    MethodOutput,
    check_noise_range,
    consistency_pair,
    get_distance,
    l1_distance,
    l2_distance,
    pseudo_huber_distance,
)
from .cd import ConsistencyDistillation
from .ct import ConsistencyTraining, ImprovedConsistencyTraining
from .ect import EasyConsistencyTraining
from .edm import EDMLoss
from .meanflow import MeanFlow
from .scm import ContinuousConsistencyDistillation, SimplifiedConsistencyTraining
from .teacher import as_denoiser, copy_teacher_weights, student_from_teacher

METHODS: dict[str, type[Method]] = {
    "ict": ImprovedConsistencyTraining,
    "ct": ConsistencyTraining,
    "ect": EasyConsistencyTraining,
    "cd": ConsistencyDistillation,
    "edm": EDMLoss,
    "scm": SimplifiedConsistencyTraining,
    "scd": ContinuousConsistencyDistillation,
    "meanflow": MeanFlow,
}


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor's parameters; a constructor that passes **kwargs on takes its parent's too."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        own = inspect.signature(init).parameters
        params.update({k: p for k, p in own.items() if k not in params and k != "self"
                       and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)})
        if not any(p.kind == p.VAR_KEYWORD for p in own.values()):
            break
    return params


def method_options(name: str) -> set[str]:
    """The keyword options a method's constructor takes (what a command line may pass to it)."""
    return {p for p in _parameters(method_class(name)) if p != "teacher"}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def takes_teacher(name: str) -> bool:
    """Whether the method can start from (or distil) a teacher: its constructor takes one."""
    return "teacher" in _parameters(method_class(name))


def needs_teacher(name: str) -> bool:
    """Whether the method cannot do without a teacher (its constructor's teacher has no default)."""
    param = _parameters(method_class(name)).get("teacher")
    return param is not None and param.default is inspect.Parameter.empty


def build_method(name: str, teacher: Any = None, **options: Any) -> Method:
    """METHODS[name](**options), with the teacher for methods that take one. Unknown options are a clear error."""
    cls = method_class(name)
    unknown = set(options) - method_options(name)
    if unknown:
        raise ValueError(f"method {name!r} takes no option {', '.join(sorted(unknown))} "
                         f"(it takes {', '.join(sorted(method_options(name)))})")
    params = _parameters(cls)
    for key, value in options.items():  # a value of the wrong kind, e.g. --method-arg s1=abc, named before any work
        annotation = params[key].annotation  # a string under `from __future__ import annotations`
        kinds = {"int": int, "float": float, "bool": bool, "str": str}
        default = params[key].default
        kind = kinds.get(annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""),
                         float if isinstance(default, float) else type(default))
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"method {name!r}: option {key} must be True or False, got {value!r}")
        if kind in (int, float) and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ValueError(f"method {name!r}: option {key} must be a number, got {value!r}")
        if kind in (int, float) and not math.isfinite(value):
            raise ValueError(f"method {name!r}: option {key} must be a finite number, got {value!r}")
        if kind is int and not float(value).is_integer():
            raise ValueError(f"method {name!r}: option {key} must be an integer, got {value!r}")
    if needs_teacher(name) and teacher is None:
        raise ValueError(f"method {name!r} distils a teacher: pass one (--teacher CKPT on the command line)")
    if teacher is not None:
        if not takes_teacher(name):
            raise ValueError(f"method {name!r} takes no teacher")
        return cls(teacher, **options)
    return cls(**options)

__all__ = [
    "ContinuousConsistencyDistillation", "MeanFlow", "SimplifiedConsistencyTraining",
    "DISTANCES", "METHODS", "ConsistencyDistillation", "ConsistencyMethod", "ConsistencyTraining", "Distance",
    "EDMLoss", "EasyConsistencyTraining", "ImprovedConsistencyTraining", "Method", "MethodOutput", "as_denoiser",
    "build_method", "check_noise_range", "consistency_pair", "copy_teacher_weights", "get_distance", "l1_distance", "l2_distance", "method_class",
    "method_options", "needs_teacher", "takes_teacher", "pseudo_huber_distance", "student_from_teacher",
]
