"""A report as one self-contained HTML file: the styles inline, every figure embedded as a base64
PNG, no script, font or address outside the file, so it opens anywhere without a network."""

from __future__ import annotations

import base64
import html

from alignlab.report.blocks import Document, Figure, Table, Text

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
p.intro { color: #444; margin: 0.2em 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f5; }
td:first-child, th:first-child { text-align: left; white-space: normal; max-width: 28em; }
td.failed { color: #b00020; font-weight: 600; }
p.caption { color: #555; font-size: 0.88em; margin-top: 0.1em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        cells = "".join(f'<td class="failed">{html.escape(v)}</td>' if v in ("FAILED", "failed") else
                        f"<td>{html.escape(v)}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    caption = f'<p class="caption">{html.escape(t.caption)}</p>' if t.caption else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{caption}"


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.path.read_bytes()).decode("ascii")
    caption = f'<p class="caption">{html.escape(f.caption)}</p>' if f.caption else ""
    return (f"<figure><h3>{html.escape(f.title)}</h3><img src=\"data:image/png;base64,{data}\" "
            f"alt=\"{html.escape(f.title)}\">{caption}</figure>")


def render_html(doc: Document) -> str:
    """The document as a complete HTML page."""
    parts = [f"<h1>{html.escape(doc.title)}</h1>"]
    parts += [f'<p class="intro">{html.escape(line)}</p>' for line in doc.intro]
    for section in doc.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_table(block))
            elif isinstance(block, Figure):
                parts.append(_figure(block))
            elif isinstance(block, Text):
                parts.append(f"<p>{html.escape(block.text)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(doc.title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
