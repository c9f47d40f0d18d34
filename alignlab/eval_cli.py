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

from alignlab.data.write import check_report_path
from alignlab.errors import ArgumentParser, UserError


class Subcommand(NamedTuple):
    run: str  # "module:function", the function taking the tokens after the subcommand's name
    usage: str  # the flags, as the listing shows them
    help: str  # one line


SUBCOMMANDS: dict[str, Subcommand] = {
    "rm": Subcommand("alignlab.eval_cli:cmd_rm", "--data PAIRS (--model RM_DIR | --scorer SPEC)",
                     "a reward model's (or any scorer's) accuracy, calibration, length bias, per-subset accuracy"),
    "ranking": Subcommand("alignlab.eval_cli:cmd_ranking", "(--data PAIRS | --task T) --model POLICY [--reference REF]",
                          "ranking accuracy, idealized ranking accuracy and the alignment gap of a policy"),
    "displacement": Subcommand("alignlab.eval_cli:cmd_displacement",
                               "[--data PAIRS | --task T] (--run RUN_DIR | --models M0 M1 ...)",
                               "likelihood displacement: the chosen and rejected log-prob change over training"),
    "ches": Subcommand("alignlab.eval_cli:cmd_ches", "(--data PAIRS | --task T) --model M [--out SCORES.jsonl]",
                       "CHES and length-normalised CHES of each pair (which pairs will displace the chosen response)"),
    "length": Subcommand("alignlab.eval.diagnose_cli:cmd_length", "(--answers FILE | --task T --model M) (--against FILE | --against-model M) [--scorer SPEC]",
                         "length exploitation: score and win rate against length, the length-controlled win rate"),
    "health": Subcommand("alignlab.eval.diagnose_cli:cmd_health", "(--samples FILE | --task T --model M) [--reference R]",
                         "generation health: top-k entropy and mass, KL to a reference, distinct-n"),
    "overopt": Subcommand("alignlab.eval_cli:cmd_overopt", "--run RUN_DIR [--task T | --prompts FILE] "
                          "[--proxy SPEC] [--gold SPEC] [--plot PNG]",
                          "reward over-optimisation: proxy and gold reward against sqrt(KL) over a run's checkpoints"),
    "judge-bias": Subcommand("alignlab.eval.diagnose_cli:cmd_judge_bias", "--judge SPEC (--pairs PAIRS | --answers FILE | --task T --model M)",
                             "judge bias: swap consistency, position preference, robustness to perturbations"),
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
    quiet_loading()
    module, _, function = SUBCOMMANDS[name].run.partition(":")
    return getattr(importlib.import_module(module), function)(tokens[1:])


def quiet_loading() -> None:
    """No transformers progress bar per model loaded: it would bury the diagnostics' own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


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
    from alignlab.rewards.guard import guard, rows_of

    parser = ArgumentParser(
        prog="alignlab eval rm",
        description="Accuracy, calibration (reliability bins, ECE), correlation with length and accuracy per subset "
                    "of a reward model, or of any scorer, on held-out preference pairs.")
    parser.add_argument("--data", required=True, help="preference pairs (prompt, chosen, rejected), any format")
    parser.add_argument("--model", default=None, help="a reward-model directory (from --method reward_model)")
    parser.add_argument("--scorer", default=None, help="any scorer, e.g. task:sentiment, judge:DIR, bleu:REFS.jsonl "
                                                       "(see alignlab.rewards)")
    parser.add_argument("--split", default=None, help="split of a dataset directory")
    parser.add_argument("--skip-invalid", action="store_true", help="skip bad rows (each is reported) instead of "
                                                                    "stopping at the first")
    parser.add_argument("--bins", type=int, default=10, help="reliability bins (default 10)")
    parser.add_argument("--subset-column", default="subset", help="column naming each pair's subset (default subset)")
    parser.add_argument("--out", default=None, help="also write the full report here as JSON")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    parser.epilog = "--columns.FIELD NAME: the column that holds FIELD (prompt, chosen, rejected) when it is named otherwise"
    args, columns = parse_with_columns(parser, tokens)
    if (args.model is None) == (args.scorer is None):
        raise UserError("alignlab eval rm: give one of --model or --scorer")
    if args.bins < 1:
        raise UserError(f"alignlab eval rm: --bins must be >= 1, got {args.bins}")
    check_report_path(args.out, args, "--data")
    spec, flag = (f"rm:{args.model}", "--model") if args.model else (args.scorer, "--scorer")
    try:
        scorer = guard(load_scorer(spec), f"{flag} {args.model or args.scorer}")
    except UserError as e:
        raise UserError(f"{flag} {args.model or args.scorer}: {e}") from None
    pairs = load_pairs(args.data, args.subset_column, columns=columns, split=args.split,
                       skip_invalid=args.skip_invalid)
    scorer.where = rows_of(pairs)
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


# ---------------------------------------------------------------- pairs and models, shared


def add_pair_flags(parser: argparse.ArgumentParser, data_help: str = "preference pairs (prompt, chosen, "
                   "rejected), any format alignlab reads") -> None:
    """The flags that say which pairs a model-based diagnostic reads, and how the model runs."""
    pairs = parser.add_argument_group("pairs (--data, or --task for a testbed task's held-out pairs)")
    pairs.add_argument("--data", default=None, help=data_help)
    pairs.add_argument("--task", default=None, help="a testbed task (arithmetic, sentiment, ...): pairs on its "
                       "held-out evaluation prompts, answered by its shipped SFT model (--task-k answers per prompt "
                       "at temperature 1, gold reward, best against worst; prompts whose answers all score the "
                       "same give none)")
    pairs.add_argument("--task-k", type=int, default=4, help="--task: answers sampled per prompt (default 4)")
    pairs.add_argument("--task-seed", type=int, default=0, help="--task: seed of the answers (default 0)")
    pairs.add_argument("--save-pairs", default=None, help="--task: also write the pairs to this .jsonl file")
    pairs.add_argument("--split", default=None, help="split of a dataset directory or hub dataset")
    pairs.add_argument("--skip-invalid", action="store_true", help="skip bad rows and rows that do not fit "
                                                                     "--max-length (they are counted)")
    pairs.add_argument("--max-length", type=int, default=1024, help="prompt + response tokens (default 1024); a "
                                                                    "pair whose response would be cut to fit is a "
                                                                    "bad row (--skip-invalid leaves it out)")
    pairs.add_argument("--max-prompt-length", type=int, default=None, help="keep the last this-many prompt tokens")
    run = parser.add_argument_group("running the model")
    run.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (default 32)")
    run.add_argument("--device", default=None, help="where the model runs (default cuda when there is one, else cpu)")
    run.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp64"), help="weights' dtype (default fp32)")
    run.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model directory")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    parser.epilog = ("--columns.FIELD NAME: the column that holds FIELD (prompt, chosen, rejected, strength) "
                     "when it is named otherwise")


def parse_with_columns(parser: argparse.ArgumentParser, tokens: list[str]) -> tuple[argparse.Namespace, dict]:
    from alignlab.data.convert_cli import columns_flags

    args, rest = parser.parse_known_args(tokens)
    return args, columns_flags(rest, parser)


def _log(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def read_pairs(args: argparse.Namespace, columns: dict, prog: str, data: str | None = None) -> tuple[list, str]:
    """The pair records that ``args`` name (``data`` stands in for a missing --data) and a label
    saying where they came from."""
    data = args.data or data
    if (data is None) == (args.task is None):
        raise UserError(f"{prog}: give one of --data or --task")
    if args.save_pairs and not args.task:
        raise UserError(f"{prog}: --save-pairs writes the pairs that --task makes; with --data they are in the file")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--max-length", args.max_length, 2),
                               ("--task-k", args.task_k, 2)):
        if value < least:
            raise UserError(f"{prog}: {flag} must be >= {least}, got {value}")
    if data is not None:
        from alignlab.data.load import load_records

        loaded = load_records(data, "pair", columns=columns, skip_invalid=args.skip_invalid, split=args.split)
        _log(loaded.summary())
        return loaded.records, str(data)
    from alignlab.data.write import check_jsonl_path, write_jsonl
    from alignlab.testbed.feedback import FeedbackSpec, held_out_pairs
    from alignlab.testbed.shipped import task_model

    if args.save_pairs:
        check_jsonl_path(args.save_pairs)
    spec = FeedbackSpec(args.task, k=args.task_k, seed=args.task_seed)
    sampler = task_model(args.task, "sft", progress=not args.no_progress)
    records = held_out_pairs(sampler, spec, progress=not args.no_progress)
    if not records:
        raise UserError(f"{prog}: the {args.task} task's held-out answers made no pair (all answers to each prompt "
                        "scored the same)")
    label = f"task:{args.task} held-out pairs (k={args.task_k}, seed {args.task_seed})"
    _log(f"made {len(records)} pairs on the {args.task} task's held-out prompts from {sampler}")
    if args.save_pairs:
        write_jsonl(args.save_pairs, records)
        _log(f"wrote them to {args.save_pairs}")
    return records, label


def rendered(records: list, tokenizer, args: argparse.Namespace):
    """``eval.pairs.render_pairs`` with the flags' limits; says how many rows were skipped."""
    from alignlab.eval.pairs import render_pairs

    pairs = render_pairs(records, tokenizer, args.max_length, args.max_prompt_length, args.skip_invalid)
    if pairs.skipped:
        _log(f"skipped {len(pairs.skipped)} pairs that do not fit: " + "; ".join(str(i) for i in pairs.skipped[:3]))
    return pairs


def _progress(args: argparse.Namespace, label: str) -> str | None:
    return None if args.no_progress else label


def _logps(model_name: str, args: argparse.Namespace, examples: list, pad_id: int, model=None):
    """Log-probs of the pairs under ``model`` (loaded from ``model_name`` when not given)."""
    from alignlab.eval.pairs import load_eval_model, on_device, pair_logps

    if model is None:
        model = load_eval_model(model_name, args.dtype, args.device, args.trust_remote_code)
    return pair_logps(on_device(model, args.device), examples, pad_id, args.batch_size,
                      _progress(args, f"log-probs ({model_name})"))


# ---------------------------------------------------------------- ranking


def cmd_ranking(tokens: list[str]) -> int:
    """``alignlab eval ranking``: ranking accuracy, idealized ranking accuracy and the alignment gap."""
    from alignlab.eval.ranking import BETAS, EPS, ranking_report
    from alignlab.models import load_tokenizer

    parser = ArgumentParser(
        prog="alignlab eval ranking",
        description="Ranking accuracy of a policy on preference pairs (does it give the chosen response the higher "
                    "log-prob? summed and length-normalised), the idealized ranking accuracy R* of the exact "
                    "DPO/RLHF optimum from the reference for each beta, the alignment gap R* - R, and, for "
                    "comparison, the implicit-reward accuracy that training logs as rewards/accuracies (a different "
                    "quantity). Chen et al. 2024, 'Preference Learning Algorithms Do Not Learn Preference Rankings'.")
    parser.add_argument("--model", required=True, help="the policy: a model directory or hub name")
    parser.add_argument("--reference", default=None, help="the reference R* is computed from (typically the SFT "
                        "model training started from; default: the policy itself, so that R* is the idealized "
                        "accuracy of a model trained from it)")
    parser.add_argument("--beta", type=float, nargs="+", default=list(BETAS),
                        help=f"the betas of R* (default {' '.join(f'{b:g}' for b in BETAS)})")
    parser.add_argument("--eps", type=float, default=EPS, help="what a side no rater chose counts as, in the "
                        "preference odds alpha/(1 - alpha) (default 1e-3: unanimous pairs have odds 1000)")
    parser.add_argument("--out", default=None, help="also write the report, with every pair's numbers, as JSON")
    add_pair_flags(parser, "preference pairs, any format alignlab reads; a pair's 'strength' (or the column "
                           "--columns.strength names) is alpha, the fraction of raters who preferred chosen; "
                           "without it a pair is unanimous")
    args, columns = parse_with_columns(parser, tokens)
    if any(not b > 0 for b in args.beta):
        raise UserError(f"alignlab eval ranking: --beta values must be > 0, got {args.beta}")
    if not 0 < args.eps < 0.5:
        raise UserError(f"alignlab eval ranking: --eps must be in (0, 0.5), got {args.eps}")
    check_report_path(args.out, args, "--data")
    records, label = read_pairs(args, columns, "alignlab eval ranking")
    tok = load_tokenizer(args.model, args.trust_remote_code)
    pairs = rendered(records, tok, args)
    policy = _logps(args.model, args, pairs.examples, tok.pad_token_id)
    same = args.reference is None
    if same:
        reference = policy
    else:
        from alignlab.eval.pairs import same_vocabulary

        same_vocabulary(tok, load_tokenizer(args.reference, args.trust_remote_code), f"--reference {args.reference}")
        reference = _logps(args.reference, args, pairs.examples, tok.pad_token_id)
    alpha = [r.strength for r in pairs.records]
    report = {"policy": args.model, "reference": args.reference or args.model, "data": label,
              **ranking_report(policy, reference, alpha, args.beta, args.eps, same_model=same)}
    for entry, rec in zip(report["per_pair"], pairs.records, strict=True):
        entry["row"] = rec.row
    write_report(args.out, report)
    print(ranking_table(report))
    return 0


def ranking_table(report: dict) -> str:
    """The report as ``alignlab eval ranking`` prints it."""
    ra, rr = report["ranking_accuracy"], report["reference_ranking_accuracy"]
    a = report["alpha"]
    lines = [f"{report['policy']} on {report['pairs']} pairs from {report['data']}",
             f"{'':38}{'summed':>9}{'length-normalised':>20}",
             f"  {'ranking accuracy R (policy)':<36}{ra['summed']:>9.3f}{ra['length_normalized']:>20.3f}",
             f"  {'ranking accuracy (reference)':<36}{rr['summed']:>9.3f}{rr['length_normalized']:>20.3f}",
             f"  idealized ranking accuracy R* from the reference {report['reference']}",
             f"  (alpha from the data for {a['from_data']} pairs, unanimous for {a['unanimous']}, eps {a['eps']:g}),"
             " and the alignment gap R* - R:"]
    for beta, ideal in report["idealized_ranking_accuracy"].items():
        gap = report["alignment_gap"][beta]
        lines.append(f"    {'beta ' + beta:<34}{ideal['summed']:>9.3f}{ideal['length_normalized']:>20.3f}"
                     f"   gap {gap['summed']:+.3f} / {gap['length_normalized']:+.3f}")
    if "implicit_reward_accuracy" in report:
        lines.append(f"  {'implicit-reward accuracy':<36}{report['implicit_reward_accuracy']:>9.3f}"
                     "   (training's rewards/accuracies: whether the implicit reward")
        lines.append(f"  {'':<45}   beta*(logp - logp_ref) is higher for chosen; not ranking accuracy)")
    return "\n".join(lines)


# ---------------------------------------------------------------- displacement


def cmd_displacement(tokens: list[str]) -> int:
    """``alignlab eval displacement``: the chosen and rejected log-prob change from a starting model."""
    from alignlab.eval.displacement import displacement
    from alignlab.eval.pairs import same_vocabulary
    from alignlab.models import load_model, load_tokenizer
    from alignlab.training.saved import run_config, run_models

    prog = "alignlab eval displacement"
    parser = ArgumentParser(
        prog=prog,
        description="Likelihood displacement: the change of the chosen and rejected responses' log-probs from a "
                    "starting model to each later one (a run's checkpoints, or models given in order), its mean, and "
                    "the share of pairs whose chosen log-prob fell. Razin et al. 2024, 'Unintentional Unalignment'.")
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--run", default=None, help="a training run's output_dir: its starting model, each "
                        "checkpoint kept under checkpoints/ (train with --save-every N --keep-checkpoints 0 to keep "
                        "them all) and its final model/; without --data or --task, the run's own training data")
    models.add_argument("--models", nargs="+", default=None, help="the starting model, then the models to compare "
                        "with it, in order")
    parser.add_argument("--out", default=None, help="also write the report as JSON")
    add_pair_flags(parser)
    args, columns = parse_with_columns(parser, tokens)
    if args.models is not None and len(args.models) < 2:
        raise UserError(f"{prog}: --models needs the starting model and at least one more")
    check_report_path(args.out, args, "--data")
    data = None
    if args.run:
        config = run_config(args.run)
        if args.data is None and args.task is None:
            data = str(config.get("data") or "")
            if not data or data.startswith("task:"):
                raise UserError(f"{prog}: the run trained on '{data}', not on pairs; give --data or --task")
            dataset = config.get("dataset") or {}
            columns = columns or dict(dataset.get("columns") or {})
            args.split = args.split or dataset.get("data_split")
        entries = list(run_models(args.run, args.dtype))
        tok_source = str(config["model"])
    else:
        entries = [(name, (lambda name=name: load_model(name, args.dtype, args.trust_remote_code)))
                   for name in args.models]
        tok_source = args.models[0]
    records, label = read_pairs(args, columns, prog, data)
    tok = load_tokenizer(tok_source, args.trust_remote_code)
    if args.models:
        for name in args.models[1:]:
            same_vocabulary(tok, load_tokenizer(name, args.trust_remote_code), name)
    pairs = rendered(records, tok, args)
    if len(entries) < 2:
        raise UserError(f"{prog}: --run {args.run} has no checkpoint and no final model to compare with its start")
    start = None
    rows = []
    for name, load in entries:  # one model in memory at a time
        logps = _logps(name, args, pairs.examples, tok.pad_token_id, model=load())
        if start is None:
            start = logps
        rows.append({"model": name, **displacement(start, logps)})
    report = {"data": label, "pairs": len(pairs), "start": entries[0][0] if args.models else str(tok_source),
              "models": rows}
    write_report(args.out, report)
    print(displacement_table(report))
    return 0


