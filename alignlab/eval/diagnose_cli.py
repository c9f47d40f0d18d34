"""The diagnostics' commands: ``alignlab eval length``, ``alignlab eval health``, ``alignlab eval judge-bias``.

Each takes its answers from files (``alignlab sample`` / ``alignlab decode`` output rows, or
preference pairs for the judge) or draws them now from a model on a testbed task's held-out
prompts (``--task T --model M``) or on the prompts of a data file (``--prompts FILE``), prints a
short table and writes the whole report as JSON with ``--out``. Bad input is one line naming the
option, file, row and field.

    alignlab eval length --answers A.jsonl --against B.jsonl [--scorer SPEC] [--unit chars|words|tokens]
    alignlab eval length --task arithmetic --model POLICY --against-model SFT [--scorer task:arithmetic:proxy]
    alignlab eval health --task arithmetic --model POLICY [--reference SFT] [--top-k 10]
    alignlab eval health --samples S.jsonl [--model M [--reference R]]
    alignlab eval judge-bias --judge SPEC (--pairs PAIRS.jsonl | --answers S.jsonl | --task T --model M)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from alignlab.errors import ArgumentParser, UserError

__all__ = ["cmd_health", "cmd_judge_bias", "cmd_length"]


# ---------------------------------------------------------------- shared options and loading


def _add_drawing(parser: argparse.ArgumentParser, n: int) -> None:
    """Options of answers drawn now from a model."""
    from alignlab.sample_cli import default_backend
    from alignlab.tasks import task_names

    parser.add_argument("--task", default=None, help=f"draw answers to a testbed task's held-out prompts: "
                                                     f"{', '.join(task_names())}")
    parser.add_argument("--prompts", default=None, help="draw answers to the prompts of this data file (any shape "
                                                        "with a prompt) instead")
    parser.add_argument("--prompt-column", default=None, help="with --prompts: the column that holds the prompt "
                                                              "(default prompt)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("-n", "--n", type=int, default=n, help=f"answers drawn per prompt (default {n})")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="most tokens per answer (default: the "
                                                                         "task's, else 64)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    parser.add_argument("--backend", default=default_backend(), help=f"generation backend (default "
                                                                     f"{default_backend()})")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts drawn together (default 16)")
    parser.add_argument("--device", default=None, help="where models run (default cuda when there is one, else cpu)")
    parser.add_argument("--out", default=None, help="write the whole report here as JSON")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


def _check_counts(args: argparse.Namespace) -> None:
    for name in ("n", "batch_size", "limit", "bins", "top_k"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "bootstrap", 0) < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be a finite number >= 0, got {args.temperature}")


def _prompt_records(args: argparse.Namespace, what: str) -> list:
    """The prompts a model answers: a task's held-out prompts or a data file's."""
    from alignlab.data.prompts import load_prompts
    from alignlab.data.records import PromptRecord

    if (args.task is None) == (args.prompts is None):
        raise UserError(f"{what}: give the prompts to answer with one of --task or --prompts, "
                        + ("not both" if args.task else "got neither"))
    if args.prompts is not None:
        return load_prompts(args.prompts, prompt_column=args.prompt_column, limit=args.limit)
    if args.prompt_column is not None:
        raise UserError("--prompt-column names a column of --prompts; a task's prompts have none")
    from alignlab.tasks import get_task

    texts = get_task(args.task).eval_prompts()[:args.limit]
    return [PromptRecord(t, source=f"task {args.task} (held-out prompts)", row=i) for i, t in enumerate(texts, 1)]


def _params(args: argparse.Namespace, seed_offset: int = 0):
    from alignlab.generation import SamplingParams

    tokens = args.max_new_tokens
    if tokens is None:
        tokens = 64
        if args.task is not None:
            from alignlab.tasks import get_task

            tokens = get_task(args.task).max_new_tokens
    return SamplingParams(max_new_tokens=tokens, temperature=args.temperature, seed=(args.seed + seed_offset) % 2**63)


def _device(args: argparse.Namespace) -> str:
    from alignlab.sample_cli import _default_device

    return args.device or _default_device()


def _load(path: str, args: argparse.Namespace, what: str):
    """(model, tokenizer) from a local directory or hub name, in eval mode on the chosen device."""
    from transformers.utils import logging as hf_logging

    from alignlab.models import load_model, load_tokenizer

    hf_logging.disable_progress_bar()
    try:
        tokenizer = load_tokenizer(path)
        model = load_model(path)
    except UserError as e:
        raise UserError(f"{what} {path}: {e}") from None
    except OSError as e:
        raise UserError(f"{what} {path}: cannot load a model from it ({str(e).splitlines()[0]})") from None
    return model.to(_device(args)).eval(), tokenizer


def _draw(model, tokenizer, prompts, args: argparse.Namespace, seed_offset: int = 0) -> list:
    from alignlab.eval.answers import draw_answer_rows
    from alignlab.generation import make_generator

    generator = make_generator(model, tokenizer, args.backend, batch_size=args.batch_size * args.n)
    return draw_answer_rows(generator, prompts, args.n, _params(args, seed_offset), args.batch_size)


def _scorer(spec: str, flag: str, where=None):
    """The scorer of ``flag`` ``spec``; its failures are one line naming the answer at fault
    (``rewards/guard.py``), its prompt's file and row where ``where`` knows them."""
    from alignlab.rewards import load_scorer
    from alignlab.rewards.guard import guard

    try:
        return guard(load_scorer(spec), f"{flag} {spec}", where)
    except UserError as e:
        raise UserError(f"{flag} {spec}: {e}") from None


