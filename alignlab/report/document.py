"""A report as format-free blocks (text, tables, figures in sections), built from collected cells;
``html.py`` and ``markdown.py`` each render the same document.

A comparison's report: the table (a row per row of the grid, mean ± std over seeds of each final
metric, the seeds that finished), the figures (gold reward against KL, learning curves, the
win-rate matrix), the diagnostics (length against gold, and every number the cells' result.json
carry under ``diagnostics``, whatever they are), and the cells that failed with their logs. A
training run's report: its final metrics, its training and evaluation curves, and its config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from alignlab.report import figures
from alignlab.report.blocks import Document, Figure, Section, Table, Text
from alignlab.report.collect import FAILED, OK, RUNNING, CellResult, Collected
from alignlab.report.overopt import overopt_section
from alignlab.report.stats import column_texts, spread, win_matrix

# The final metrics a comparison's table shows, in order, where some cell has them.
COLUMNS = [
    ("eval/gold/sampled", "gold (sampled)"), ("eval/gold/greedy", "gold (greedy)"),
    ("eval/gold/win_rate", "win rate vs base"), ("eval/gold/kl", "KL to base"), ("eval/gold/length", "length"),
    ("eval/gold/forward_tokens", "forward tokens / answer"),
    ("eval/loss", "eval loss"), ("eval/rewards/accuracies", "eval reward accuracy"),
    ("eval/rewards/margins", "eval reward margin"),
]
DECODED = re.compile(r"^eval/gold@(.+)/(sampled|win_rate|length|forward_tokens)$")


def metric_columns(cells: list[CellResult]) -> list[tuple[str, str]]:
    """(key, label) of the table's columns: ``COLUMNS`` that some cell has, then a training run's
    evaluation through a decoding method (``eval/gold@METHOD/...``), then the final training loss
    when nothing was evaluated, then the optimizer steps of the training runs and the time."""
    present = {k for c in cells for k in c.metrics}
    out = [(k, label) for k, label in COLUMNS if k in present]
    labels = {"sampled": "gold", "win_rate": "win rate", "length": "length", "forward_tokens": "forward tokens"}
    decoded = sorted((m.group(1), list(labels).index(m.group(2)), key) for key in present if (m := DECODED.match(key)))
    out += [(key, f"{labels[key.rsplit('/', 1)[1]]} through {method}") for method, _, key in decoded]
    if not any(k.startswith("eval/") for k in present) and "train/loss" in present:
        out.append(("train/loss", "final training loss"))
    if "steps" in present:
        out.append(("steps", "steps"))
    if "seconds" in present:
        out.append(("seconds", "time (s)"))
    return out


def _seeds_text(cells: list[CellResult]) -> str:
    done = [c for c in cells if c.status == OK]
    text = str(len(done)) if len(done) == len(cells) else f"{len(done)} of {len(cells)}"
    failed = [c for c in cells if c.status == FAILED]
    if failed:
        text += " (failed: " + ", ".join(f"seed {c.seed}" if c.seed is not None else c.id for c in failed) + ")"
    running = sum(c.status == RUNNING for c in cells)
    if running:
        text += f" ({running} running)"
    missing = [c for c in cells if c.status not in (OK, FAILED, RUNNING)]
    if missing:
        text += f" ({len(missing)} not run)"
    return text


def results_table(data: Collected) -> Table:
    """A row per row of the comparison: each metric's mean ± std over the seeds that finished."""
    columns = metric_columns(data.cells)
    spreads = {g: [spread([c.metrics[k] for c in data.of(g) if c.status == OK and k in c.metrics]) for k, _ in columns]
               for g in data.groups}
    texts = [column_texts([spreads[g][i] for g in data.groups], counts=key == "steps")
             for i, (key, _) in enumerate(columns)]
    rows = []
    for j, g in enumerate(data.groups):
        cells = data.of(g)
        if not any(c.status == OK for c in cells):
            status = ("FAILED" if any(c.status == FAILED for c in cells) else
                      RUNNING if any(c.status == RUNNING for c in cells) else "not run")
            rows.append([g, _seeds_text(cells)] + [status] * len(columns))
            continue
        rows.append([g, _seeds_text(cells)] + [texts[i][j] for i in range(len(columns))])
    caption = ("Final metrics, mean ± sample standard deviation over the seeds that finished (seeds: how many). "
               "Gold: the task's gold reward of one answer per held-out prompt; win rate: against an answer of the "
               "base model (a tie counts half); KL: the sampled (k1) estimate from the row's samples, which can fall "
               "slightly below 0 for a model close to the base. A decoding row's numbers are "
               "those of its answers (it has no KL: its samples' log-probs are the model's). Steps: optimizer "
               "steps of the training runs (epochs are passes over each method's own data).") if data.task else (
               "Final metrics, mean ± sample standard deviation over the seeds that finished.")
    if any(k == "seconds" for k, _ in columns):
        caption += (" Time: a cell's wall-clock seconds from the launch of its process (start-up included), summed "
                    "over its attempts when it was resumed.")
    return Table(["row", "seeds", *[label for _, label in columns]], rows, caption)


