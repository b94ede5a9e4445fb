"""mkdocs hook: benchmark pages show the JSON files the benchmarks write, never hand-copied figures.

A page writes ``<!-- benchmark: NAME -->`` on a line of its own; the hook replaces it with the title, the table, the
command and the machine of ``benchmarks/results/NAME.json`` (schema: ``title``, ``command``, ``machine``,
``columns``, ``rows``, ``notes``; ``benchmarks/common.py``'s ``write_result`` writes it).  A marker naming a missing
or malformed file, and a results file that no page shows, are errors, so ``mkdocs build --strict`` fails on both.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.benchmarks")

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- benchmark: ([A-Za-z0-9_.-]+) -->$", re.M)
KEYS = ("title", "command", "machine", "columns", "rows", "notes")

_shown: set[str] = set()


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render(name: str) -> str:
    """The Markdown of one results file: a heading with its title, the table, then command, machine and notes.

    Args:
        name: the file's stem under ``benchmarks/results``.

    Returns:
        Markdown text.

    Raises:
        ValueError: when the file is missing, is not JSON, or lacks a key of the schema or a row has the wrong width.
    """
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no benchmark results {path}; run the benchmark that writes it or fix the marker")
    result = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in KEYS if key not in result]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    columns = result["columns"]
    lines = [
        f"### {result['title']}",
        "",
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in result["rows"]:
        if len(row) != len(columns):
            raise ValueError(f"{path}: row {row} has {len(row)} cells for {len(columns)} columns")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    machine = ", ".join(
        f"{key}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for key, v in result["machine"].items()
    )
    lines += ["", "Command:", "", "```bash", result["command"], "```", "", f"Machine: {machine}."]
    if result["notes"]:
        lines += ["", result["notes"]]
    return "\n".join(lines) + "\n"


def on_pre_build(config: Any) -> None:
    _shown.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
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