def _write(report: dict[str, Any], out: str | None) -> None:
    if out is None:
        return
    try:
        Path(out).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write: {e.strerror or e}") from None


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------- alignlab eval length


def _length_parser() -> argparse.ArgumentParser:
    from alignlab.eval.length import UNITS

    parser = ArgumentParser(
        prog="alignlab eval length", allow_abbrev=False,
        description="Length exploitation: score and win rate against response length, and the length-controlled "
                    "win rate of answers A against answers B to the same prompts (AlpacaEval 2's GLM, simplified).",
        epilog="A and B each come from a file (--answers, --against: alignlab sample or decode output) or are drawn "
               "now (--model, --against-model, the latter with a seed of its own) on --task or --prompts. Answer j of "
               "a prompt in A is compared with answer j of the same prompt in B. Scores: the files' own, or --scorer for every answer (default when "
               "answers are drawn on --task: the task's gold reward, for every answer).")
    parser.add_argument("--answers", default=None, help="answers A: an alignlab sample/decode output file")
    parser.add_argument("--model", default=None, help="or draw answers A from this model")
    parser.add_argument("--against", default=None, help="answers B to compare A with: an output file")
    parser.add_argument("--against-model", default=None, help="or draw answers B from this model")
    parser.add_argument("--scorer", default=None, help="score every answer with this scorer (task:NAME[:gold|proxy], "
                                                       "rm:DIR, judge:DIR, fn:MODULE:FUNCTION, ...); a pairwise judge "
                                                       "also gives the preferences")
    parser.add_argument("--unit", default="chars", choices=UNITS, help="length unit (default chars, as AlpacaEval; "
                                                                       "tokens: generated tokens, end token excluded)")
    parser.add_argument("--bins", type=int, default=5, help="length bins (default 5)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals "
                                                                    "(default 1000; 0: none)")
    _add_drawing(parser, n=4)
    return parser


