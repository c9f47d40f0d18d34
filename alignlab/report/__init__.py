"""Reports of one training run or of a comparison: an HTML page that needs nothing but itself,
a Markdown summary beside it, and the figures as PNG files.

``write_report(FOLDER)`` reads the folder (a comparison's, with ``compare.json``, or a training
run's, with ``run.yaml``: ``collect.py``), builds the document (``document.py``: tables, figures from
``figures.py``, numbers from ``stats.py``) and renders it (``html.py``, ``markdown.py``) to
``FOLDER/report.html``, ``FOLDER/report.md`` and ``FOLDER/report/*.png``. ``plot.py`` holds the
demo's plot.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.errors import UserError

HTML, MARKDOWN, IMAGES = "report.html", "report.md", "report"


def write_report(folder: str | Path) -> dict[str, Path]:
    """Write the report of the comparison or training run in ``folder``; returns the paths written
    (``html``, ``markdown`` and each figure by its name)."""
    from alignlab.report.collect import collect_comparison, collect_run
    from alignlab.report.document import Figure, comparison_document, run_document
    from alignlab.report.html import render_html
    from alignlab.report.markdown import render_markdown

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: {'is a file' if root.exists() else 'does not exist'}; give a training run's "
                        "output_dir or a comparison's")
    if (root / "compare.json").exists():
        data, build = collect_comparison(root), comparison_document
    elif any((root / name).exists() for name in ("run.yaml", "rounds.yaml", "metrics.jsonl")):
        data, build = collect_run(root), run_document
    else:
        raise UserError(f"{root}: neither a comparison (compare.json) nor a training run (run.yaml, metrics.jsonl) "
                        "nor a run of rounds (rounds.yaml)")
    images = root / IMAGES
    for old in images.glob("*.png"):  # figures a previous report drew and this one may not
        old.unlink()
    doc = build(data, images)
    out = {"html": root / HTML, "markdown": root / MARKDOWN}
    out["html"].write_text(render_html(doc), encoding="utf-8")
    out["markdown"].write_text(render_markdown(doc, root), encoding="utf-8")
    out.update({b.path.stem: b.path for s in doc.sections for b in s.blocks if isinstance(b, Figure)})
    return out
