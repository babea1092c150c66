"""The report as a list of blocks, written as Markdown (figures linked) and one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

from reports.links import RunLink
from reports.tables import Cell, Grid, NotApplicable, Stat

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.92em; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
th, td { padding: 0.25em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-top: 2px solid #222; border-bottom: 1px solid #222; }
tbody:last-child tr:last-child td { border-bottom: 2px solid #222; }
tr.section td { border-top: 1px solid #222; font-style: italic; text-align: left; }
th.group { border-bottom: 1px solid #888; text-align: center; }
td.na { text-align: center; color: #666; }
p.notes { font-size: 0.85em; color: #444; margin-top: -1em; }
details.runs { font-size: 0.85em; margin: -0.8em 0 1.6em; } details.runs ul { columns: 2; }
figure { margin: 1em 0 2em; } img { max-width: 100%; } figcaption { font-size: 0.9em; color: #444; }
"""


@dataclass
class Heading:
    """A section title (level 1 = the document title)."""

    level: int
    text: str


@dataclass
class Paragraph:
    """Plain text."""

    text: str


@dataclass
class Bullets:
    """A list of plain-text items."""

    items: list[str]


@dataclass
class Image:
    """A PNG figure written under the report folder, with its caption."""

    path: Path
    caption: str


@dataclass
class Table:
    """A grid shown as a table."""

    grid: Grid


@dataclass
class Runs:
    """The runs behind the table or figure before it, each linked to its MLflow UI page."""

    what: str
    links: list[RunLink]


Block = Heading | Paragraph | Bullets | Image | Table | Runs


def _cell_text(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell.text()


def _md_cell(cell: Cell) -> str:
    text = _cell_text(cell).replace("|", "\\|")
    return f"**{text}**" if isinstance(cell, Stat) and cell.bold else text


def _padded(row: list[Cell], width: int) -> list[Cell]:
    """A row of `width` cells: an n/a row's blank cells after its n/a."""
    return [*row, *[""] * (width - len(row))]


def _md_table(grid: Grid) -> list[str]:
    header = grid.flat_header()
    lines = [f"*{grid.caption}*", "", "| " + " | ".join(header) + " |",
             "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|"]
    for section in grid.sections:
        if section.title is not None:
            lines.append(f"| *{section.title}* |" + " |" * (len(header) - 1))
        lines += ["| " + " | ".join(_md_cell(cell) for cell in _padded(row, len(header))) + " |"
                  for row in section.rows]
    return lines + ([""] + [f"{note}  " for note in grid.notes] if grid.notes else [])


def _md_runs(block: Runs) -> list[str]:
    links = " · ".join(f"[{link.text}]({link.url})" for link in block.links)
    return [f"Runs behind this {block.what} ({len(block.links)}): {links}", ""]


def markdown(blocks: list[Block], folder: Path) -> str:
    """The report as Markdown; figures linked relative to `folder` (where report.md lives)."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Image):
            link = Path(os.path.relpath(block.path, folder)).as_posix()
            lines += [f"![{block.caption}]({link})", "", f"*{block.caption}*", ""]
        elif isinstance(block, Runs):
            lines += _md_runs(block)
        else:
            lines += _md_table(block.grid) + [""]
    return "\n".join(lines)


def _html_cell(cell: Cell, tag: str = "td", span: int = 1) -> str:
    text = html.escape(_cell_text(cell))
    if isinstance(cell, Stat) and cell.bold:
        text = f"<strong>{text}</strong>"
    spans = f' colspan="{span}" class="na"' if span > 1 else ""
    return f"<{tag}{spans}>{text}</{tag}>"


def _html_row(row: list[Cell], width: int) -> str:
    cells = [_html_cell(cell) for cell in row]
    if row and isinstance(row[-1], NotApplicable):
        cells[-1] = _html_cell(row[-1], span=width - len(row) + 1)
    return "<tr>" + "".join(cells) + "</tr>"


def _html_header(grid: Grid) -> str:
    rows = []
    if grid.groups:
        rows.append("<tr><th></th>" + "".join(f'<th colspan="{span}" class="group">{html.escape(title)}</th>'
                                              for title, span in grid.groups) + "</tr>")
    rows.append("<tr>" + "".join(_html_cell(h, "th") for h in grid.header) + "</tr>")
    return "<thead>" + "".join(rows) + "</thead>"


def _html_table(grid: Grid) -> str:
    width = len(grid.header)
    parts = ["<table>", f"<caption>{html.escape(grid.caption)}</caption>", _html_header(grid)]
    for section in grid.sections:
        parts.append("<tbody>")
        if section.title is not None:
            parts.append(f'<tr class="section"><td colspan="{width}">{html.escape(section.title)}</td></tr>')
        parts += [_html_row(row, width) for row in section.rows]
        parts.append("</tbody>")
    parts.append("</table>")
    if grid.notes:
        parts.append('<p class="notes">' + "<br>".join(html.escape(note) for note in grid.notes) + "</p>")
    return "\n".join(parts)


def _html_runs(block: Runs) -> str:
    # Links to the MLflow UI are the page's only references, and are navigations, not resources it loads.
    items = "".join(f'<li><a href="{html.escape(link.url)}">{html.escape(link.text)}</a></li>' for link in block.links)
    return (f'<details class="runs"><summary>Runs behind this {html.escape(block.what)} ({len(block.links)}), in the '
            f"MLflow UI</summary><ul>{items}</ul></details>")


def _html_image(image: Image) -> str:
    # Embedded, so the one file can be mailed or archived without the figures folder.
    data = base64.b64encode(image.path.read_bytes()).decode("ascii")
    caption = html.escape(image.caption)
    return (f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def html_page(blocks: list[Block], title: str) -> str:
    """The report as one self-contained HTML page: figures embedded as base64 PNG, no external references."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Image):
            body.append(_html_image(block))
        elif isinstance(block, Runs):
            body.append(_html_runs(block))
        else:
            body.append(_html_table(block.grid))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