def _answer_set(path: str | None, model_dir: str | None, flags: tuple[str, str], args, prompts_cache: dict,
                seed_offset: int = 0) -> list:
    from alignlab.eval.answers import read_answer_rows

    if path is not None and model_dir is not None:
        raise UserError(f"give one of {flags[0]} or {flags[1]}, not both")
    if path is not None:
        return read_answer_rows(path)
    if "prompts" not in prompts_cache:
        prompts_cache["prompts"] = _prompt_records(args, f"{flags[1]} {model_dir}")
    model, tokenizer = _load(model_dir, args, flags[1])
    return _draw(model, tokenizer, prompts_cache["prompts"], args, seed_offset)


def _lengths(rows: list, unit: str) -> list[list[float]]:
    from alignlab.eval.length import text_length

    out = []
    for r in rows:
        if unit == "tokens":
            for i, a in enumerate(r.answers):
                if a.tokens is None:
                    raise UserError(f"{r.source}, row {r.row}: answer {i + 1} has no token count (num_tokens); use "
                                    "--unit chars or words")
            out.append([float(a.tokens) for a in r.answers])
        else:
            out.append([float(text_length(a.text, unit)) for a in r.answers])
    return out


def run_length(args: argparse.Namespace) -> dict[str, Any]:
    """The report of ``alignlab eval length`` (see ``eval/length.py``)."""
    from alignlab.eval.answers import same_prompts, score_rows
    from alignlab.eval.length import answer_summary, pair_summary
    from alignlab.eval.sampled import REFERENCE_SEED_OFFSET
    from alignlab.rewards.base import win_points

    _check_counts(args)
    if args.answers is None and args.model is None:
        raise UserError("alignlab eval length: give the answers to measure with --answers FILE or --model DIR")
    if args.model is None and args.against_model is None:
        for flag, value in (("--task", args.task), ("--prompts", args.prompts)):
            if value is not None:
                raise UserError(f"alignlab eval length: {flag} gives the prompts of answers drawn now (--model, "
                                "--against-model); the files hold their own"
                                + (f" (to score them with the task's reward: --scorer task:{value})"
                                   if flag == "--task" else ""))
    cache: dict = {}
    a_rows = _answer_set(args.answers, args.model, ("--answers", "--model"), args, cache)
    has_b = args.against is not None or args.against_model is not None
    # B's draws use a seed of their own (as eval/sampled.py's reference does): with the same seed the
    # native backend would couple each B answer to its A answer, and a win rate over coupled pairs is
    # not the win rate of independent answers
    b_rows = _answer_set(args.against, args.against_model, ("--against", "--against-model"), args, cache,
                         REFERENCE_SEED_OFFSET) if has_b else None
    if b_rows is not None:
        same_prompts(a_rows, b_rows)
    spec = args.scorer
    scorer = None
    if spec is None and (args.model or args.against_model) and args.task:
        spec = f"task:{args.task}"
    if spec is not None:
        from alignlab.rewards.guard import rows_of

        scorer = _scorer(spec, "--scorer")
        for rows in (a_rows, b_rows):  # one scorer for every answer, files included
            if rows is not None:
                scorer.where = rows_of(rows)  # a failure names the row of the file being scored
                score_rows(rows, scorer)
    report: dict[str, Any] = {"unit": args.unit, "scorer": spec}
    sides = [("a", a_rows, args.answers or args.model)] + ([("b", b_rows, args.against or args.against_model)]
                                                          if b_rows is not None else [])
    lengths = {}
    for key, rows, name in sides:
        lengths[key] = _lengths(rows, args.unit)
        scores = [a.score for r in rows for a in r.answers]
        report[key] = {"source": name, "prompts": len(rows), "unscored": scores.count(None),
                       **answer_summary([x for ls in lengths[key] for x in ls], scores, args.bins)}
    missing = [side["source"] for _, side in ((k, report[k]) for k, _, _ in sides) if side["unscored"]]
    if missing:
        report["note"] = (f"{' and '.join(missing)}: {sum(report[k]['unscored'] for k, _, _ in sides)} answers hold no "
                          "score, so mean score, its correlation with length and the win rates leave them out; "
                          "give --scorer SPEC to score every answer")
    if b_rows is None:
        return report
    la, lb, prefs, firsts, seconds, prompts = [], [], [], [], [], []
    unscored = 0
    for ra, rb, lens_a, lens_b in zip(a_rows, b_rows, lengths["a"], lengths["b"], strict=True):
        for j in range(min(len(ra.answers), len(rb.answers))):
            x, y = ra.answers[j], rb.answers[j]
            if scorer is None and (x.score is None or y.score is None):
                unscored += 1
                continue
            la.append(lens_a[j])
            lb.append(lens_b[j])
            firsts.append(x)
            seconds.append(y)
            prompts.append(ra.scorer_prompt)
    if scorer is not None and not scorer.compares_by_score:
        prefs = [float(p) for p in scorer.compare(prompts, [x.text for x in firsts], [y.text for y in seconds])]
        report["preference"] = f"{spec}: compare(A, B)"
    else:
        prefs = win_points([x.score for x in firsts], [y.score for y in seconds])
        report["preference"] = "score of A against score of B (a tie counts 1/2)"
    report["pairs"] = {"unscored": unscored,
                       **pair_summary(la, lb, prefs, args.bins, resamples=args.bootstrap, seed=args.seed)}
    return report


