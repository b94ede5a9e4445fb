"""A self-contained HTML report: key figures, tables and a gallery of images embedded as PNG data URIs.

One file, no external assets or scripts, so it opens in any browser and can be mailed or archived as is.
Tables are ``(title, header, rows)`` (or :class:`Table`), so callers add their own sections: localization
metrics, method comparisons, per-class figures.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from PIL import Image
from torch import Tensor

from .files import write_atomic
from .render import to_pil


@dataclass
class Table:
    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    note: str = ""


TableLike = Union[Table, Sequence]


@dataclass
class Example:
    """One gallery tile: an image, a caption line, detail lines, and whether it is a success (green) or a
    failure (red); ``ok=None`` draws it neutral."""

    image: Union[Tensor, Image.Image]
    caption: str
    lines: Sequence[str] = ()
    ok: bool | None = None


def png_data_uri(image: Tensor | Image.Image) -> str:
    """``data:image/png;base64,...`` for a (3, H, W) tensor in [0, 1] or a PIL image."""
    img = to_pil(image) if isinstance(image, Tensor) else image
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def as_table(table: TableLike) -> Table:
    if isinstance(table, Table):
        return table
    title, header, rows, *rest = table
    return Table(str(title), list(header), list(rows), str(rest[0]) if rest else "")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_html(table: TableLike) -> str:
    t = as_table(table)
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in t.rows)
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return (
        f"<section><h2>{html.escape(t.title)}</h2><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>{note}</section>"
    )


def confusion_html(confusion: Tensor, classes: Sequence[str], title: str = "Confusion matrix", note: str = "") -> str:
    """Rows: true class, columns: predicted class; the diagonal is highlighted, off-diagonal counts shaded by size."""
    counts = confusion.long().tolist()
    peak = max([c for i, row in enumerate(counts) for j, c in enumerate(row) if i != j] + [1])
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in classes) + "<th>recall</th>"
    rows = []
    for i, row in enumerate(counts):
        total = sum(row)
        cells = []
        for j, c in enumerate(row):
            if i == j:
                cells.append(f'<td class="diag">{c}</td>')
            elif c:
                cells.append(f'<td style="background: rgba(220, 50, 47, {0.15 + 0.6 * c / peak:.2f})">{c}</td>')
            else:
                cells.append('<td class="zero">0</td>')
        recall = f"{row[i] / total:.1%}" if total else "-"
        rows.append(f"<tr><th>{html.escape(classes[i])}</th>{''.join(cells)}<td>{recall}</td></tr>")
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (
        f'<section><h2>{html.escape(title)}</h2><table class="confusion"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{note_html}</section>"
    )


def _gallery(examples: Sequence[Example]) -> str:
    tiles = []
    for ex in examples:
        cls = {True: "ok", False: "bad", None: ""}[ex.ok]
        lines = "".join(f"<div>{html.escape(line)}</div>" for line in ex.lines)
        tiles.append(
            f'<figure class="{cls}"><img src="{png_data_uri(ex.image)}" alt="{html.escape(ex.caption)}">'
            f"<figcaption><b>{html.escape(ex.caption)}</b>{lines}</figcaption></figure>"
        )
    return f'<div class="gallery">{"".join(tiles)}</div>'


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; font-size: 1.2em; }
.intro { color: #555; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5em .9em; min-width: 9em; }
.card .v { font-size: 1.5em; font-weight: 600; } .card .k { color: #666; font-size: .85em; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f5f5f5; } td.diag { background: #c8ecc8; font-weight: 600; } td.zero { color: #bbb; }
.note { color: #666; font-size: .9em; max-width: 60em; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: .8em; }
figure { margin: 0; border: 2px solid #ddd; border-radius: 6px; padding: 4px; }
figure.ok { border-color: #4caf50; } figure.bad { border-color: #e53935; }
figure img { width: 100%; image-rendering: auto; display: block; }
figcaption { font-size: .85em; padding: .2em; } .legend { color: #555; font-size: .9em; }
"""


def write_report(
    path: str | Path,
    *,
    title: str,
    intro: str = "",
    figures: Sequence[tuple[str, str]] = (),
    examples: Sequence[Example] = (),
    examples_title: str = "Examples",
    legend: str = "",
    tables: Sequence[TableLike] = (),
    confusion: tuple[Tensor, Sequence[str]] | None = None,
    confusion_note: str = "",
    galleries: Sequence[tuple[str, str, Sequence[Example]]] = (),
    trailer: Sequence[TableLike] = (),
) -> Path:
    """Write the report: a title and intro, key ``figures`` as (label, value) cards, the gallery, the confusion
    matrix (rows: true class, columns: predicted) with ``confusion_note``, then every table in order, then more
    ``galleries`` as (title, legend, examples) and the ``trailer`` tables after them.  Returns the path."""
    cards = "".join(
        f'<div class="card"><div class="v">{html.escape(v)}</div><div class="k">{html.escape(k)}</div></div>'
        for k, v in figures
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="intro">{html.escape(intro)}</p>' if intro else "",
        f'<div class="cards">{cards}</div>' if cards else "",
    ]
    if examples:
        parts.append(f"<section><h2>{html.escape(examples_title)}</h2>")
        if legend:
            parts.append(f'<p class="legend">{html.escape(legend)}</p>')
        parts.append(_gallery(examples) + "</section>")
    if confusion is not None:
        parts.append(confusion_html(*confusion, note=confusion_note))
    parts.extend(table_html(t) for t in tables)
    for gallery_title, gallery_legend, gallery in galleries:
        parts.append(f"<section><h2>{html.escape(gallery_title)}</h2>")
        if gallery_legend:
            parts.append(f'<p class="legend">{html.escape(gallery_legend)}</p>')
        parts.append(_gallery(gallery) + "</section>")
    parts.extend(table_html(t) for t in trailer)
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "\n".join(p for p in parts if p))
    return path
