"""Small helpers every layer may use: seeded noise that does not depend on the device, a module's device, the CPU's
bf16 support, RNG states, and whether an output path can be written."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

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
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where bf16 autocast trains about twice as fast
    as fp32. oneDNN also "supports" bf16 on plain AVX-512 by emulation, where it is slower than fp32 (a 2048^3 matmul
    ran at 0.06 TFLOP/s in bf16 against 0.26 in fp32 on an AVX-512 Xeon without BF16): that does not count."""
    native = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(check) for check in native):
        return any(check() for check in native)
    try:  # an older torch: the CPU's own flags (Linux), else oneDNN's claim
        flags = Path("/proc/cpuinfo").read_text().split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
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


def cache_folder(data_root: str | os.PathLike, override: str | os.PathLike | None = None,
                 name: str = ".consistency-cache") -> Path:
    """Where files derived from a data set are cached: `override` if given, else DATA_ROOT/NAME, or, when the data
    folder cannot be written, a folder for it in the user's cache ($XDG_CACHE_HOME or ~/.cache)."""
    if override is not None:
        folder = Path(override).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    root = Path(data_root).expanduser().resolve()
    folder = root / name
    try:
        folder.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
        return folder
    except OSError:
        import hashlib

        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "consistency" / f"{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def temporary_path(path: str | os.PathLike) -> Path:
    """Where atomic_write writes before renaming: a hidden file beside `path`, named by the process, with its suffix."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], what: str = "file") -> Path:
    """write(tmp) a temporary file beside `path`, then rename it onto `path`: a crash never leaves a half-written file,
    and a failed write (a full disk, a permission) keeps the previous file and raises an OSError naming both."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        umask = os.umask(0)  # the mode a plain open() would give (some writers, e.g. safetensors', create 0600)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch's writer reports a full disk as a RuntimeError
        full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or _free_bytes(path) < 2**26
        kept = f"the previous {what} there is intact" if path.exists() else "nothing was written"
        raise OSError(f"could not write {path} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                      f"{'; the disk is full' if full else ''}: {kept}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return 2**62
