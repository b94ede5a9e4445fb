"""`make wheel` builds an installable wheel holding the package, its web page and its type marker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_the_package_the_web_page_py_typed_and_the_command(tmp_path):
    pytest.importorskip("setuptools", reason="building offline needs setuptools in this environment")
    source = tmp_path / "src-copy"  # built from a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # what `make wheel` runs, without build isolation so the test needs no network
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        cwd=source,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("camlens-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(info).decode()
        metadata = archive.read(info.replace("entry_points.txt", "METADATA")).decode()
    expected = {
        f"camlens/{p.relative_to(ROOT / 'src' / 'camlens').as_posix()}"
        for p in (ROOT / "src" / "camlens").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert expected <= names, sorted(expected - names)
    assert {"camlens/py.typed", "camlens/web/static/app.js", "camlens/web/static/index.html"} <= names
    assert "camlens = camlens.cli:main" in entry_points
    assert "Provides-Extra: real" in metadata and "Provides-Extra: web" in metadata
    assert not [n for n in names if n.startswith("tests/") or n.endswith(".pyc")]
