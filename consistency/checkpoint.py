"""The checkpoint format, in one place: what a model is (plain data), atomic writes, the one reader, compatibility.

A checkpoint is a dict saved with torch.save and read with weights_only=True (no pickled code ever runs):

    format      "consistency-checkpoint-v2"
    model       model_spec(): the class, its declared interface (in_channels, num_classes, image_shape, noise
                range) and, for the library's wrappers around a UNet, everything needed to rebuild it
    method      the training method's config() (its name and hyper-parameters)
    sampler     how the model is sampled (a key of consistency.sampling.SAMPLERS)
    weights     {"model", "ema", "target", "method"}: state dicts (target / method None when there are none)
    optimizer   the optimizer's state dict
    step, total_steps, history, rng, config
                where the run is, its per-step log, every rank's RNG state, and the run's settings

Version-1 checkpoints (consistency 0.1) are upgraded on reading. A model of your own saves and loads its weights:
build it as you did for training, then `load_weights(model, path)`.
"""

from __future__ import annotations

import errno
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import ConsistencyModel, EDMDenoiser, MeanFlowModel, Preconditioned
from .schedule import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from .unet import UNet
from .utils import resolve_device

CHECKPOINT_FORMAT = "consistency-checkpoint-v2"
LIBRARY_MODELS = {"ConsistencyModel": ConsistencyModel, "EDMDenoiser": EDMDenoiser, "MeanFlowModel": MeanFlowModel}
WEIGHTS = ("model", "ema", "target", "method")


@dataclass
class Checkpoint:
    """The contents of a checkpoint file (see the module docstring)."""

    model: dict[str, Any]
    method: dict[str, Any]
    sampler: str
    weights: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    step: int = 0
    total_steps: int | None = None
    history: dict[str, list] = field(default_factory=dict)
    rng: dict[str, list] = field(default_factory=lambda: {"cpu": [], "cuda": []})
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        shape = self.model.get("image_shape")
        if not shape:
            raise ValueError("the checkpoint records no image shape: pass the shape (C, H, W) yourself")
        return tuple(shape)

    @property
    def num_classes(self) -> int | None:
        return self.model.get("num_classes")


def model_spec(model: nn.Module, image_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Plain data describing a model: its class and declared interface, and for the library's wrappers around a
    consistency.UNet the network's settings, so that `build_model` can rebuild it."""
    shape = image_shape if image_shape is not None else getattr(model, "image_shape", None)
    spec: dict[str, Any] = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "in_channels": getattr(model, "in_channels", None),
        "num_classes": getattr(model, "num_classes", None),
        "image_shape": list(shape) if shape else None,
        "sigma_min": float(getattr(model, "sigma_min", SIGMA_MIN)),
        "sigma_max": float(getattr(model, "sigma_max", SIGMA_MAX)),
        "sigma_data": float(getattr(model, "sigma_data", SIGMA_DATA)),
    }
    if type(model).__name__ in LIBRARY_MODELS and isinstance(model, Preconditioned) and type(model.net) is UNet:
        spec["wrapper"] = type(model).__name__
        spec["net"] = dict(model.net.config)
    return spec


def is_rebuildable(spec: dict[str, Any]) -> bool:
    return spec.get("wrapper") in LIBRARY_MODELS and "net" in spec


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a library model from model_spec() (untrained weights); a model of your own is refused with advice."""
    if not is_rebuildable(spec):
        raise ValueError(f"the checkpoint holds a model of your own ({spec.get('class')}), which the library cannot "
                         "rebuild: build it as you did for training, then call consistency.load_weights(model, path)")
    net_cfg = dict(spec["net"])
    net_cfg["channel_mult"] = tuple(net_cfg["channel_mult"])
    if net_cfg.get("attn_levels") is not None:
        net_cfg["attn_levels"] = tuple(net_cfg["attn_levels"])
    wrapper = LIBRARY_MODELS[spec["wrapper"]]
    return wrapper(UNet(**net_cfg), sigma_data=spec["sigma_data"], sigma_min=spec["sigma_min"],
                   sigma_max=spec["sigma_max"], image_shape=spec.get("image_shape"))


def model_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """What differs between two model specs (checkpoint vs current), ignoring an image shape either side lacks."""
    keys = (set(saved) | set(current)) - {"image_shape"}
    diff = {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}
    if saved.get("image_shape") and current.get("image_shape") and saved["image_shape"] != current["image_shape"]:
        diff["image_shape"] = (saved["image_shape"], current["image_shape"])
    return diff


def method_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """Hyper-parameters that differ between two method configs; a key only one side records is not compared
    (a setting added after the checkpoint was written)."""
    return {k: (v, current[k]) for k, v in saved.items() if k in current and v != current[k]}


def check_resumable(ckpt: Checkpoint, spec: dict[str, Any], method: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint of another model or method; warn when the method's settings differ."""
    diff = model_differences(ckpt.model, spec)
    if diff:
        raise ValueError(f"checkpoint {path} holds a different model (checkpoint vs this one: {diff}); "
                         "build the model with the checkpoint's settings or start a new run")
    if ckpt.method.get("name") != method["name"]:
        raise ValueError(f"checkpoint {path} was trained with method {ckpt.method.get('name')!r}, not "
                         f"{method['name']!r}: resume it with that method, or start a new run from its weights")
    diff = method_differences(ckpt.method, method)
    if diff:
        warnings.warn(f"checkpoint {path} was trained with other {method['name']} settings (checkpoint vs this run: "
                      f"{diff}); the run continues with these. To continue it unchanged, give the settings it was "
                      "started with (its config.json lists them)", stacklevel=3)