def displacement_table(report: dict) -> str:
    lines = [f"log-prob change from {report['start']} on {report['pairs']} pairs from {report['data']}",
             f"{'model':<40}{'logp chosen':>12}{'rejected':>10}{'d chosen':>10}{'d rejected':>11}{'d margin':>10}"
             f"{'chosen fell':>12}"]
    for row in report["models"]:
        name = row["model"] if len(row["model"]) <= 38 else "..." + row["model"][-35:]
        lines.append(f"{name:<40}{row['chosen_logp']:>12.3f}{row['rejected_logp']:>10.3f}{row['chosen_change']:>+10.3f}"
                     f"{row['rejected_change']:>+11.3f}{row['margin_change']:>+10.3f}{row['chosen_fell']:>12.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- CHES


def _ches_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model training would start from (the SFT model)")


def _ches_of(args: argparse.Namespace, records: list):
    from alignlab.eval.ches import pair_ches
    from alignlab.eval.pairs import load_eval_model
    from alignlab.models import load_tokenizer

    tok = load_tokenizer(args.model, args.trust_remote_code)
    pairs = rendered(records, tok, args)
    model = load_eval_model(args.model, args.dtype, args.device, args.trust_remote_code)
    return pairs, pair_ches(model, pairs.examples, tok.pad_token_id, args.batch_size, _progress(args, "CHES"))


def _quartiles(values) -> str:
    import torch

    q = torch.quantile(values, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=values.dtype)).tolist()
    return (f"mean {float(values.mean()):.4g}, min {q[0]:.4g}, 25% {q[1]:.4g}, median {q[2]:.4g}, 75% {q[3]:.4g}, "
            f"max {q[4]:.4g}")


