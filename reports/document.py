"""The report as a list of blocks, written as Markdown (figures linked) and one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

from reports.tables import Grid, Stat

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.92em; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
th, td { padding: 0.25em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-top: 2px solid #222; border-bottom: 1px solid #222; }
tbody:last-child tr:last-child td { border-bottom: 2px solid #222; }
tr.section td { border-top: 1px solid #222; font-style: italic; text-align: left; }
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


Block = Heading | Paragraph | Bullets | Image | Table


def _cell_text(cell: str | Stat) -> str:
    return cell if isinstance(cell, str) else cell.text()


def _md_cell(cell: str | Stat) -> str:
    text = _cell_text(cell).replace("|", "\\|")
    return f"**{text}**" if isinstance(cell, Stat) and cell.bold else text


def _md_table(grid: Grid) -> list[str]:
    lines = [f"*{grid.caption}*", "", "| " + " | ".join(grid.header) + " |",
             "|" + "|".join([":---", *["---:"] * (len(grid.header) - 1)]) + "|"]
    for section in grid.sections:
        if section.title is not None:
            lines.append(f"| *{section.title}* |" + " |" * (len(grid.header) - 1))
        lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in section.rows]
    return lines


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
        else:
            lines += _md_table(block.grid) + [""]
    return "\n".join(lines)


def _html_cell(cell: str | Stat, tag: str = "td") -> str:
    text = html.escape(_cell_text(cell))
    if isinstance(cell, Stat) and cell.bold:
        text = f"<strong>{text}</strong>"
    return f"<{tag}>{text}</{tag}>"


def _html_table(grid: Grid) -> str:
    parts = ["<table>", f"<caption>{html.escape(grid.caption)}</caption>",
             "<thead><tr>" + "".join(_html_cell(h, "th") for h in grid.header) + "</tr></thead>"]
    for section in grid.sections:
        parts.append("<tbody>")
        if section.title is not None:
            parts.append(f'<tr class="section"><td colspan="{len(grid.header)}">{html.escape(section.title)}</td></tr>')
        parts += ["<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in section.rows]
        parts.append("</tbody>")
    parts.append("</table>")
    return "\n".join(parts)


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
        else:
            body.append(_html_table(block.grid))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
