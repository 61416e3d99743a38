"""A report as a list of blocks, written out as Markdown and as one self-contained HTML page.

Blocks: ("h1"|"h2"|"h3", text), ("p", text), ("list", [text]), ("table", Table), ("img", (png, caption)).
Every string that came from a file (names, reasons, paths) is escaped for the format it lands in:
html.escape for HTML, `|` and line breaks for Markdown table cells.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Table:
    columns: list[str]
    rows: list[list]


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as percent (points): 0.61234 -> '61.23'; None -> '–'."""
    return "–" if x is None else f"{100 * x:.{digits}f}"


def signed(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.2f}"


def interval(lo_hi: tuple | None, fmt=pct) -> str:
    return "n/a (1 seed)" if lo_hi is None else f"[{fmt(lo_hi[0])}, {fmt(lo_hi[1])}]"


def md_cell(v) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def to_markdown(blocks: list) -> str:
    out = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + md_cell(body), ""]
        elif kind == "p":
            out += [str(body).replace("<", "&lt;"), ""]
        elif kind == "list":
            out += [*(f"- {str(item).replace('<', '&lt;')}" for item in body), ""]
        elif kind == "table":
            out.append("| " + " | ".join(md_cell(c) for c in body.columns) + " |")
            out.append("|" + "---|" * len(body.columns))
            out += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in body.rows]
            out.append("")
        elif kind == "img":
            png, caption = body
            out += [f"![{md_cell(caption)}]({Path(png).name})", ""]
    return "\n".join(out)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td{text-align:right}td:first-child,td:nth-child(2){text-align:left}
img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}code{background:#f6f6f6}"""


def inline(text: str) -> str:
    """Escaped text, with `backticked` spans as <code> (after escaping, so nothing from files becomes markup)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(blocks: list, title: str) -> str:
    e = html.escape
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{STYLE}</style></head><body>"]
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(str(body))}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{inline(str(body))}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(str(i))}</li>" for i in body) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(str(c))}</th>" for c in body.columns)
            rows = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in body.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            png, caption = body
            data = base64.b64encode(Path(png).read_bytes()).decode()
            out.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
