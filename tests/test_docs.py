"""The documentation is checked like code: the site builds strictly and offline, and every ```python block of the
README and of the docs pages runs as written.

A page's blocks run in order in one namespace, so its later blocks may use what its earlier ones defined, with an
empty temporary folder as working directory.  All pages run in one subprocess (a fresh interpreter, so nothing of
the test session leaks in; one interpreter, so torch is imported once), each page in its own namespace and folder.
A block that cannot run here is preceded by the line ``<!-- not run: REASON -->``; the reason is required.  After a
page has run, the checks of ``CHECKS`` test what its examples promise (files written, output printed).
"""

from __future__ import annotations

import importlib.util
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
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("reason"), m.group("code")) for m in BLOCK.finditer(text)
    ]


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "reference" not in p.parts)]


PAGES = [page for page in pages() if any(reason is None for _, reason, _ in python_blocks(page))]


RUNNER = """
import contextlib, io, json, os, sys, traceback
pages, results = json.loads(sys.stdin.read()), {}
for name, folder, blocks in pages:
    os.chdir(folder)
    out, scope = io.StringIO(), {"__name__": "__main__"}
    try:
        with contextlib.redirect_stdout(out):
            for line, code in blocks:
                # pad with newlines so a traceback names the line of the Markdown file
                exec(compile("\\n" * (line - 1) + code, name, "exec"), scope)
        results[name] = {"stdout": out.getvalue(), "error": None}
    except BaseException:
        results[name] = {"stdout": out.getvalue(), "error": traceback.format_exc()[-4000:]}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Run every page's blocks once: page name -> (its working folder, {"stdout", "error"})."""
    folders, job = {}, []
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        folders[name] = tmp_path_factory.mktemp(page.stem)
        for line, reason, _ in python_blocks(page):
            assert reason is None or reason.strip(), f"{name}:{line}: a block marked not run must say why"
        job.append(
            (name, str(folders[name]), [(line, code) for line, reason, code in python_blocks(page) if reason is None])
        )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
    }
    run = subprocess.run(
        [sys.executable, "-c", RUNNER], env=env, capture_output=True, text=True, input=json.dumps(job), timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    return {name: (folders[name], result) for name, result in results.items()}


def _cat_photo_overlay(cwd: Path, out: str) -> None:
    assert "Egyptian cat" in out
    with Image.open(cwd / "cat_cam.png") as overlay:
        assert overlay.size == (451, 300)  # the photo's own size
    assert (cwd / "cat_figure.png").stat().st_size > 0


def _explain_a_photo(cwd: Path, out: str) -> None:
    assert "Explanation(cam, image 300x451, maps 7x7 at 'bn2': Egyptian cat" in out and "64 masked passes done" in out
    assert "tabby: " in out and "blocks.5 (1, 2, 7, 7)" in out
    with Image.open(cwd / "chelsea-cam.png") as overlay:
        assert overlay.size == (451, 300)
    assert (cwd / "chelsea-figure.png").stat().st_size > 0 and (cwd / "chelsea-meta" / "localization.txt").is_file()


def _signal_volume_figures(cwd: Path, out: str) -> None:
    assert (cwd / "signal.png").stat().st_size > 0 and (cwd / "volume.png").stat().st_size > 0


CHECKS: dict[str, Callable[[Path, str], None]] = {
    "README.md": _cat_photo_overlay,
    "docs/getting-started.md": _cat_photo_overlay,
    "docs/howto/ndim.md": _signal_volume_figures,
    "docs/tutorials/explain-a-photo.md": _explain_a_photo,
}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run_as_written(page: Path, page_runs: dict[str, tuple[Path, dict]]) -> None:
    name = str(page.relative_to(ROOT))
    folder, result = page_runs[name]
    assert result["error"] is None, f"{name}: a code block failed\n{result['error']}"
    if name in CHECKS:
        CHECKS[name](folder, result["stdout"])


def test_block_parser_reads_skips_and_lines(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "# t\n\n```python\na = 1\n```\n\n<!-- not run: needs a GPU -->\n```python\nb = 2\n```\n```bash\nc\n```\n"
    )
    assert python_blocks(page) == [(4, None, "a = 1\n"), (9, "needs a GPU", "b = 2\n")]


def test_runner_reports_a_failing_block_with_its_markdown_line(tmp_path: Path) -> None:
    job = [("p.md", str(tmp_path), [(3, "x = 1\nprint(x)\n"), (9, "y = x / 0\n")])]
    run = subprocess.run([sys.executable, "-c", RUNNER], capture_output=True, text=True, input=json.dumps(job))
    result = json.loads(run.stdout.strip().splitlines()[-1])["p.md"]
    assert result["stdout"] == "1\n"
    assert 'File "p.md", line 9' in result["error"] and "ZeroDivisionError" in result["error"]


def test_site_builds_strictly_offline(tmp_path: Path) -> None:
    """mkdocs build --strict: broken links, missing references, API docstrings that do not parse, benchmark
    results that are missing or that no page shows all fail the build.  No network is needed: no plugin fetches
    anything and the theme's fonts are off (``theme.font: false``)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "methods" / "index.html").read_text(encoding="utf-8")
    assert 'id="camlens.methods.GradCAM"' in reference  # the API reference was generated from the docstrings
    benchmarks = (tmp_path / "site" / "benchmarks" / "training" / "index.html").read_text(encoding="utf-8")
    assert "<td>cam-001: 72.7, lr 0.0021</td>" in benchmarks  # a cell of benchmarks/results/wsol_search_builtin.json


def test_readme_figures_equal_the_results_files() -> None:
    """The README's tables are the benchmarks' JSON files, rendered: a hand edit or a re-run benchmark whose README
    block was not regenerated (``python docs/hooks.py``) fails here."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = hooks.FIGURES.findall(readme)
    assert {"cam_resnet50_cpu", "vit"} <= {name for _, name, _ in blocks}
    assert hooks.readme_with_figures(readme) == readme, (
        "README figures differ from benchmarks/results: run python docs/hooks.py"
    )


def test_readme_figures_block_is_replaced_from_its_file(tmp_path, monkeypatch) -> None:
    hooks = _hooks(tmp_path, monkeypatch)
    result = {
        "title": "T",
        "command": "python b.py",
        "machine": {"cpu": "X", "cores": 2, "load_average_1min": [1.5, 2.0]},
    }
    (tmp_path / "t.json").write_text(json.dumps({**result, "columns": ["a"], "rows": [[1]], "notes": ""}))
    text = "intro\n<!-- figures: t -->\nstale | 9 |\n<!-- /figures -->\nend\n"
    assert hooks.readme_with_figures(text) == (
        "intro\n<!-- figures: t -->\n**T**\n\n| a |\n|---|\n| 1 |\n\n"
        "`python b.py` on X, 2 cores, 1-min load average 1.5 / 2.0.\n<!-- /figures -->\nend\n"
    )


def _hooks(results: Path, monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    monkeypatch.setattr(hooks, "RESULTS", results)
    return hooks


def test_benchmark_hook_renders_a_results_file_and_rejects_a_malformed_one(tmp_path, monkeypatch) -> None:
    hooks = _hooks(tmp_path, monkeypatch)
    machine = {"cpu": "X", "cores": 2, "flags": ["avx2", "avx512f"]}
    result = {
        "title": "CAM speed",
        "command": "python benchmarks/bench_cam.py",
        "machine": machine,
        "columns": ["what", "ratio"],
        "rows": [["camlens.CAM", 1.0], ["a|b", None]],
        "notes": "medians",
    }
    (tmp_path / "cam.json").write_text(json.dumps(result))
    text = hooks.render("cam")
    assert "### CAM speed\n\n| what | ratio |\n|---|---|\n| camlens.CAM | 1.0 |\n| a\\|b | - |\n" in text
    assert "python benchmarks/bench_cam.py" in text and "Machine: cpu: X, cores: 2, flags: avx2, avx512f." in text
    (tmp_path / "short.json").write_text(json.dumps({**result, "rows": [["only one cell"]]}))
    (tmp_path / "partial.json").write_text(json.dumps({"title": "t", "rows": []}))
    for name, message in (
        ("short", "has 1 cells for 2 columns"),
        ("partial", "lacks command, machine, columns, notes"),
        ("missing", "no benchmark results"),
    ):
        with pytest.raises(ValueError, match=message):
            hooks.render(name)


def test_an_if_measured_marker_says_not_measured_until_its_file_exists(tmp_path, monkeypatch) -> None:
    """A GPU table's marker: the page says the figures are missing instead of failing, and shows them once a
    benchmark has written the file; a plain marker naming a missing file is still an error."""
    hooks = _hooks(tmp_path, monkeypatch)
    page = type("Page", (), {"file": type("File", (), {"src_uri": "benchmarks/gpu.md"})()})()
    markdown = "<!-- benchmark: gpu_table if-measured -->\n"
    assert hooks.on_page_markdown(markdown, page, None, None) == (
        "*Not measured yet: no run has written `benchmarks/results/gpu_table.json`.*\n\n"
    )
    result = {"title": "on a GPU", "command": "benchmarks/gpu.sh", "machine": {"gpu": "G"}, "notes": ""}
    (tmp_path / "gpu_table.json").write_text(json.dumps({**result, "columns": ["what"], "rows": [["cam"]]}))
    assert "### on a GPU\n\n| what |\n|---|\n| cam |\n" in hooks.on_page_markdown(markdown, page, None, None)
    assert "no benchmark results" in hooks.on_page_markdown("<!-- benchmark: absent -->\n", page, None, None)


def test_every_results_file_names_a_benchmark_that_writes_it() -> None:
    """No figure is hand-made: each results file's command or notes names a script under benchmarks/ that writes
    its results through ``write_result`` (the tables of a GPU run come from gpu.sh's scripts the same way)."""
    benchmarks = DOCS.parent / "benchmarks"
    for path in sorted((benchmarks / "results").glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        scripts = set(re.findall(r"benchmarks/(\w+\.py)", result["command"] + " " + result["notes"]))
        assert scripts, f"{path.name} names no benchmark script"
        for script in scripts:
            source = benchmarks / script
            assert source.is_file() and "write_result(" in source.read_text(), f"{path.name}: {script}"