def format_length(report: dict[str, Any]) -> str:
    a, b = report["a"], report.get("b")
    unit = report["unit"]
    lines = [f"length exploitation ({unit}; scores: {report['scorer'] or 'from the files'})",
             f"{'':28}{'A':>10}" + (f"{'B':>10}" if b else "")]
    for label, key in (("answers", "answers"), (f"mean length ({unit})", "mean_length"), ("scored", "scored"),
                       ("mean score", "mean_score"),
                       ("corr(score, length)", "score_length_correlation")):
        row = f"{label:28}" + "".join(f"{_cell(side.get(key)):>10}" for side in ([a, b] if b else [a]))
        lines.append(row)
    lines.append(f"A: {a['source']}" + (f"\nB: {b['source']}" if b else ""))
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    pairs = report.get("pairs")
    if pairs and pairs.get("pairs"):
        iv = pairs.get("intervals", {})

        def ci(key: str) -> str:
            return f"  [{iv[key][0]:.3f}, {iv[key][1]:.3f}]" if key in iv else ""

        lines += [f"pairs A vs B: {pairs['pairs']} (A longer in {pairs['a_longer']:.0%}, shorter in "
                  f"{pairs['a_shorter']:.0%})",
                  f"  win rate of A                {pairs['win_rate']:.3f}{ci('win_rate')}",
                  f"  length-controlled win rate   {pairs['lc_win_rate']:.3f}{ci('lc_win_rate')}",
                  f"  length coefficient           {pairs['glm']['length_coef']:.3f}   (on tanh(d / "
                  f"{pairs['glm']['scale']:.3g}), d = len A - len B)",
                  "  win rate by length difference d:"]
        for row in pairs["win_rate_by_length_diff"]:
            lines.append(f"    d in [{row['low']:g}, {row['high']:g}]: {row['mean']:.3f} ({row['count']} pairs)")
    return "\n".join(lines)


def _cell(x: Any) -> str:
    if x is None:
        return "-"
    return str(x) if isinstance(x, int) else f"{x:.3f}"


def _command(parser, run, format_report, tokens: list[str], columns: bool = False) -> int:
    """One diagnostic command: read the flags (with ``columns``, ``--columns.FIELD NAME`` too, as
    ``args.columns``), measure, write the report with ``--out``, print the table."""
    from alignlab.data.write import check_report_path

    if columns:
        from alignlab.data.convert_cli import columns_flags

        args, rest = parser().parse_known_args(tokens)
        args.columns = columns_flags(rest, parser())
    else:
        args = parser().parse_args(tokens)
    check_report_path(args.out, args, "--answers", "--against", "--samples", "--pairs", "--prompts", "--perturbations")
    report = run(args)
    _write(report, args.out)
    print(format_report(report))
    return 0


