"""Checkpoint files: what a model is (plain data), atomic writes, weights_only reads, rebuilding a model to sample from.

The trainer's save() and load() hold the training state; these functions serve it and every script that only needs
the weights (sampling, editing, benchmarks, a teacher for distillation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import ConsistencyModel, EDMDenoiser
from .unet import UNet
from .utils import resolve_device

CHECKPOINT_FORMAT = "consistency-checkpoint-v1"
WRAPPERS = {"ConsistencyModel": ConsistencyModel, "EDMDenoiser": EDMDenoiser}


def model_config(model: nn.Module) -> dict[str, Any]:
    """Plain-data description of a preconditioned model, enough to rebuild it (stored in checkpoints)."""
    if not isinstance(model, tuple(WRAPPERS.values())) or not hasattr(model.net, "config"):
        raise TypeError("expected a ConsistencyModel or EDMDenoiser around a consistency.UNet")
    return {
        "wrapper": type(model).__name__,
        "net": dict(model.net.config),
        "sigma_data": model.sigma_data,
        "sigma_min": model.sigma_min,
        "sigma_max": model.sigma_max,
    }


def build_model(config: dict[str, Any]) -> nn.Module:
    """Inverse of model_config()."""
    net_cfg = dict(config["net"])
    net_cfg["channel_mult"] = tuple(net_cfg["channel_mult"])
    wrapper = WRAPPERS[config["wrapper"]]
    return wrapper(UNet(**net_cfg), sigma_data=config["sigma_data"], sigma_min=config["sigma_min"], sigma_max=config["sigma_max"])


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True and check that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a consistency checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return ckpt


def load_model(path: str | os.PathLike, which: str = "ema", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network saved in a checkpoint with the chosen weights ('ema' for sampling, or 'model'), in eval mode."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt["model_config"])
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    model.load_state_dict(ckpt[which])
    return model.to(resolve_device(device)).eval()


