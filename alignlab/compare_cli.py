"""`alignlab compare CONFIG.yaml` and `alignlab report FOLDER`.

    alignlab compare CONFIG.yaml [--jobs N]   run a comparison's cells (those not finished), then report
    alignlab report FOLDER                    the report of a comparison's folder or of a training run

The config is described in ``alignlab/compare/config.py`` and the README ("Comparing methods").
The command exits with status 2 for a config error (before anything runs), 1 when a cell failed
(after the other cells ran and the report was written, which marks it), 0 otherwise.
"""

from __future__ import annotations

import argparse

from alignlab.errors import ArgumentParser


def _paths(paths: dict) -> str:
    return f"report: {paths['html']} (Markdown: {paths['markdown']})"


def cmd_compare(tokens: list[str]) -> int:
    from alignlab.compare.config import describe, load_plan
    from alignlab.compare.run import ending, run_compare

    parser = ArgumentParser(prog="alignlab compare", allow_abbrev=False,
                            description="Train and evaluate every cell of a grid (methods, hyperparameters, seeds; "
                                        "decoding methods on the base model) with the same data and budget, in "
                                        "parallel, and write one report. A rerun skips finished cells and resumes "
                                        "the others.")
    parser.add_argument("config", help="the comparison's YAML file: output_dir, base, grid, decoding, jobs")
    parser.add_argument("--jobs", type=int, default=None, help="cells run at once (default: the config's jobs, else "
                                                               "the number of cores)")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(tokens)
    plan = load_plan(args.config, args.jobs)
    print(f"alignlab compare: {describe(plan)}; output in {plan.output_dir}", flush=True)
    outcome = run_compare(plan)
    markdown = outcome.report["markdown"].read_text(encoding="utf-8")
    table = markdown.split("## Results", 1)[-1].strip().split("\n\n", 1)[0]
    print(f"\n{table}\n")
    print(f"{len(outcome.ran) + len(outcome.failed)} cells ran: {len(outcome.ran)} finished, {len(outcome.failed)} "
          f"failed; {len(outcome.skipped)} had finished earlier")
    for cell_id, info in outcome.failed.items():
        print(f"  FAILED {cell_id} ({ending(info['returncode'])}): {info['log']}")
    print(_paths(outcome.report))
    return 1 if outcome.failed else 0


def cmd_report(tokens: list[str]) -> int:
    from alignlab.report import write_report

    parser = ArgumentParser(prog="alignlab report", allow_abbrev=False,
                            description="Write report.html (self-contained), report.md and the figures (report/*.png) "
                                        "of a training run's folder (alignlab train's output_dir) or of a "
                                        "comparison's (alignlab compare's output_dir).")
    parser.add_argument("folder", help="a training run's output_dir, or a comparison's")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(tokens)
    print(_paths(write_report(args.folder)))
    return 0