def cmd_length(tokens: list[str]) -> int:
    """``alignlab eval length``: prints the table, writes the report with ``--out``."""
    return _command(_length_parser, run_length, format_length, tokens)


# ---------------------------------------------------------------- alignlab eval health


def _health_parser() -> argparse.ArgumentParser:
    from alignlab.eval.health import DISTINCT_UNITS, TOP_K

    parser = ArgumentParser(
        prog="alignlab eval health", allow_abbrev=False,
        description="Generation health of a model's samples: top-k entropy and top-k mass of its next-token "
                    "distribution over the generated positions, KL to a reference, distinct-n, length.",
        epilog="Samples are drawn now from --model (on --task or --prompts) or read from --samples (alignlab sample "
               "output; with --model, the model that wrote them, whose view of them is measured after "
               "re-tokenizing their text). Without --model only distinct-n and length are measured.")
    parser.add_argument("--model", default=None, help="the model whose samples are measured")
    parser.add_argument("--samples", default=None, help="read the samples from this alignlab sample output instead "
                                                        "of drawing them")
    parser.add_argument("--reference", default=None, help="also estimate KL(model || reference) on the samples")
    parser.add_argument("--top-k", type=int, default=TOP_K, help=f"k of the top-k statistics (default {TOP_K})")
    parser.add_argument("--distinct-unit", default="words", choices=DISTINCT_UNITS,
                        help="units of distinct-n (default words; tokens needs --model)")
    _add_drawing(parser, n=4)
    return parser


def _retokenize(rows: list, generator, tokenizer) -> tuple[list, list, int]:
    """(prompt ids, response ids, answers whose re-tokenized length differs from num_tokens) of
    every answer of rows read from a file; the response ends with the end-of-sequence token when
    the answer stopped on it."""
    eos = tokenizer.eos_token_id
    prompts, responses, mismatched = [], [], 0
    for r in rows:
        context = generator.prompt_ids(r.prompt)
        for a in r.answers:
            ids = tuple(tokenizer(a.text, add_special_tokens=False)["input_ids"])
            if a.tokens is not None and len(ids) != a.tokens:
                mismatched += 1
            prompts.append(context)
            responses.append(ids + ((eos,) if a.finished and eos is not None else ()))
    return prompts, responses, mismatched


def _check_kl_sampling(args: argparse.Namespace) -> None:
    """Refuse ``--reference`` for samples not drawn from the model's own distribution (temperature
    1, no top-p or top-k): the mean log-ratio over them is no estimate of KL(model || reference).
    A --samples file says how it was drawn in its sidecar (``alignlab sample``'s record)."""
    why = "the KL estimate needs the model's own samples (temperature 1, no top-p or top-k)"
    if args.samples is None:
        if args.temperature != 1.0:
            raise UserError(f"alignlab eval health: --reference with --temperature {args.temperature:g}: {why}; "
                            "draw at --temperature 1")
        return
    from alignlab.sample_cli import meta_path

    meta = meta_path(Path(args.samples))
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"alignlab eval health: --reference with --samples {args.samples}: {why}, and without its "
                        f"record {meta.name} (written by alignlab sample) how they were drawn is unknown") from None
    drawn = {"temperature": (record.get("temperature"), 1.0), "top_p": (record.get("top_p"), 1.0),
             "top_k": (record.get("top_k"), 0)}
    for key, (value, plain) in drawn.items():
        if value != plain:
            raise UserError(f"alignlab eval health: --reference with --samples {args.samples}: they were drawn with "
                            f"{key} {value} ({meta.name}); {why}")


