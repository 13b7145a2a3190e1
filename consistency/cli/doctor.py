"""What this installation can do, in one command: `python -m consistency.doctor [--data-root DIR]`.

Versions (Python, torch, torchvision, consistency) and whether torchvision works with this torch; the devices (CUDA
GPUs, bf16 on them and on the CPU); where MNIST is found; whether ./runs can be written; the optional extras. Exit
status 0 when training can run, 1 when something it needs is missing (each such line says what to do).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import tempfile
from pathlib import Path

from .args import Parser

EXTRAS = {"tensorboard": "tb", "torch_fidelity": "fid", "huggingface_hub": "hub", "safetensors": "hub",
          "wandb": "wandb"}


def torchvision_problem() -> str | None:
    """None when torchvision imports and runs beside this torch, else what is wrong and the fix."""
    import torch

    try:
        import torchvision
        from torchvision.utils import make_grid

        make_grid(torch.zeros(1, 1, 2, 2))
    except Exception as exc:  # a mismatched pair fails at import ('operator torchvision::nms does not exist')
        version = getattr(sys.modules.get("torchvision"), "__version__", "?")
        return (f"torchvision {version} does not work with torch {torch.__version__} ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:120]}): install a matching pair, e.g. pip install "
                f"'torch=={torch.__version__.split('+')[0]}' torchvision (pip picks the torchvision built for it)")
    del torchvision
    return None


def check(data_root: str | None) -> list[tuple[str, str, bool]]:
    """(what, finding, fatal problem?) rows."""
    import torch

    import consistency

    from ..data import MNIST_FILES, _find_idx
    from ..utils import cpu_has_fast_bf16

    rows = [("python", f"{platform.python_version()} ({sys.executable})", False),
            ("consistency", f"{consistency.__version__} ({Path(consistency.__file__).parent})", False),
            ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})", False)]
    problem = torchvision_problem()
    rows.append(("torchvision", problem or f"{importlib.import_module('torchvision').__version__}, works with this "
                 "torch", problem is not None))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, bf16 "
                         f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}", False))
    else:
        rows.append(("GPU", "none: training runs on the CPU (main.py picks its CPU preset)", False))
    rows.append(("CPU", f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, native bf16 "
                 f"{'yes: the CPU presets train in bf16' if cpu_has_fast_bf16() else 'no: the CPU presets use fp32'}",
                 False))
    roots = [Path(data_root)] if data_root else [Path("data"), Path("../shared/data/mnist")]
    found = None
    for root in roots:
        for folder in (root, root / "MNIST" / "raw", root / "raw"):
            if all(_find_idx(folder, name) for name in MNIST_FILES.values()):
                found = folder
                break
        if found:
            break
    rows.append(("MNIST", f"found in {found}" if found else
                 f"not found in {', '.join(map(str, roots))}: main.py will try to download it (or pass --data-root "
                 "DIR with the four idx files)", bool(data_root) and not found))
    try:  # probed without leaving anything behind
        with tempfile.NamedTemporaryFile(dir="runs" if Path("runs").is_dir() else "."):
            pass
        rows.append(("./runs", "writable", False))
    except OSError as exc:
        rows.append(("./runs", f"cannot be written ({exc.strerror or exc}): pass --out elsewhere", False))
    for module, extra in EXTRAS.items():
        try:
            importlib.import_module(module)
            rows.append((f"extra [{extra}]", f"{module} installed", False))
        except ImportError:
            rows.append((f"extra [{extra}]", f'{module} not installed (pip install "consistency-models[{extra}]")',
                         False))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m consistency.doctor", description=__doc__)
    parser.add_argument("--data-root", help="where you keep MNIST (default: ./data and ../shared/data/mnist)")
    args = parser.parse_args(argv)
    rows = check(args.data_root)
    width = max(len(what) for what, _, _ in rows)
    for what, finding, fatal in rows:
        print(f"{what:<{width}}  {'PROBLEM: ' if fatal else ''}{finding}")
    return 1 if any(fatal for _, _, fatal in rows) else 0
