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
import hashlib
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import ConsistencyModel, EDMDenoiser, MeanFlowModel, Preconditioned
from .schedule import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from .unet import UNet
from .utils import atomic_write, resolve_device

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


def check_spec(spec: Any) -> None:
    """A model description's values, checked before anything is built: a damaged or hand-edited one (a checkpoint's
    or a folder's config.json) is refused with the key that is wrong, never a torch error or a huge allocation."""
    import math

    if not isinstance(spec, dict):
        raise ValueError(f"the model description is a {type(spec).__name__}, not a mapping")

    def number(key: str, value: Any, low: float = 0.0, strict: bool = True) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low or (strict and value == low):
            raise ValueError(f"{key} is {value!r}: expected a finite number {'>' if strict else '>='} {low:g}")
        return float(value)

    def count(key: str, value: Any, low: int = 1, high: int = 1 << 16) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{key} is {value!r}: expected a whole number from {low} to {high}")
        return value

    lo = number("sigma_min", spec.get("sigma_min"), strict=False)  # MeanFlow's range starts at 0
    hi = number("sigma_max", spec.get("sigma_max"))
    number("sigma_data", spec.get("sigma_data"))
    if lo >= hi:
        raise ValueError(f"the noise range is inverted: sigma_min {lo} >= sigma_max {hi}")
    if spec.get("num_classes") is not None:
        count("num_classes", spec["num_classes"])
    shape = spec.get("image_shape")
    if shape is not None:
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise ValueError(f"image_shape is {shape!r}: expected [channels, height, width]")
        for key, side in zip(("channels", "height", "width"), shape):
            count(f"image_shape's {key}", side, high=4096)
    net = spec.get("net")
    if net is not None:
        if not isinstance(net, dict):
            raise ValueError(f"net is {net!r}: expected a mapping of the UNet's settings")
        for key in ("in_channels", "base_channels", "num_res_blocks"):
            if key in net:
                count(f"net.{key}", net[key], low=0 if key == "num_res_blocks" else 1, high=4096)
        if net.get("num_classes") is not None:
            count("net.num_classes", net["num_classes"])
        mult = net.get("channel_mult", [])
        if not isinstance(mult, (list, tuple)) or not mult or not all(isinstance(m, int) and 1 <= m <= 64 for m in mult):
            raise ValueError(f"net.channel_mult is {mult!r}: expected a list of whole numbers from 1 to 64")
        if shape is not None and net.get("in_channels", shape[0]) != shape[0]:
            raise ValueError(f"net.in_channels {net.get('in_channels')} differs from image_shape's {shape[0]} channels")
        if (net.get("num_classes") or None) != (spec.get("num_classes") or None):
            raise ValueError(f"num_classes {spec.get('num_classes')} differs from net.num_classes "
                             f"{net.get('num_classes')}")


def check_fits(model: nn.Module, state: dict[str, Any], name: Any) -> None:
    """The weights' names and shapes against a model (built on the meta device: no memory), one line when they differ."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if expected == got:
        return
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    shape = next((k for k in expected if k in got and expected[k] != got[k]), None)
    what = (f"{shape} is {list(got[shape])} in the weights, {list(expected[shape])} in the model" if shape else
            f"{len(missing)} weights missing (e.g. {missing[0]})" if missing else f"unexpected weights (e.g. {extra[0]})")
    raise ValueError(f"the weights in {name} do not fit the model its description builds ({what}): the file is "
                     "damaged, or its description was edited")


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


# The flag that sets each part of a model's spec, for messages that say what to change.
SPEC_FLAGS = {"net.base_channels": "--width", "net.channel_mult": "--channel-mult", "net.num_res_blocks":
              "--num-res-blocks", "net.dropout": "--dropout", "num_classes": "--class-conditional / --no-class-conditional",
              "net.num_classes": "--class-conditional / --no-class-conditional", "image_shape": "--image-size",
              "sigma_min": "--method-arg sigma_min", "sigma_max": "--method-arg sigma_max",
              "sigma_data": "--method-arg sigma_data", "net.time_scale": "the method (its time embedding)",
              "net.num_times": "the method (MeanFlow's two time inputs)", "class": "the method",
              "wrapper": "the method"}


def _flat(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def model_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """What differs between two model specs (checkpoint vs current), key by key ("net.base_channels"), ignoring an
    image shape either side lacks."""
    saved, current = _flat(saved), _flat(current)
    keys = (set(saved) | set(current)) - {"image_shape"}
    diff = {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}
    if saved.get("image_shape") and current.get("image_shape") and saved["image_shape"] != current["image_shape"]:
        diff["image_shape"] = (saved["image_shape"], current["image_shape"])
    return diff


def describe_differences(diff: dict[str, tuple]) -> str:
    """'its net.base_channels is 32, this run's 64 (set by --width)', one clause per difference."""
    if "num_classes" in diff:  # the network's own copy of it says the same
        diff = {k: v for k, v in diff.items() if k != "net.num_classes"}
    return "; ".join(f"its {k} is {a}, this run's {b}" + (f" (set by {SPEC_FLAGS[k]})" if k in SPEC_FLAGS else "")
                     for k, (a, b) in diff.items())


