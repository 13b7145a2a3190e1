"""The installed package is the whole package: a plain (non-editable) `pip install git+...` ships every subpackage."""

from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_in_the_distribution():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = setuptools.get("packages")
    include = setuptools.get("packages", {}).get("find", {}).get("include", []) if isinstance(listed, dict) else []
    packages = [".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "consistency").rglob("__init__.py")]
    assert "consistency.methods" in packages and "consistency.cli" in packages
    for package in packages:
        shipped = package in (listed if isinstance(listed, list) else []) or any(fnmatch(package, p) for p in include)
        assert shipped, f"{package} would be left out of a wheel: pyproject.toml's [tool.setuptools] must include it"