def run_health(args: argparse.Namespace) -> dict[str, Any]:
    """The report of ``alignlab eval health`` (see ``eval/health.py``)."""
    from alignlab.eval.answers import read_answer_rows
    from alignlab.eval.health import health_report, units
    from alignlab.generation import make_generator

    _check_counts(args)
    if args.samples is None and args.model is None:
        raise UserError("alignlab eval health: give --model (to draw samples from it) or --samples FILE")
    if args.reference is not None and args.model is None:
        raise UserError("alignlab eval health: --reference needs --model, the model whose KL to it is estimated")
    if args.distinct_unit == "tokens" and args.model is None:
        raise UserError("alignlab eval health: --distinct-unit tokens needs --model, whose tokenizer makes the tokens")
    if args.reference is not None:
        _check_kl_sampling(args)
    model = tokenizer = None
    if args.model is not None:
        model, tokenizer = _load(args.model, args, "--model")
    if args.samples is not None:
        if args.task is not None or args.prompts is not None:
            raise UserError("alignlab eval health: --samples holds its own prompts; leave out --task and --prompts")
        rows = read_answer_rows(args.samples)[:args.limit]
        source = args.samples
    else:
        rows = _draw(model, tokenizer, _prompt_records(args, "--model"), args)
        source = f"{args.n} samples per prompt from {args.model}"
    report: dict[str, Any] = {"model": args.model, "reference": args.reference, "samples": source,
                              "prompts": len(rows)}
    prompts_ids, responses_ids, eos = [], [], None
    if model is not None:
        eos = tokenizer.eos_token_id
        if args.samples is not None:
            generator = make_generator(model, tokenizer, args.backend, batch_size=args.batch_size)
            prompts_ids, responses_ids, mismatched = _retokenize(rows, generator, tokenizer)
            report["retokenized_length_mismatches"] = mismatched
        else:
            prompts_ids = [s.prompt_ids for r in rows for s in r.samples]
            responses_ids = [s.token_ids for r in rows for s in r.samples]
    if args.distinct_unit == "tokens":
        it = iter(responses_ids)
        groups = [[[str(t) for t in next(it) if t != eos] for _ in r.answers] for r in rows]
    else:
        groups = [[units(a.text, args.distinct_unit) for a in r.answers] for r in rows]
    lengths = [float(len(g)) for gs in groups for g in gs]
    reference = None
    if args.reference is not None:
        reference, _ = _load(args.reference, args, "--reference")
    report.update(length_unit=args.distinct_unit,
                  **health_report(groups, lengths, model, getattr(tokenizer, "pad_token_id", 0) or 0, prompts_ids,
                                  responses_ids, reference, args.top_k, args.batch_size))
    return report


def format_health(report: dict[str, Any]) -> str:
    unit = report["length_unit"]
    lines = [f"generation health: {report['answers']} answers to {report['prompts']} prompts ({report['samples']})"]
    if "top_k" in report:
        k = report["top_k"]
        lines += [f"  top-{k} entropy (nats)      {_f(report['topk_entropy'], 4)}   (at most log {k} = "
                  f"{math.log(k):.3f}; {report['positions']} generated positions)",
                  f"  top-{k} mass                {_f(report['topk_mass'], 4)}",
                  f"  entropy (nats)             {_f(report['entropy'], 4)}"]
    if "kl" in report:
        lines.append(f"  KL to the reference        {_f(report['kl'], 4)} +- {_f(report['kl_stderr'], 4)} (nats, "
                     "sequence level)")
    d, dp = report["distinct"], report["distinct_per_prompt"]
    lines += [f"  mean length ({unit})       {_f(report['mean_length'], 2)}",
              f"  distinct-1/2/3 ({unit})    {' / '.join(_f(d[k]) for k in ('1', '2', '3'))}   (within a prompt: "
              f"{' / '.join(_f(dp[k]) for k in ('1', '2', '3'))})"]
    return "\n".join(lines)


def cmd_health(tokens: list[str]) -> int:
    """``alignlab eval health``: prints the table, writes the report with ``--out``."""
    return _command(_health_parser, run_health, format_health, tokens)


