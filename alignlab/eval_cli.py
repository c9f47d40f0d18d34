"""`alignlab eval SUBCOMMAND ...`: the diagnostics, one subcommand each.

``SUBCOMMANDS`` is the whole dispatch. A new diagnostic is a function ``cmd(tokens) -> int`` (it
parses its own flags with ``alignlab.errors.ArgumentParser``, prog ``alignlab eval NAME``, and
raises ``UserError`` for bad input) plus one line in the table: the function is named as
``"module:function"`` and imported only when its subcommand runs, so it may live in any module
and ``alignlab eval --help`` loads no model code.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import NamedTuple

from alignlab.errors import ArgumentParser, UserError


class Subcommand(NamedTuple):
    run: str  # "module:function", the function taking the tokens after the subcommand's name
    usage: str  # the flags, as the listing shows them
    help: str  # one line


SUBCOMMANDS: dict[str, Subcommand] = {
    "rm": Subcommand("alignlab.eval_cli:cmd_rm", "--data PAIRS (--model RM_DIR | --scorer SPEC)",
                     "a reward model's (or any scorer's) accuracy, calibration, length bias, per-subset accuracy"),
}


def listing() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: alignlab eval SUBCOMMAND [...]   (alignlab eval SUBCOMMAND --help for its flags)", "",
             "subcommands:"]
    for name, sub in SUBCOMMANDS.items():
        lines.append(f"  {name:<{width}}  {sub.help}")
        lines.append(f"  {'':<{width}}    alignlab eval {name} {sub.usage}")
    return "\n".join(lines)


def cmd_eval(tokens: list[str]) -> int:
    """Run ``alignlab eval NAME ...``; without a name, list the subcommands."""
    if not tokens or tokens[0] in ("-h", "--help"):
        print(listing())
        return 0
    name = tokens[0]
    if name not in SUBCOMMANDS:
        raise UserError(f"alignlab eval: unknown evaluation '{name}' (evaluations: {', '.join(SUBCOMMANDS)}; "
                        "alignlab eval --help lists them)")
    module, _, function = SUBCOMMANDS[name].run.partition(":")
    return getattr(importlib.import_module(module), function)(tokens[1:])


def write_report(path: str | None, report: dict) -> None:
    """Write ``report`` as JSON to ``path`` (when given); an unwritable path is one error line."""
    if not path:
        return
    try:
        Path(path).write_text(json.dumps(report, indent=1))
    except OSError as e:
        raise UserError(f"--out {path}: cannot write: {e.strerror or e}") from None


# ---------------------------------------------------------------- rm


def cmd_rm(tokens: list[str]) -> int:
    """``alignlab eval rm``: a reward model's (or any scorer's) accuracy, calibration and length bias."""
    from alignlab.eval.rm import evaluate_pairs, load_pairs
    from alignlab.rewards import load_scorer

    parser = ArgumentParser(
        prog="alignlab eval rm",
        description="Accuracy, calibration (reliability bins, ECE), correlation with length and accuracy per subset "
                    "of a reward model, or of any scorer, on held-out preference pairs.")
    parser.add_argument("--data", required=True, help="preference pairs (prompt, chosen, rejected), any format")
    parser.add_argument("--model", default=None, help="a reward-model directory (from --method reward_model)")
    parser.add_argument("--scorer", default=None, help="any scorer, e.g. task:sentiment, judge:DIR, bleu:REFS.jsonl "
                                                       "(see alignlab.rewards)")
    parser.add_argument("--split", default=None, help="split of a dataset directory")
    parser.add_argument("--bins", type=int, default=10, help="reliability bins (default 10)")
    parser.add_argument("--subset-column", default="subset", help="column naming each pair's subset (default subset)")
    parser.add_argument("--out", default=None, help="also write the full report here as JSON")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(tokens)
    if (args.model is None) == (args.scorer is None):
        raise UserError("alignlab eval rm: give one of --model or --scorer")
    if args.bins < 1:
        raise UserError(f"alignlab eval rm: --bins must be >= 1, got {args.bins}")
    scorer = load_scorer(f"rm:{args.model}" if args.model else args.scorer)
    pairs = load_pairs(args.data, args.subset_column, split=args.split)
    report = {"scorer": scorer.name, "data": args.data, **evaluate_pairs(scorer, pairs, args.bins)}
    write_report(args.out, report)
    print(f"{scorer.name} on {report['pairs']} pairs from {args.data}")
    for key in ("accuracy", "ece", "mean_prob_chosen", "length_correlation", "prefers_longer", "data_prefers_longer"):
        print(f"  {key:<22} {report[key]:.4f}")
    for name, row in report.get("subsets", {}).items():
        print(f"  subset {name:<15} accuracy {row['accuracy']:.4f} ({row['pairs']} pairs)")
    print("  reliability (confidence bin: pairs, mean confidence, accuracy):")
    for row in report["calibration"]:
        if row["count"]:
            print(f"    [{row['low']:.2f}, {row['high']:.2f}]  {row['count']:>5}  {row['confidence']:.3f}  "
                  f"{row['accuracy']:.3f}")
    return 0
