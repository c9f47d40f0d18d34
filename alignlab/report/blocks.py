"""The blocks a report is made of, free of any format: text, tables and figures in sections, in a
document (``document.py`` builds them from collected results, ``overopt.py`` a section of its
own; ``html.py`` and ``markdown.py`` render them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Text:
    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path  # the PNG
    title: str
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list[Text | Table | Figure] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[str]
    sections: list[Section]