def answer_golds(data: Collected) -> dict[str, dict[int, dict[int, float]]]:
    """golds[row][seed][prompt index] of the cells that wrote answers."""
    out: dict[str, dict[int, dict[int, float]]] = {}
    for c in data.cells:
        if c.status == OK and c.answers:
            out.setdefault(c.group, {})[c.seed or 0] = {int(r["prompt"]): float(r["gold"]) for r in c.answers}
    return out


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping's leaves by their ``/``-joined paths."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat(v, f"{prefix}{k}/"))
        return out
    return {prefix.rstrip("/"): value}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def diagnostics_tables(data: Collected) -> list[Table]:
    """Every diagnostic the cells carry: the numbers as mean ± std per row, anything else as it is
    per cell (JSON, cut at 120 characters)."""
    by_cell = {c.id: flat(c.diagnostics) for c in data.cells if c.status == OK and c.diagnostics}
    numeric = list(dict.fromkeys(k for d in by_cell.values() for k, v in d.items() if _is_number(v)))
    other = list(dict.fromkeys(k for d in by_cell.values() for k, v in d.items() if not _is_number(v)))
    tables = []
    if numeric:
        groups = [g for g in data.groups if any(c.id in by_cell for c in data.of(g))]
        columns = [column_texts([spread([by_cell[c.id][k] for c in data.of(g)
                                         if c.id in by_cell and _is_number(by_cell[c.id].get(k))]) for g in groups])
                   for k in numeric]
        rows = [[g] + [column[j] for column in columns] for j, g in enumerate(groups)]
        tables.append(Table(["row", *numeric], rows, "Diagnostics the cells report, mean ± std over seeds."))
    if other:
        rows = [[c.id] + [json.dumps(by_cell[c.id][k])[:120] if k in by_cell[c.id] else "–" for k in other]
                for c in data.cells if c.id in by_cell and any(k in by_cell[c.id] for k in other)]
        tables.append(Table(["cell", *other], rows, "Diagnostics that are not single numbers, per cell."))
    return tables


def _figure(path: Path | None, title: str, caption: str) -> list[Figure]:
    return [Figure(path, title, caption)] if path is not None else []


