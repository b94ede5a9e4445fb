"""mkdocs hook: benchmark pages show the JSON files the benchmarks write, never hand-copied figures.

A page writes ``<!-- benchmark: NAME -->`` on a line of its own; the hook replaces it with the title, the table, the
command and the machine of ``benchmarks/results/NAME.json`` (schema: ``title``, ``command``, ``machine``,
``columns``, ``rows``, ``notes``; ``benchmarks/common.py``'s ``write_result`` writes it).  A marker naming a missing
or malformed file, and a results file that no page shows, are errors, so ``mkdocs build --strict`` fails on both.
``<!-- benchmark: NAME if-measured -->`` is for figures only some machines can make (a GPU): while the file is
absent the page says it has not been measured, instead of failing.

The README shows a few of the same tables, compact, between ``<!-- figures: NAME -->`` and ``<!-- /figures -->``:
``python docs/hooks.py`` rewrites those blocks from the results files, and ``tests/test_docs.py`` fails when a block
differs from its file, so the README's figures cannot drift from what the benchmarks wrote.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.benchmarks")

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- benchmark: ([A-Za-z0-9_.-]+)( if-measured)? -->$", re.M)
README = RESULTS.parents[1] / "README.md"
FIGURES = re.compile(r"^(<!-- figures: ([A-Za-z0-9_.-]+) -->\n).*?^(<!-- /figures -->)$", re.S | re.M)
KEYS = ("title", "command", "machine", "columns", "rows", "notes")

_shown: set[str] = set()


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _load(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no benchmark results {path}; run the benchmark that writes it or fix the marker")
    result = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in KEYS if key not in result]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    for row in result["rows"]:
        if len(row) != len(result["columns"]):
            raise ValueError(f"{path}: row {row} has {len(row)} cells for {len(result['columns'])} columns")
    return result


def _table(result: dict[str, Any]) -> list[str]:
    columns = result["columns"]
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in result["rows"]]


def render(name: str) -> str:
    """The Markdown of one results file: a heading with its title, the table, then command, machine and notes.

    Args:
        name: the file's stem under ``benchmarks/results``.

    Returns:
        Markdown text.

    Raises:
        ValueError: when the file is missing, is not JSON, or lacks a key of the schema or a row has the wrong width.
    """
    result = _load(name)
    lines = [f"### {result['title']}", "", *_table(result)]
    machine = ", ".join(
        f"{key}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for key, v in result["machine"].items()
    )
    lines += ["", "Command:", "", "```bash", result["command"], "```", "", f"Machine: {machine}."]
    if result["notes"]:
        lines += ["", result["notes"]]
    return "\n".join(lines) + "\n"


def readme_block(name: str) -> str:
    """The README's compact form of one results file: its title in bold, the table, the command and the CPU.

    Args:
        name: the file's stem under ``benchmarks/results``.

    Returns:
        Markdown text, ending in a newline.
    """
    result = _load(name)
    described = result["machine"]
    where = str(described.get("cpu", "?"))
    if described.get("cores") and "cores" not in where:
        where += f", {described['cores']} cores"
    load = next((v for key, v in described.items() if key.startswith("load")), None)
    if load:
        where += f", 1-min load average {' / '.join(map(str, load)) if isinstance(load, list) else load}"
    return "\n".join([f"**{result['title']}**", "", *_table(result), "", f"`{result['command']}` on {where}."]) + "\n"


def readme_with_figures(text: str) -> str:
    """``text`` with every ``<!-- figures: NAME -->`` block replaced by :func:`readme_block` of ``NAME``."""
    return FIGURES.sub(lambda m: m.group(1) + readme_block(m.group(2)) + m.group(3), text)


def on_pre_build(config: Any) -> None:
    _shown.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if match.group(2) and not (RESULTS / f"{name}.json").exists():
            return f"*Not measured yet: no run has written `benchmarks/results/{name}.json`.*\n"
        try:
            text = render(name)
        except (ValueError, json.JSONDecodeError) as exc:
            log.error(f"{page.file.src_uri}: {exc}")
            return f"*benchmark {name}: {exc}*\n"
        _shown.add(name)
        return text

    return MARKER.sub(replace, markdown)


def on_post_build(config: Any) -> None:
    unshown = sorted(path.stem for path in RESULTS.glob("*.json") if path.stem not in _shown)
    if unshown:
        log.warning(
            f"benchmarks/results has files no page shows: {', '.join(unshown)}; "
            f"add <!-- benchmark: NAME --> to a page under docs/benchmarks/"
        )


if __name__ == "__main__":
    README.write_text(readme_with_figures(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"rewrote the figures of {README}")
