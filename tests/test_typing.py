"""The package type-checks: mypy on src/camlens with the configuration in pyproject.toml ([tool.mypy]).

The cache lives in build/mypy-cache: a first run analyses torch's annotations too (about 25 s of CPU), later runs
only what changed (a few seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_type_checks_with_mypy():
    pytest.importorskip("mypy", reason="mypy comes with the test extra: pip install -e '.[test]'")
    assert (ROOT / "src" / "camlens" / "py.typed").is_file(), "the py.typed marker that pyproject.toml ships"
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"mypy found type errors:\n{proc.stdout}{proc.stderr}"
