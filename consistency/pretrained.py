"""Models shared the way the ecosystem shares them: a folder holding `model.safetensors` (the weights), `config.json`
(what rebuilds the model and samples it) and `README.md` (a model card), which the Hugging Face Hub serves as is.

    model.save_pretrained("my-model/")          # a library model; trainer.save_pretrained() writes the sampling EMA
    model = cm.load_model("my-model/")          # a folder, a trainer checkpoint, or a hub id "owner/name"
    model = cm.load_model("pretrained/mnist")   # the small model that comes with the package
    model.push_to_hub("owner/name")             # where the machine is online (the [hub] extra)

(The library's models have save_pretrained / from_pretrained / push_to_hub as huggingface_hub's
PyTorchModelHubMixin gives them, and write the same folder layout, without making huggingface_hub a dependency.)

Loading a folder never unpickles: JSON and safetensors only. A config.json that names an unknown network, method or
sampler, and weights that do not fit the model it describes, are refused in one line. The [hub] extra
(huggingface_hub, safetensors) is needed to write a folder; a folder is read with safetensors where it is installed,
else by load_safetensors here (so the bundled model loads right after `pip install`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import LIBRARY_MODELS, Checkpoint, model_spec, read_checkpoint
from .utils import atomic_write

FORMAT = "consistency-pretrained-v1"
BUNDLED = Path(__file__).resolve().parent / "pretrained_models"  # load_model("pretrained/NAME") finds them anywhere
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError('saving or loading a model folder needs safetensors: pip install "consistency-models[hub]"') \
            from None
    return safetensors.torch


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def load_safetensors(path: str | os.PathLike, metadata: bool = False) -> Any:
    """A .safetensors file's tensors (and, with metadata=True, its string metadata as a second item): with the
    safetensors package where it is installed, else read here (the format is an 8-byte little-endian header length, a
    JSON header of dtype, shape and byte offsets, then the raw bytes), so that the bundled model loads right after
    `pip install` with no extra. Nothing is unpickled either way."""
    try:
        from safetensors import safe_open
    except ImportError:
        pass
    else:
        with safe_open(str(path), "pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            return (state, f.metadata() or {}) if metadata else state
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError("the file is shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    meta = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + size:]
    state = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        if not 0 <= start <= end <= len(body):
            raise ValueError(f"tensor {name!r} lies outside the file")
        raw = body[start:end]
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
        state[name] = flat.reshape(entry["shape"])
    return (state, meta) if metadata else state


def save_pretrained(model: nn.Module, folder: str | os.PathLike, *, method: dict[str, Any] | None = None,
                    sampler: str = "consistency", default_steps: tuple[int, ...] = (1, 2), classes: list[str] = (),
                    default_guidance: float | None = None, weights: str = "ema", training: dict[str, Any] | None = None,
                    metrics: list[dict[str, Any]] | None = None) -> Path:
    """Write `model` (a library model: a ConsistencyModel, EDMDenoiser or MeanFlowModel around a UNet) as a folder:
    model.safetensors, config.json and a README.md model card. `training` (the command, the budget, the data set)
    and `metrics` (the yardstick's rows) go into both."""
    from .sampling import get_sampler

    st = _safetensors()
    spec = model_spec(model)
    if "wrapper" not in spec:
        raise ValueError("save_pretrained writes the library's models (ConsistencyModel, EDMDenoiser, MeanFlowModel "
                         "around a consistency.UNet); for a model of your own, save its state_dict with safetensors")
    get_sampler(sampler)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "library": "consistency", "model": spec, "method": dict(method or {}),
              "sampler": sampler, "default_steps": list(default_steps), "default_guidance": default_guidance,
              "classes": list(classes), "weights": weights,
              "training": dict(training or {}), "metrics": list(metrics or [])}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: st.save_file(state, str(tmp), metadata={"format": FORMAT}))
    atomic_write(folder / CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    atomic_write(folder / CARD, lambda tmp: tmp.write_text(model_card(config)))
    return folder


def model_card(config: dict[str, Any]) -> str:
    """The folder's README.md: what the model is, how it samples, how it was trained, what it scores."""
    from .sampling import get_sampler

    spec, method, training = config["model"], config["method"], config.get("training", {})
    net = spec.get("net", {})
    nfe = get_sampler(config["sampler"]).nfe
    steps = ", ".join(f"{k} step{'s' if k > 1 else ''} ({nfe(k)} network evaluation{'s' if nfe(k) > 1 else ''})"
                      for k in config["default_steps"])
    params = training.get("parameters")
    lines = [
        "---", "library_name: consistency", "tags: [consistency-models, image-generation, one-step]", "---", "",
        f"# {training.get('name', 'A consistency model')}", "",
        f"A {spec['wrapper']} trained with `--method {method.get('name', '?')}` of the "
        "`consistency` library (consistency models in PyTorch): "
        f"{spec['image_shape'][0]}x{spec['image_shape'][1]}x{spec['image_shape'][2]} images"
        + (f", class-conditional on {spec['num_classes']} classes ({', '.join(config['classes'])})"
           if spec.get("num_classes") else ", unconditional") + ".", "",
        "| | |", "| --- | --- |",
        f"| network | UNet, width {net.get('base_channels')}, levels {net.get('channel_mult')}, "
        f"{net.get('num_res_blocks')} residual block(s) per level{f', {params:,} parameters' if params else ''} |",
        f"| sampler | `{config['sampler']}`: {steps}"
        + (f", guidance w = {config['default_guidance']:g}" if config.get("default_guidance") else "") + " |",
        f"| weights | {'the sampling EMA' if config['weights'] == 'ema' else 'the online network'} |",
    ]
    for key, label in (("data", "data"), ("command", "training command"), ("budget", "budget"),
                       ("machine", "trained on")):
        if training.get(key):
            value = training[key]
            lines.append(f"| {label} | {f'`{value}`' if key == 'command' else value} |")
    if config.get("metrics"):
        lines += ["", "Measured with the library's yardstick (`python -m consistency.evaluate`: a Fréchet distance in "
                  "a classifier's feature space, precision and recall there, and the share of samples read as the "
                  "class asked for):", "",
                  "| steps | guidance | FID | precision | recall | label ok | samples |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in config["metrics"]:
            agree = f"{m['label_agreement']:.3f}" if m.get("label_agreement") is not None else "-"
            pr = " | ".join(f"{m[k]:.3f}" if m.get(k) is not None else "-" for k in ("precision", "recall"))
            lines.append(f"| {m.get('nfe')} | {m.get('guidance') or 1:g} | {m['fid']:.1f} | {pr} | {agree} | "
                         f"{m.get('n', '')} |")
    lines += ["", "```python", "import consistency as cm",
              f'model = cm.load_model("{training.get("path", "this-folder")}")',
              f"images = cm.generate(model, 16, steps={config['default_steps'][0]}"
              + (f', sampler="{config["sampler"]}"' if config["sampler"] != "consistency" else "")
              + (f", guidance={config['default_guidance']:g}" if config.get("default_guidance") else "") + ")",
              "```", ""]
    return "\n".join(lines)


def is_hub_id(source: str) -> bool:
    """'owner/name' (a Hugging Face Hub repository) that is not a path on this machine."""
    text = str(source)
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", text) is not None and not Path(text).exists() \
        and not text.endswith((".pt", ".pth", ".safetensors"))


def download(repo_id: str) -> Path:
    """A hub repository's files in the local cache (the [hub] extra); offline, a message that says so."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f'loading {repo_id!r} from the Hugging Face Hub needs huggingface_hub: pip install '
                          '"consistency-models[hub]"') from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[WEIGHTS, CONFIG, CARD]))
    except Exception as exc:
        raise ValueError(f"{repo_id} could not be fetched from the Hugging Face Hub ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}): check the name and the connection, or give a local "
                         "folder or checkpoint") from None


def read_folder(folder: str | os.PathLike) -> Checkpoint:
    """A model folder as a Checkpoint (its weights as both 'ema' and 'model'; no optimizer, no history), checked:
    config.json must describe a library model, method and sampler; the weights are read with safetensors."""
    from .methods import METHODS
    from .sampling import SAMPLERS

    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise ValueError(f"{folder} holds no {CONFIG}: a model folder has config.json and model.safetensors "
                         "(written by save_pretrained or python -m consistency.cli.export)")
    try:
        config = json.loads((folder / CONFIG).read_text())
        spec, sampler = config["model"], config["sampler"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder / CONFIG} is not a consistency model config ({type(exc).__name__}: {exc})") from None
    problem = config_problem(config)
    if problem:
        raise ValueError(f"{folder / CONFIG} is damaged: {problem}")
    if config.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG} is not a consistency model config (format {config.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if spec.get("wrapper") not in LIBRARY_MODELS or not isinstance(spec.get("net"), dict):
        raise ValueError(f"{folder / CONFIG} names an unknown network {spec.get('wrapper')!r}: the library rebuilds "
                         f"{', '.join(LIBRARY_MODELS)} around a UNet")
    if config.get("method", {}).get("name") not in (*METHODS, None):
        raise ValueError(f"{folder / CONFIG} names an unknown method {config['method'].get('name')!r}: one of "
                         f"{', '.join(METHODS)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"{folder / CONFIG} names an unknown sampler {sampler!r}: one of {', '.join(SAMPLERS)}")
    if not (folder / WEIGHTS).is_file():
        raise ValueError(f"{folder} holds no {WEIGHTS}")
    try:
        state = load_safetensors(folder / WEIGHTS)
    except Exception as exc:
        raise ValueError(f"{folder / WEIGHTS} is damaged or not a safetensors file ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120]})") from None
    return Checkpoint(model=spec, method=config.get("method", {}), sampler=sampler,
                      weights={"model": state, "ema": state, "target": None, "method": None},
                      step=int(config.get("training", {}).get("step", 0)),
                      config={"data": config.get("training", {}).get("data_record", {}), "classes": config.get("classes", []),
                              "pretrained": config})


def config_problem(config: Any) -> str | None:
    """What is wrong with a folder's config.json (its types and values), or None."""
    import math

    if not isinstance(config, dict):
        return "it is not a JSON object"
    for key, kind in (("model", dict), ("method", dict), ("training", dict), ("classes", list), ("sampler", str),
                      ("default_steps", list)):
        if key in config and not isinstance(config[key], kind):
            return f"{key!r} is {config[key]!r}, not a {'JSON object' if kind is dict else kind.__name__}"
    classes, num_classes = config.get("classes", []), config["model"].get("num_classes")
    countable = isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes > 0
    if classes and countable and (len(classes) != num_classes or not all(isinstance(c, str) for c in classes)):
        return f"'classes' has {len(classes)} entries for a model of {num_classes} classes"
    steps = config.get("default_steps", [1])
    if not steps or not all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 1000 for k in steps):
        return f"'default_steps' is {steps!r}: expected whole numbers from 1 to 1000"
    w = config.get("default_guidance")
    if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0):
        return f"'default_guidance' is {w!r}: expected a finite number >= 0, or null"
    method = config.get("method", {})
    for key, zero in (("sigma_min", True), ("sigma_max", False), ("sigma_data", False), ("rho", False),
                      ("guidance_min", True), ("guidance_max", True)):  # sCM, ECT and MeanFlow have sigma_min = 0
        v = method.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v < 0 or (v == 0 and not zero)):
            return f"'method.{key}' is {v!r}: expected a finite number {'>=' if zero else '>'} 0"
    step = config.get("training", {}).get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'training.step' is {step!r}: expected a whole number >= 0"
    return None