def cmd_ches(tokens: list[str]) -> int:
    """``alignlab eval ches``: CHES and length-normalised CHES of each pair."""
    from alignlab.data.write import check_jsonl_path, check_not_input, write_rows

    prog = "alignlab eval ches"
    parser = ArgumentParser(
        prog=prog,
        description="CHES and length-normalised CHES of each preference pair from the model's last-layer hidden "
                    "states: how likely a DPO step on the pair is to push the chosen response down (higher: more "
                    "likely). Razin et al. 2024, 'Unintentional Unalignment'. `alignlab convert ches-filter` drops "
                    "the highest-scoring pairs.")
    _ches_flags(parser)
    parser.add_argument("--out", default=None, help="write each pair's scores here (.jsonl): source, row, ches, "
                                                    "ln_ches, chosen_tokens, rejected_tokens")
    add_pair_flags(parser)
    args, columns = parse_with_columns(parser, tokens)
    if args.out:
        check_jsonl_path(args.out)
        check_not_input(args.out, ("the input", "--data", args.data))
    records, label = read_pairs(args, columns, prog)
    pairs, scores = _ches_of(args, records)
    if args.out:
        write_rows(args.out, ({"source": rec.source, "row": rec.row, "ches": float(scores.ches[i]),
                               "ln_ches": float(scores.ln_ches[i]), "chosen_tokens": int(scores.chosen_tokens[i]),
                               "rejected_tokens": int(scores.rejected_tokens[i])}
                              for i, rec in enumerate(pairs.records)))
    print(f"CHES under {args.model} of {len(pairs)} pairs from {label}")
    print(f"  CHES     {_quartiles(scores.ches)}")
    print(f"  LN-CHES  {_quartiles(scores.ln_ches)}")
    if args.out:
        print(f"  per pair: {args.out}")
    return 0


