"""A report as Markdown: the same tables, the figures linked as the PNG files beside it."""

from __future__ import annotations

import os
from pathlib import Path

from alignlab.report.blocks import Document, Figure, Table, Text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(t: Table) -> str:
    """A pipe table (numbers right-aligned, the first column left)."""
    lines = ["| " + " | ".join(_cell(c) for c in t.columns) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(t.columns) - 1)) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in t.rows]
    return "\n".join(lines)


def render_markdown(doc: Document, where: Path) -> str:
    """The document as Markdown for a file in folder ``where`` (figure links relative to it)."""
    parts = [f"# {doc.title}", "", *doc.intro]
    for section in doc.sections:
        parts += ["", f"## {section.title}"]
        for block in section.blocks:
            parts.append("")
            if isinstance(block, Table):
                parts.append(markdown_table(block))
                if block.caption:
                    parts += ["", block.caption]
            elif isinstance(block, Figure):
                link = Path(os.path.relpath(block.path, where)).as_posix()
                parts.append(f"![{block.title}]({link})")
                if block.caption:
                    parts += ["", block.caption]
            elif isinstance(block, Text):
                parts.append(block.text)
    return "\n".join(parts) + "\n"