def comparison_document(data: Collected, images: Path) -> Document:
    """The report of a comparison; its figures are written to ``images``."""
    done = sum(c.status == OK for c in data.cells)
    failed = [c for c in data.cells if c.status == FAILED]
    running = sum(c.status == RUNNING for c in data.cells)
    intro = [f"{len(data.cells)} cells in {len(data.groups)} rows: {done} finished, {len(failed)} failed, "
             + (f"{running} running, " if running else "") + f"{len(data.cells) - done - len(failed) - running} not run."]
    resumed = [c for c in data.cells if c.status == OK and (c.attempts or 1) > 1]
    if resumed:
        intro.append("Cells that took more than one attempt (stopped or failed, then resumed; their time counts every "
                     "attempt): " + ", ".join(f"{c.id} ({c.attempts} attempts)" for c in resumed) + ".")
    if data.config.get("config"):
        intro.append(f"Config: {data.config['config']}")
    results = Section("Results", [results_table(data)])
    results.blocks += _figure(figures.frontier(data, images / "frontier.png"), "Gold reward against KL",
                              "Each row's mean over seeds with ± one standard deviation; faint dots are single seeds. "
                              "Up and to the left is better: more gold reward for less movement from the base model.")
    results.blocks += _figure(figures.curves(data, images / "curves.png"), "Learning curves",
                              "Measured at each evaluation of the training runs; the band spans the seeds.")
    golds = answer_golds(data)
    if len(golds) >= 2:
        groups = list(golds)
        matrix = win_matrix(golds)
        results.blocks += _figure(figures.win_rates(groups, matrix, images / "win_rates.png"), "Win-rate matrix",
                                  "How often the row's answer to a held-out prompt has a higher gold reward than the "
                                  "column's (a tie counts half), averaged over the prompts and over seeds paired "
                                  "alike (seed s against seed s).")
        results.blocks.append(Table(["row beats column", *groups],
                                    [[a] + ["–" if v is None else f"{v:.3f}" for v in line]
                                     for a, line in zip(groups, matrix, strict=True)], "The win-rate matrix's numbers."))
    diagnostics = Section("Diagnostics")
    diagnostics.blocks += _figure(figures.length_vs_gold(data, images / "length.png"), "Length against gold reward",
                                  "A row that gains gold reward only by answering longer (or shorter) shows it here.")
    diagnostics.blocks += diagnostics_tables(data)
    sections = [results]
    if diagnostics.blocks:
        sections.append(diagnostics)
    if failed:
        sections.append(Section("Failed cells", [Table(
            ["cell", "exit status", "log"], [[c.id, str(c.returncode), c.log or "–"] for c in failed],
            "Rerun the same `alignlab compare` command to run them again (finished cells are kept).")]))
    return Document(data.title, intro, sections)


def _value_text(value: Any) -> str:
    """A metric with four significant digits (a learning rate of 2e-05 stays readable), anything
    else as it is."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def run_document(data: Collected, images: Path) -> Document:
    """The report of a training run; its figures are written to ``images``."""
    (cell,) = data.cells
    steps = cell.steps if cell.steps is not None else max((r.get("step", 0) for r in cell.history), default=0)
    intro = [f"Status: {cell.status if cell.status == OK else cell.status}; {steps} optimizer step{'' if steps == 1 else 's'}; "
             f"{len(cell.history)} records in metrics.jsonl."]
    final = Section("Final metrics")
    if cell.metrics:
        final.blocks.append(Table(["metric", "value"], [[k, _value_text(v)] for k, v in sorted(cell.metrics.items())],
                                  "From summary.json: the last evaluation and the last training step."))
    elif cell.status == OK:  # rounds that all finished without training (``rounds_finished_untrained``)
        final.blocks.append(Text("The run finished without training: no round's samples made training data (each "
                                 "round's record is in rounds.jsonl), so the policy is the starting model."))
    else:
        final.blocks.append(Text("The run has not finished: no summary.json yet. The curves show what metrics.jsonl "
                                 "holds so far."))
    curves = Section("Learning curves")
    curves.blocks += _figure(figures.run_curves(cell, images / "training.png", evaluation=False), "Training",
                             "Each logged optimizer step.")
    curves.blocks += _figure(figures.run_curves(cell, images / "evaluation.png", evaluation=True), "Evaluation",
                             "Each evaluation (eval_every).")
    sections = [final]
    if curves.blocks:
        sections.append(curves)
    if (over := overopt_section(data.root, images)) is not None:  # `alignlab eval overopt`'s JSON, when there
        sections.append(over)
    if data.config:
        sections.append(Section("Config", [Table(["key", "value"], [[k, _value_text(v)] for k, v in data.config.items()
                                                                     if v not in (None, "", [], {})],
                                                 "run.yaml, every key by its flat name (unset keys left out).")]))
    return Document(data.title, intro, sections)