def cmd_ches_filter(tokens: list[str]) -> int:
    """``alignlab convert ches-filter IN OUT``: drop the pairs with the highest CHES, keep the rest
    as they are (every column)."""
    from alignlab.data.sources import iter_rows
    from alignlab.data.write import check_jsonl_path, check_not_input, write_rows
    from alignlab.errors import RowIssue
    from alignlab.eval.ches import most_displacing

    prog = "alignlab convert ches-filter"
    parser = ArgumentParser(
        prog=prog,
        description="Drop the preference pairs a DPO run would displace most: score each pair with CHES (or, with "
                    "--length-normalized, LN-CHES) under --model, the model training will start from, and drop the "
                    "highest-scoring ones (Razin et al. 2024 keep the lowest LN-CHES). Kept rows are written as "
                    "they were read, every column, in their order.")
    parser.add_argument("input", metavar="IN", help="preference pairs: data file, dataset directory or hub dataset")
    parser.add_argument("output", metavar="OUT", help="the .jsonl file to write")
    _ches_flags(parser)
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--keep-fraction", type=float, default=None, help="keep round(F x pairs) pairs, those with "
                                                                          "the lowest scores")
    amount.add_argument("--drop-fraction", type=float, default=None, help="drop round(F x pairs) pairs, those with "
                                                                          "the highest scores")
    parser.add_argument("--length-normalized", action="store_true", help="rank by length-normalised CHES")
    parser.add_argument("--scores-out", default=None, help="also write every pair's scores here (.jsonl)")
    add_pair_flags(parser)
    args, columns = parse_with_columns(parser, tokens)
    quiet_loading()
    if args.task:
        raise UserError(f"{prog}: filters the pairs of IN; --task does not apply")
    fraction = args.keep_fraction if args.keep_fraction is not None else args.drop_fraction
    if not 0 <= fraction <= 1:
        flag = "--keep-fraction" if args.keep_fraction is not None else "--drop-fraction"
        raise UserError(f"{prog}: {flag} must be in [0, 1], got {fraction}")
    check_jsonl_path(args.output)
    check_not_input(args.output, ("the input", "IN", args.input))
    if args.scores_out:
        check_jsonl_path(args.scores_out)
        check_not_input(args.scores_out, ("the input", "IN", args.input), ("the output", "OUT", args.output))
    args.data = args.input
    records, _ = read_pairs(args, columns, prog)
    pairs, scores = _ches_of(args, records)
    n = len(pairs)
    drop = round(fraction * n) if args.drop_fraction is not None else n - round(fraction * n)
    if drop == n:
        raise UserError(f"{prog}: {'--keep-fraction' if args.keep_fraction is not None else '--drop-fraction'} "
                        f"{fraction} of {n} pairs keeps none")
    ranked_by = scores.ln_ches if args.length_normalized else scores.ches
    dropped = set(most_displacing(ranked_by, drop))
    kept = {(rec.source, rec.row) for i, rec in enumerate(pairs.records) if i not in dropped}
    raw = [r.data for r in iter_rows(args.input, split=args.split)
           if not isinstance(r.data, RowIssue) and (r.source, r.row) in kept]
    written = write_rows(args.output, raw)
    if args.scores_out:
        write_rows(args.scores_out, ({"source": rec.source, "row": rec.row, "ches": float(scores.ches[i]),
                                      "ln_ches": float(scores.ln_ches[i]), "dropped": i in dropped}
                                     for i, rec in enumerate(pairs.records)))
    name = "LN-CHES" if args.length_normalized else "CHES"
    kept_scores = [float(ranked_by[i]) for i in range(n) if i not in dropped]
    dropped_scores = [float(ranked_by[i]) for i in sorted(dropped)]
    line = f"scored {n} pairs with {name} under {args.model}; kept {written} (mean {name} " \
           f"{sum(kept_scores) / len(kept_scores):.4g}), dropped the {drop} highest"
    if dropped_scores:
        line += f" (mean {sum(dropped_scores) / len(dropped_scores):.4g}, lowest {min(dropped_scores):.4g})"
    print(line)
    if pairs.skipped:
        print(f"left out {len(pairs.skipped)} rows that do not fit --max-length {args.max_length} (--skip-invalid)")
    print(f"wrote {written} pairs to {args.output}")
    return 0


