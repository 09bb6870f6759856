"""Rendering of the report (reporting.report): tables as CSV / markdown / HTML, one self-contained page.

The page embeds every figure as a base64 `data:image/png` URI and its CSS inline: no external asset, so
`index.html` can be mailed or opened from anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FAILED_NOTE = "† = some judge items of this cell failed and are left out (hover for n_failed)."


@dataclass
class Cell:
    """A table cell: `text` shown, `title` as a tooltip in HTML (e.g. the failed-item count)."""

    text: str
    title: str = ""


@dataclass
class Table:
    """A displayed table (`header`, `rows` of str/Cell) and its raw values (`csv_rows`, written to CSV)."""

    name: str
    title: str
    header: list[str]
    rows: list[list[Any]]
    csv_rows: list[dict[str, Any]]
    note: str = ""
    collapsed: bool = False  # HTML: inside a closed <details> (long tables)


@dataclass
class Section:
    anchor: str
    title: str
    text: list[str] = field(default_factory=list)
    figure: tuple[str, bytes] | None = None  # (file name, PNG bytes)
    tables: list[Table] = field(default_factory=list)
    greyed: bool = False  # figures of an untrusted judge (no passing calibration card): shown greyed


def _text(c: Any) -> str:
    return c.text if isinstance(c, Cell) else str(c)


def csv_text(table: Table) -> str:
    """The raw rows of a table as CSV (columns in first-seen order; None as empty)."""
    columns: list[str] = []
    for r in table.csv_rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in table.csv_rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def markdown_table(table: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(esc(h) for h in table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    lines += ["| " + " | ".join(esc(_text(c)) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def markdown_report(
    title: str, banner: str, header: Sequence[tuple[str, str]], sections: Sequence[Section]
) -> str:
    out = [f"# {title}", ""]
    if banner:
        out += [f"> **{banner}**", ""]
    out += [f"- **{k}**: {v}" for k, v in header] + [""]
    for s in sections:
        out += [f"## {s.title}", ""] + (["_(greyed: untrusted judge, not a result)_", ""] if s.greyed else [])
        out += [p + "\n" for p in s.text]
        if s.figure:
            out += [f"![{s.title}]({s.figure[0]})", ""]
        for t in s.tables:
            out += [f"### {t.title}", "", markdown_table(t), ""]
            if t.note:
                out += [t.note, ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1500px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;margin-top:1.6em}
.banner{background:#fff3cd;border:2px solid #d39e00;padding:.6em 1em;font-weight:bold;margin:.8em 0}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.f{background:#fde2e2} img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:13px} code{background:#f4f4f4;padding:1px 4px}
.greyed{opacity:.45;filter:grayscale(1)}
dl.hdr{display:grid;grid-template-columns:max-content auto;gap:2px 12px} dl.hdr dt{font-weight:bold}
"""


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = []
        for c in row:
            if isinstance(c, Cell) and c.title:
                cells.append(f'<td class="f" title="{e(c.title)}">{e(c.text)}</td>')
            else:
                cells.append(f"<td>{e(_text(c))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    table = f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + f"\n</tbody></table>{note}"
    if t.collapsed:
        return (
            f'<details id="{e(t.name)}"><summary><b>{e(t.title)}</b> — {len(t.rows)} rows, click to show'
            f"</summary>\n{table}</details>"
        )
    return f'<h3 id="{e(t.name)}">{e(t.title)}</h3>\n{table}'


def html_page(title: str, banner: str, header: Sequence[tuple[str, str]], sections: Sequence[Section]) -> str:
    """One self-contained HTML page: inline CSS, figures as data URIs, tables with tooltips."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if banner:
        parts.append(f'<div class="banner">{e(banner)}</div>')
    parts.append('<dl class="hdr">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in header) + "</dl>")
    parts.append(
        "<nav>" + " · ".join(f'<a href="#{e(s.anchor)}">{e(s.title)}</a>' for s in sections) + "</nav>"
    )
    for s in sections:
        if s.greyed:
            parts.append('<div class="greyed">')
        parts.append(f'<h2 id="{e(s.anchor)}">{e(s.title)}</h2>')
        parts += [f"<p>{e(p)}</p>" for p in s.text]
        if s.figure:
            data = base64.b64encode(s.figure[1]).decode("ascii")
            parts.append(f'<img alt="{e(s.title)}" src="data:image/png;base64,{data}">')
        parts += [_html_table(t) for t in s.tables]
        if s.greyed:
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