# ---------------------------------------------------------------- alignlab eval judge-bias


def _judge_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="alignlab eval judge-bias", allow_abbrev=False,
        description="Judge bias of any scorer: swap consistency and position preference, and the robustness of its "
                    "verdicts to perturbations of one answer (bandwagon, authority, distraction, reflection).",
        epilog="Pairs come from --pairs (preference pairs: shown chosen first on odd rows, rejected first on even "
               "ones, so that the better answer is not always in one slot), from --answers (alignlab sample output: "
               "each row's first two non-empty answers, the higher-scored one labelled better when the row has "
               "scores) or are drawn now (--task T --model M: two answers per held-out prompt, labelled by the "
               "task's gold reward). --columns.FIELD NAME (with --pairs): the column that holds FIELD (prompt, "
               "chosen, rejected) when it is named otherwise.")
    parser.add_argument("--judge", required=True, help="the scorer to test: judge:DIR, openai:URL,model=NAME, rm:DIR, "
                                                       "task:NAME[:gold|proxy], fn:MODULE:FUNCTION, ...")
    parser.add_argument("--pairs", default=None, help="preference pairs (prompt, chosen, rejected), any format")
    parser.add_argument("--skip-invalid", action="store_true", help="--pairs: skip bad rows (each is reported) "
                                                                    "instead of stopping at the first")
    parser.add_argument("--answers", default=None, help="or an alignlab sample/decode output file")
    parser.add_argument("--model", default=None, help="or draw two answers per prompt from this model (with --task "
                                                      "or --prompts)")
    parser.add_argument("--perturbations", default=None, help="a JSON file of perturbations (name -> template with "
                                                              "{answer}) instead of the built-in four")
    parser.add_argument("--no-perturbations", action="store_true", help="measure position bias only")
    _add_drawing(parser, n=2)
    return parser


def _judge_pairs(args: argparse.Namespace) -> tuple[list[str], list[str], list[str], list, str, Any]:
    """(prompts, first, second, labels, where they came from, a prompt's file and row: ``Guarded``'s
    ``where``)."""
    from alignlab.eval.answers import read_answer_rows, score_rows
    from alignlab.rewards.guard import rows_of

    given = [name for name in ("pairs", "answers", "model") if getattr(args, name) is not None]
    if len(given) != 1:
        raise UserError("alignlab eval judge-bias: give the pairs with one of --pairs, --answers or --model, "
                        + (f"not {' and '.join('--' + g for g in given)}" if given else "got none"))
    columns = getattr(args, "columns", None) or {}
    for flag, given in (("--skip-invalid", args.skip_invalid), ("--columns.FIELD", columns)):
        if given and args.pairs is None:
            raise UserError(f"alignlab eval judge-bias: {flag} is for --pairs")
    if args.pairs is not None:
        from alignlab.eval.rm import load_pairs

        pairs = load_pairs(args.pairs, subset_column=None, columns=columns,
                           skip_invalid=args.skip_invalid)[:args.limit]
        prompts, first, second, labels = [], [], [], []
        for i, p in enumerate(pairs):
            swap = i % 2 == 1
            prompts.append(p.prompt)
            first.append(p.rejected if swap else p.chosen)
            second.append(p.chosen if swap else p.rejected)
            labels.append("B" if swap else "A")
        return prompts, first, second, labels, args.pairs, rows_of(pairs)
    if args.answers is not None:
        rows = read_answer_rows(args.answers)[:args.limit]
        where = args.answers
    else:
        if args.n < 2:
            raise UserError(f"alignlab eval judge-bias: -n must be >= 2 to make pairs, got {args.n}")
        model, tokenizer = _load(args.model, args, "--model")
        rows = _draw(model, tokenizer, _prompt_records(args, "--model"), args)
        if args.task is not None:
            score_rows(rows, _scorer(f"task:{args.task}", "--task", rows_of(rows)))
        where = f"answers of {args.model}"
    prompts, first, second, labels = [], [], [], []
    for r in rows:
        said = [a for a in r.answers if a.text.strip()]
        if len(said) < 2:
            continue
        x, y = said[0], said[1]
        prompts.append(r.scorer_prompt)
        first.append(x.text)
        second.append(y.text)
        known = x.score is not None and y.score is not None and x.score != y.score
        labels.append(("A" if x.score > y.score else "B") if known else None)
    if not prompts:
        raise UserError(f"{where}: no row has two non-empty answers to make a pair of")
    return prompts, first, second, labels, where, rows_of(rows)