# ---------------------------------------------------------------- over-optimisation


def saved_models(run: str, left_out: dict[str, str] | None = None) -> list[tuple[str, int | None, object]]:
    """(label, step, load) of a training run's models in training order: start (step 0), each
    checkpoint, then the final model unless a checkpoint already holds its step (summary.json's
    ``steps``). ``left_out`` receives the checkpoints left out (``run_models``)."""
    from alignlab.training.checkpoint import PREFIX
    from alignlab.training.saved import run_models

    out: list[tuple[str, int | None, object]] = []
    for name, load in run_models(run, left_out=left_out):
        step = 0 if name == "start" else int(name[len(PREFIX):]) if name.startswith(PREFIX) else None
        out.append((name, step, load))
    if out and out[-1][0] == "final":
        summary = Path(run) / "summary.json"
        steps = json.loads(summary.read_text()).get("steps") if summary.is_file() else None
        if isinstance(steps, int) and any(step == steps for _, step, _ in out[:-1]):
            out.pop()  # the last checkpoint is the final model
        else:
            out[-1] = ("final", steps if isinstance(steps, int) else None, out[-1][2])
    return out


def cmd_overopt(tokens: list[str]) -> int:
    """``alignlab eval overopt`` (``eval/overopt_cli.py``): the run's saved models are read here, on
    top of the training layer; writes the report (and the plot with ``--plot``), prints the table."""
    from alignlab.eval.overopt_cli import format_overopt, overopt_parser, run_overopt
    from alignlab.training.saved import run_config

    args = overopt_parser().parse_args(tokens)
    left_out: dict[str, str] = {}  # checkpoints run_models left out (damaged, unfinished), as it checked them
    report = run_overopt(args, run_config(args.run), lambda: saved_models(args.run, left_out))
    report["left_out"] = left_out  # kept in the report for whoever reads it later
    write_report(report["out"], report)
    if report["plot"]:
        from alignlab.report.overopt import overopt_figure

        try:
            overopt_figure(report, Path(report["plot"]))
        except OSError as e:
            raise UserError(f"--plot {report['plot']}: cannot write: {e.strerror or e}") from None
    print(format_overopt(report))
    return 0