def restore_weights(ckpt: Checkpoint, path: str | os.PathLike, *, model: nn.Module, ema: nn.Module,
                    target: nn.Module | None, method: nn.Module | None) -> None:
    """Load a checkpoint's training weights into a trainer's networks (the method's own parameters, if any)."""
    model.load_state_dict(ckpt.weights["model"])
    ema.load_state_dict(ckpt.weights["ema"])
    if target is not None:
        if ckpt.weights["target"] is None:
            raise ValueError(f"checkpoint {path} has no target network; it was trained with a method without one")
        target.load_state_dict(ckpt.weights["target"])
    if method is not None and ckpt.weights.get("method") is not None:
        method.load_state_dict(ckpt.weights["method"])


# ---------------------------------------------------------------------------------------------------- files
class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a permission); the previous file at the path is intact."""


def temporary_path(path: str | os.PathLike) -> Path:
    """Where atomic_save writes before renaming: a hidden file beside `path`, named by the process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed save left beside `path` (from any process); returns what was removed."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.tmp*")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a half-written file, and
    a failed write (a full disk) leaves the previous file as it was and raises CheckpointWriteError saying so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch's writer reports a full disk as a RuntimeError
        full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or _free_bytes(path) < 2**26
        kept = "the previous checkpoint there is intact" if path.exists() else "nothing was written"
        raise CheckpointWriteError(
            f"could not write {path} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            f"{'; the disk is full' if full else ''}: {kept}. Free some space (or fix the permission) and resume"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return 2**62


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically."""
    atomic_save({"format": CHECKPOINT_FORMAT, **asdict(ckpt)}, path)
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The one reader: load with weights_only=True, check that it is one of ours, upgrade an older format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        import pickle

        why = ("it holds pickled objects that a weights-only load refuses to run: not written by consistency, or "
               "tampered with" if isinstance(exc, pickle.UnpicklingError)
               else f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}")
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({why})") from exc
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt == "consistency-checkpoint-v1":
        raw = _upgrade_v1(raw)
    elif fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a consistency checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    try:
        raw.pop("format")
        ckpt = Checkpoint(**raw)
        missing = [k for k in ("model", "ema") if not isinstance(ckpt.weights.get(k), dict)]
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is damaged or was written by another version of consistency ({exc})") from exc
    if missing:
        raise ValueError(f"{path} lacks the {' and '.join(missing)} weights: it is damaged")
    return ckpt


_V1_METHODS = {"ImprovedConsistencyTraining": "ict", "ConsistencyTraining": "ct", "EasyConsistencyTraining": "ect",
               "ConsistencyDistillation": "cd", "EDMLoss": "edm"}


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """A consistency 0.1 checkpoint in today's layout (same weights; the method named as --method names it)."""
    old = raw["model_config"]
    net = dict(old["net"])
    loss = dict(raw.get("config", {}).get("loss", {}))
    name = _V1_METHODS.get(loss.pop("name", ""), "ict")
    if "n" in loss:
        loss["num_scales"] = loss.pop("n")
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {"class": f"consistency.model.{old['wrapper']}", "in_channels": net["in_channels"],
                  "num_classes": net.get("num_classes"), "image_shape": raw.get("image_shape"),
                  "sigma_min": old["sigma_min"], "sigma_max": old["sigma_max"], "sigma_data": old["sigma_data"],
                  "wrapper": old["wrapper"], "net": net},
        "method": {"name": name, **loss},
        "sampler": "edm" if old["wrapper"] == "EDMDenoiser" else "consistency",
        "weights": {"model": raw["model"], "ema": raw["ema"], "target": raw.get("target"), "method": None},
        "optimizer": raw.get("optimizer"),
        "step": raw.get("step", 0),
        "total_steps": raw.get("total_steps"),
        "history": raw.get("history", {}),
        "rng": {"cpu": raw.get("rng_cpu", []), "cuda": raw.get("rng_cuda", [])},
        "config": {k: v for k, v in raw.get("config", {}).items() if k not in ("model", "loss")},
    }


def _state(ckpt: Checkpoint, which: str, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    state = ckpt.weights[which]
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"checkpoint {path} holds non-finite {which} weights ({bad[0]}, ...): the run it came from "
                         "diverged; use an earlier checkpoint")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, which: str = "ema") -> nn.Module:
    """Load a checkpoint's weights ('ema' for sampling, or 'model') into a model you built yourself; eval mode."""
    ckpt = read_checkpoint(path)
    model.load_state_dict(_state(ckpt, which, path))
    if getattr(model, "image_shape", 0) is None and ckpt.model.get("image_shape"):
        model.image_shape = tuple(ckpt.model["image_shape"])
    return model.eval()


def load_model(path: str | os.PathLike | Checkpoint, which: str = "ema", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the library model saved in a checkpoint (a path, or one read_checkpoint returned) with the chosen
    weights ('ema' for sampling, or 'model'), in eval mode."""
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    model = build_model(ckpt.model)
    model.load_state_dict(_state(ckpt, which, "the checkpoint" if isinstance(path, Checkpoint) else path))
    return model.to(resolve_device(device)).eval()