def read_model(source: str | os.PathLike | Checkpoint) -> Checkpoint:
    """A trainer checkpoint, a model folder or a hub id, read as a Checkpoint (the one entry point for loading)."""
    if isinstance(source, Checkpoint):
        return source
    path = Path(source).expanduser()
    if path.is_dir() and ((path / WEIGHTS).is_file() or _format(path / CONFIG) == FORMAT):
        return read_folder(path)  # a model folder (or one that says what it lacks)
    bundled = BUNDLED / str(source).split("/", 1)[-1]
    if not path.exists() and str(source).startswith("pretrained/"):  # "pretrained/mnist": models in the package
        if not (bundled / CONFIG).is_file():
            have = sorted(p.name for p in BUNDLED.glob("*/") if (p / CONFIG).is_file()) if BUNDLED.is_dir() else []
            raise ValueError(f"{source}: no such model comes with this installation of consistency (it has: "
                             f"{', '.join(have) or 'none'})")
        return read_folder(bundled)
    if path.is_file() and path.name == WEIGHTS:
        raise ValueError(f"{path} is a model folder's weights alone: pass the folder that holds it and config.json "
                         f"({path.parent})")
    if not path.exists() and is_hub_id(str(source)):
        return read_folder(download(str(source)))
    return read_checkpoint(path)