def run_judge_bias(args: argparse.Namespace) -> dict[str, Any]:
    """The report of ``alignlab eval judge-bias`` (see ``eval/judge_bias.py``)."""
    from alignlab.eval.judge_bias import load_perturbations, perturbation_suite, position_report

    _check_counts(args)
    if args.perturbations is not None and args.no_perturbations:
        raise UserError("alignlab eval judge-bias: --perturbations and --no-perturbations exclude each other")
    perturbations = load_perturbations(args.perturbations) if args.perturbations else None
    judge = _scorer(args.judge, "--judge")  # loaded first: a judge that cannot load fails before any sampling
    prompts, first, second, labels, where, judge.where = _judge_pairs(args)
    report: dict[str, Any] = {"judge": args.judge, "pairs_from": where, "pairs": len(prompts),
                              "position": position_report(judge, prompts, first, second).as_dict()}
    if not args.no_perturbations:
        report["perturbation"] = perturbation_suite(judge, prompts, first, second, perturbations, labels)
    return report


def format_judge_bias(report: dict[str, Any]) -> str:
    pos = report["position"]
    lines = [f"judge {report['judge']} on {report['pairs']} pairs ({report['pairs_from']})",
             f"  swap consistency     {_f(pos['consistency_rate'])}   ({pos['inconsistent']} inconsistent: favouring "
             f"slot 1 {_f(pos['prefers_first_slot'])}, slot 2 {_f(pos['prefers_second_slot'])}; "
             f"{pos['unparsed']} unparsed verdicts)"]
    suite = report.get("perturbation")
    if suite:
        base = suite["base"]
        if "accuracy" in base:
            lines.append(f"  accuracy             {_f(base['accuracy'])}   ({suite['labelled']} labelled pairs)")
        lines.append(f"  {'perturbation':<14}{'robust':>8}{'first':>8}{'second':>8}{'toward':>8}"
                     + (f"{'accuracy':>10}" if "accuracy" in base else ""))
        for name, e in suite["perturbations"].items():
            towards = [e[slot]["toward_perturbed"] for slot in ("first", "second")]
            toward = None if None in towards else sum(towards) / 2
            acc = ""
            if "accuracy" in base:
                accs = [e[slot]["accuracy"] for slot in ("first", "second")]
                acc = f"{_f(None if None in accs else sum(accs) / 2):>10}"
            lines.append(f"  {name:<14}{_f(e['robustness_rate']):>8}{_f(e['first']['robustness_rate']):>8}"
                         f"{_f(e['second']['robustness_rate']):>8}{_f(toward):>8}{acc}")
        lines.append(f"  robustness rate      {_f(suite['robustness_rate'])}   (share of verdicts unchanged; first/"
                     "second: which answer was perturbed)")
        if suite.get("unparsed"):
            lines.append(f"  unparsed verdicts    {suite['unparsed']} of {suite['pairs'] * (1 + 2 * len(suite['perturbations']))}"
                         "   (left out of accuracy and robustness; '-': no verdict parsed)")
    return "\n".join(lines)


def cmd_judge_bias(tokens: list[str]) -> int:
    """``alignlab eval judge-bias``: prints the table, writes the report with ``--out``."""
    return _command(_judge_parser, run_judge_bias, format_judge_bias, tokens, columns=True)
