"""What a wheel of vitzoo contains, and how the kernels import in the editable install.

The design card puts the kernels in a top-level ``kernels/`` folder that installs as
``vitzoo.kernels``; no top-level ``kernels`` module may be installed (another PyPI package owns
that name). pyproject lists the packages explicitly, so a new ``vitzoo/<pkg>/__init__.py`` that
is missing from that list (or package data missing from ``package-data``) fails here.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SKIP = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__",
                               ".pytest_cache", "benchmarks", "data", "output", "runs", "*.pth",
                               "*.safetensors")


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set:
    """Build a wheel from a copy of the working tree (no build/ left in the checkout)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp / "out"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (whl,) = list((tmp / "out").glob("vitzoo-*.whl"))
    with zipfile.ZipFile(whl) as zf:
        names = set(zf.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        pytest.wheel_metadata = zf.read(meta).decode()  # read by the metadata test
        return names


def _package_dirs() -> list:
    """Every folder under vitzoo/ (and kernels/) that is a package, as its wheel path."""
    dirs = [(d, d.relative_to(ROOT).as_posix()) for d in (ROOT / "vitzoo").rglob("*")
            if d.is_dir() and (d / "__init__.py").is_file() and "__pycache__" not in d.parts]
    return [(ROOT / "vitzoo", "vitzoo"), (ROOT / "kernels", "vitzoo/kernels")] + dirs


def test_wheel_has_the_kernels_under_vitzoo_and_no_top_level_kernels(wheel_names):
    assert "vitzoo/kernels/__init__.py" in wheel_names
    assert "vitzoo/kernels/neighborhood.py" in wheel_names
    assert not [n for n in wheel_names if n.startswith("kernels/")]
    tops = {n.split("/", 1)[0] for n in wheel_names if not n.split("/", 1)[0].endswith(
        (".dist-info", ".data"))}
    assert tops == {"vitzoo"}


def test_wheel_has_every_package_module_and_data_file(wheel_names):
    missing = []
    for folder, wheel_dir in _package_dirs():
        for f in folder.iterdir():
            if f.is_file() and f.suffix not in (".pyc", ".pyo") and not f.name.startswith("."):
                if f"{wheel_dir}/{f.name}" not in wheel_names:
                    missing.append(f"{wheel_dir}/{f.name}")
    assert not missing, (
        f"not in the wheel: {missing}. Add the package to [tool.setuptools] packages (and data "
        "files to [tool.setuptools.package-data]) in pyproject.toml")


def test_wheel_metadata_says_apache_2(wheel_names):
    meta = pytest.wheel_metadata
    assert "Name: vitzoo" in meta and "License-Expression: Apache-2.0" in meta
    if (ROOT / "LICENSE").is_file():
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names)


def test_editable_install_resolves_vitzoo_kernels_and_not_a_top_level_kernels(tmp_path):
    code = ("import importlib.util, vitzoo.kernels as k; print(k.__file__); "
            "s = importlib.util.find_spec('kernels'); print(s.origin if s else None)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)  # cwd outside the checkout: no '' shortcut
    assert res.returncode == 0, res.stderr[-3000:]
    vk_file, top = res.stdout.strip().splitlines()[-2:]
    assert Path(vk_file).resolve() == (ROOT / "kernels" / "__init__.py").resolve()
    if top != "None":  # some other `kernels` may be installed; it must not be ours
        assert Path(top).resolve().parent != (ROOT / "kernels").resolve()
