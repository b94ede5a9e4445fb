"""The tree is lint-clean and formatted: ruff with the rules of pyproject.toml ([tool.ruff.lint], [tool.ruff.format]) on the package, the tests and
the benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_finds_nothing_in_src_tests_and_benchmarks():
    pytest.importorskip("ruff", reason="ruff comes with the test extra: pip install -e '.[test]'")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"ruff check found problems (fix them, or `ruff check --fix`):\n{proc.stdout}{proc.stderr}"
    )


def test_ruff_format_leaves_the_tree_unchanged():
    pytest.importorskip("ruff", reason="ruff comes with the test extra: pip install -e '.[test]'")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "src", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"files not in ruff's format (run `ruff format src tests benchmarks`):\n{proc.stdout}"
