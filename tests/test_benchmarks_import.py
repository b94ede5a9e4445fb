"""Every benchmark script imports: a rename in the package must not break them unnoticed (they run outside the
suite, for minutes)."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_every_benchmark_script_imports():
    scripts = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "common")
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    proc = subprocess.run([sys.executable, "-c", code, *scripts], cwd=BENCHMARKS, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(scripts) >= 10
