"""The documentation is checked like code: the site builds strictly and offline, and every ```python block of the
README and of the docs pages runs as written.

Blocks run in order, one subprocess per page (a fresh interpreter, its working directory an empty temporary
folder), so a page's later blocks may use what its earlier ones defined.  A block that cannot run here is preceded
by the line ``<!-- not run: REASON -->``; the reason is required.  After a page has run, the checks of
``CHECKS`` test what its examples promise (files written, output printed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^(?:<!-- not run: (?P<reason>.*?) -->\n)?```python[^\n]*\n(?P<code>.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[tuple[int, str | None, str]]:
    """The ```python blocks of a Markdown file: (line of the block's first code line, skip reason or None, code)."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("reason"), m.group("code"))
            for m in BLOCK.finditer(text)]


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "reference" not in p.parts)]


def _has_blocks(path: Path) -> bool:
    return any(reason is None for _, reason, _ in python_blocks(path))


RUNNER = """
import json, sys
name, blocks = sys.argv[1], json.loads(sys.stdin.read())
scope = {"__name__": "__main__"}
for line, code in blocks:
    # pad with newlines so a traceback names the line of the Markdown file
    exec(compile("\\n" * (line - 1) + code, name, "exec"), scope)
"""


def _cat_photo_overlay(cwd: Path, out: str) -> None:
    assert "Egyptian cat" in out
    with Image.open(cwd / "cat_cam.png") as overlay:
        assert overlay.size == (451, 300)  # the photo's own size
    assert (cwd / "cat_figure.png").stat().st_size > 0


def _signal_volume_figures(cwd: Path, out: str) -> None:
    assert (cwd / "signal.png").stat().st_size > 0 and (cwd / "volume.png").stat().st_size > 0


CHECKS: dict[str, Callable[[Path, str], None]] = {
    "README.md": _cat_photo_overlay,
    "docs/getting-started.md": _cat_photo_overlay,
    "docs/howto/ndim.md": _signal_volume_figures,
}


@pytest.mark.parametrize("page", [p for p in pages() if _has_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run_as_written(page: Path, tmp_path: Path) -> None:
    name = str(page.relative_to(ROOT))
    blocks = python_blocks(page)
    for line, reason, _ in blocks:
        assert reason is None or reason.strip(), f"{name}:{line}: a block marked not run must say why"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, "-c", RUNNER, name], cwd=tmp_path, env=env, capture_output=True, text=True,
                         input=json.dumps([(line, code) for line, reason, code in blocks if reason is None]),
                         timeout=300)
    assert run.returncode == 0, f"{name}: a code block failed\n{run.stderr[-4000:]}"
    if name in CHECKS:
        CHECKS[name](tmp_path, run.stdout)


def test_block_parser_reads_skips_and_lines(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# t\n\n```python\na = 1\n```\n\n<!-- not run: needs a GPU -->\n```python\nb = 2\n```\n"
                    "```bash\nc\n```\n")
    assert python_blocks(page) == [(4, None, "a = 1\n"), (9, "needs a GPU", "b = 2\n")]


def test_site_builds_strictly_offline(tmp_path: Path) -> None:
    """mkdocs build --strict: broken links, missing references, API docstrings that do not parse, benchmark
    results that are missing or that no page shows all fail the build.  No network is needed: no plugin fetches
    anything and the theme's fonts are off (``theme.font: false``)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "methods" / "index.html").read_text(encoding="utf-8")
    assert 'id="camlens.methods.GradCAM"' in reference  # the API reference was generated from the docstrings
    benchmarks = (tmp_path / "site" / "benchmarks" / "training" / "index.html").read_text(encoding="utf-8")
    assert "MaxBoxAccV2" in benchmarks and "camlens train --trials 3" in benchmarks  # a results file, rendered