def method_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """Hyper-parameters that differ between two method configs; a key only one side records is not compared
    (a setting added after the checkpoint was written)."""
    return {k: (v, current[k]) for k, v in saved.items() if k in current and v != current[k]}


def check_resumable(ckpt: Checkpoint, spec: dict[str, Any], method: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint of another model or method; warn when the method's settings differ."""
    diff = model_differences(ckpt.model, spec)
    if diff:
        raise ValueError(f"checkpoint {path} holds a different model: {describe_differences(diff)}. Resume it with "
                         "its own settings (drop or change those flags), or start a new run in another --out")
    if ckpt.method.get("name") != method["name"]:
        raise ValueError(f"checkpoint {path} was trained with method {ckpt.method.get('name')!r}, not "
                         f"{method['name']!r}: resume it with that method, or start a new run from its weights")
    diff = method_differences(ckpt.method, method)
    if diff:
        warnings.warn(f"checkpoint {path} was trained with other {method['name']} settings (checkpoint vs this run: "
                      f"{diff}); the run continues with these. To continue it unchanged, give the settings it was "
                      "started with (its config.json lists them)", stacklevel=3)
    for which in ("model", "ema"):
        finite_state(ckpt, which, path)  # a diverged run is not continued


def restore_weights(ckpt: Checkpoint, path: str | os.PathLike, *, model: nn.Module, ema: nn.Module,
                    target: nn.Module | None, method: nn.Module | None) -> None:
    """Load a checkpoint's training weights into a trainer's networks (the method's own parameters, if any)."""
    load_state(model, ckpt.weights["model"], path)
    load_state(ema, ckpt.weights["ema"], path)
    if target is not None:
        if ckpt.weights["target"] is None:
            raise ValueError(f"checkpoint {path} has no target network; it was trained with a method without one")
        load_state(target, ckpt.weights["target"], path)
    if method is not None and ckpt.weights.get("method") is not None:
        load_state(method, ckpt.weights["method"], path)


def load_state(module: nn.Module, state: dict[str, Any], path: str | os.PathLike) -> None:
    """module.load_state_dict(state), with a one-line message when the weights do not fit the module."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))[:200]
        raise ValueError(f"the weights in {path} do not fit the model they are loaded into ({first}): the checkpoint "
                         "is damaged, or it belongs to another model") from None


# ---------------------------------------------------------------------------------------------------- files
class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a permission); the previous file at the path is intact."""


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
    try:
        atomic_write(path, lambda tmp: torch.save(obj, tmp), what="checkpoint")
    except OSError as exc:
        cause = getattr(exc.__cause__, "errno", None) or exc.errno
        fix = ("Free some space" if "disk is full" in str(exc) else "Fix the folder's permission"
               if cause in (errno.EACCES, errno.EPERM, errno.EROFS) else "Fix what it names")
        raise CheckpointWriteError(f"{exc}. {fix} and resume") from exc


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically, with a checksum of its contents that read_checkpoint verifies."""
    payload = {"format": CHECKPOINT_FORMAT, **{f.name: getattr(ckpt, f.name) for f in fields(ckpt)}}
    atomic_save({**payload, "checksum": checksum(payload)}, path)
    return Path(path)


def checksum(obj: Any) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's bytes, dtype and shape, every other value's repr, in a fixed
    order. A changed byte on disk that torch.load does not notice (the zip's CRC is not checked) changes it."""
    digest = hashlib.sha256()

    def walk(value: Any) -> None:
        if torch.is_tensor(value):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=str):
                digest.update(repr(key).encode())
                walk(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                walk(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    walk(obj)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The one reader: load with weights_only=True (no pickled code runs), verify the checksum, check that it is one
    of ours and describes itself consistently, upgrade an older format."""
    path = Path(path)
    if path.is_dir():
        hint = f" (that folder holds {path / 'checkpoint.pt'})" if (path / "checkpoint.pt").is_file() else ""
        raise ValueError(f"{path} is a folder: give the checkpoint file itself{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): it is truncated or not a checkpoint; use another")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        refused_code = "Weights only load failed" in text and "GLOBAL" in text  # a pickle that would import code
        why = ("it holds pickled objects that a weights-only load refuses to run: not written by consistency, or "
               "tampered with" if refused_code else "it is truncated or not a checkpoint")
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {why}") from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt == "consistency-checkpoint-v1":
        raw = _upgrade_v1(raw)
    elif fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a consistency checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    recorded = raw.pop("checksum", None)  # checkpoints before 0.3 have none
    if recorded is not None and checksum(raw) != recorded:
        raise ValueError(f"{path} is damaged: its contents do not match the checksum recorded when it was written (a "
                         "changed or corrupted byte on disk); use an earlier checkpoint")
    try:
        raw.pop("format")
        ckpt = Checkpoint(**raw)
        missing = [k for k in ("model", "ema") if not isinstance(ckpt.weights.get(k), dict)]
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is damaged or was written by another version of consistency ({exc})") from None
    if missing:
        raise ValueError(f"{path} lacks the {' and '.join(missing)} weights: it is damaged")
    shape = ckpt.model.get("image_shape")
    if shape is not None and not (isinstance(shape, (list, tuple)) and len(shape) == 3
                                  and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"{path} is damaged: its image shape {shape} is not three positive sizes (C, H, W)")
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


def finite_state(ckpt: Checkpoint, which: str, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The checkpoint's 'ema' or 'model' weights, refused when any is not finite (a diverged run)."""
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
    state = finite_state(ckpt, which, path)
    if ckpt.model.get("wrapper") and isinstance(model, UNet) and all(k.startswith("net.") for k in state):
        raise ValueError(f"{path} holds a {ckpt.model['wrapper']} around a UNet, and this is a bare UNet: wrap it in "
                         f"cm.{ckpt.model['wrapper']}(net) first (or rebuild it with cm.load_model(path))")
    load_state(model, state, path)
    if getattr(model, "image_shape", 0) is None and ckpt.model.get("image_shape"):
        model.image_shape = tuple(ckpt.model["image_shape"])
    return model.eval()


def load_model(path: str | os.PathLike | Checkpoint, which: str = "ema", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a library model with the chosen weights ('ema' for sampling, or 'model'), in eval mode, from a trainer
    checkpoint (a path, or what read_checkpoint returned), a model folder (save_pretrained) or a hub id."""
    from .pretrained import read_model

    ckpt = read_model(path)
    name = "the checkpoint" if isinstance(path, Checkpoint) else path
    if not is_rebuildable(ckpt.model if isinstance(ckpt.model, dict) else {}):
        build_model(ckpt.model if isinstance(ckpt.model, dict) else {})  # the advice for a model of your own
    try:
        check_spec(ckpt.model)
        with torch.device("meta"):  # the description's shapes first, without allocating a byte
            skeleton = build_model(ckpt.model)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"{name} is damaged: its model description cannot be built ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    state = finite_state(ckpt, which, name)
    check_fits(skeleton, state, name)
    model = build_model(ckpt.model)
    load_state(model, state, name)
    return model.to(resolve_device(device)).eval()
