"""Small helpers every layer may use: seeded noise that does not depend on the device, a module's device, the CPU's
bf16 support, RNG states, and whether an output path can be written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU if none given) and moved to `device`.

    Drawing on the generator's device makes a seed give the same images on CPU and GPU.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (samplers follow the model; they pick no device of their own)."""
    return next(module.parameters()).device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU: use --device cpu (or auto)")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (where bf16 autocast runs about twice as fast as fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def rng_state(device: torch.device) -> tuple:
    """The CPU RNG state and, on a GPU, the device's: what a rewind for shared dropout masks restores."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def check_writable(path: str, flag: str, *, not_same_as: tuple[str, str] | None = None) -> None:
    """Refuse an output path that cannot be written (checked before any work), or that is an input of the command."""
    target = Path(path).expanduser()
    if not_same_as and Path(not_same_as[0]).expanduser().resolve() == target.resolve():
        raise ValueError(f"{flag} {path} is also the {not_same_as[1]}: writing it would destroy the input; choose "
                         "another file")
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a folder: give a file name")
    parent = target.absolute().parent
    while not parent.exists():  # the folders that would be created must be creatable in the first one that exists
        parent = parent.parent
    try:  # a real probe (permissions, read-only or virtual file systems), removed at once: nothing is left behind
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path} cannot be written ({exc.strerror or exc} in {parent}): choose another "
                         "place") from None
    if target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"{flag} {path} cannot be written (the file is read-only): choose another place")