def _format(config: Path) -> str | None:
    try:
        return json.loads(config.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def export(checkpoint: str | os.PathLike, folder: str | os.PathLike, *, weights: str = "ema",
           metrics: list[dict[str, Any]] | None = None, default_steps: tuple[int, ...] | None = None,
           default_guidance: float | None = None, **training: Any) -> Path:
    """A trainer checkpoint as a model folder (the sampling EMA by default)."""
    from .checkpoint import load_model

    ckpt = read_checkpoint(checkpoint)
    model = load_model(ckpt, weights)
    run = ckpt.config.get("run", {})
    data = ckpt.config.get("data", {})
    record = {"data": data.get("dataset"), "data_record": data, "step": ckpt.step,
              "budget": f"{ckpt.step:,} steps" + (f" ({run['minutes']:g} minutes)" if run.get("minutes") else ""),
              "parameters": sum(p.numel() for p in model.parameters()), **training}
    from .sampling import get_sampler

    return save_pretrained(model, folder, method=ckpt.method, sampler=ckpt.sampler, weights=weights,
                           default_steps=default_steps or get_sampler(ckpt.sampler).default_steps,
                           default_guidance=default_guidance, classes=data.get("classes", []), training=record,
                           metrics=metrics)


def save_trainer(trainer: Any, folder: str | os.PathLike, *, weights: str = "ema", **info: Any) -> Path:
    """A trainer's sampling EMA (or its online weights) as a model folder, with its method, sampler and data."""
    from .sampling import get_sampler

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    model = trainer.ema.module if weights == "ema" else trainer.model
    data = trainer.extra_config.get("data", {})
    training = {"data": data.get("dataset"), "data_record": data, "step": trainer.step_count,
                "budget": f"{trainer.step_count:,} steps", "parameters": sum(p.numel() for p in model.parameters()),
                **info.pop("training", {})}
    return save_pretrained(model, folder, method=trainer.method.config(), sampler=trainer.method.sampler,
                           weights=weights, default_steps=trainer.sample_steps or get_sampler(trainer.method.sampler)
                           .default_steps, classes=data.get("classes", []), training=training, **info)


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False) -> str:
    """Upload a model folder to the Hugging Face Hub (the [hub] extra; needs a token and a connection)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError('pushing to the Hugging Face Hub needs huggingface_hub: pip install '
                          '"consistency-models[hub]"') from None
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id).commit_url


def from_pretrained(cls: type, source: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a folder, a trainer checkpoint or a hub id (its sampling EMA), in eval mode, if it is a `cls`."""
    from .checkpoint import load_model

    model = load_model(source, device=device)
    if not isinstance(model, cls):
        raise ValueError(f"{source} holds a {type(model).__name__}, not a {cls.__name__}: use cm.load_model")
    return model
