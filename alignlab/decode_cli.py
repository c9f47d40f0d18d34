"""`alignlab decode`: answer prompts through a decoding-time method (``alignlab.decoding``) and write
the answers as `alignlab sample` writes samples; on a testbed task, also measure them.

    alignlab decode --method best-of-n --model M --scorer SPEC --n 8 (--prompts FILE | --task T) --output O.jsonl
    alignlab decode --method qalign --model M --scorer SPEC --steps 16 --beta 1 (--prompts FILE | --task T) --output O.jsonl
    alignlab decode --method reward-guided --model M --scorer SPEC --candidates 10 --guide-weight 1 [--lookahead L] ...
    alignlab decode --method transfer-q --model BASE --aligned DPO_MODEL --reference REF_MODEL [--candidates 10]
        [--lookahead 20] [--guide-weight 1] [--implicit-beta 0.1] ...
    alignlab decode --method urial --model BASE [--prefix FILE] (--prompts FILE | --task T) --output O.jsonl
    alignlab decode --method nudging --model BASE --aligned NUDGER [--threshold 0.3] --temperature 0 ...

The output has one row per prompt in the `alignlab sample` format (prompt, completions, scores:
the scorer's reward of each answer, the rewards the pick used, samples, input_row). With
``--task`` the command also prints, and writes beside the output (``O.jsonl.summary.json``), the
held-out gold reward of the answers and of plain samples of the same model (one per answer,
drawn with another seed), the win rate of the answers against those plain samples (a tie counts
half), for best-of-n its KL to the model (the analytic bound log n − (n−1)/n and the estimate from the
candidates' rewards with a bootstrap interval, ``decoding/kl.py``) and the compute both spent, in
model forward tokens (prompt and generated tokens of every sequence sampled); for nudging also
the share of the answers' tokens the aligned model wrote.

Settings that cannot work (a method that needs a scorer or a model and has none, n < 1, an unknown
method, a flag given to a method that does not read it, models of different vocabularies for
transfer-q) are one-line errors before the model loads. The answers are written a chunk at a time
and the command resumes a stopped run (``decode_record.py``); ``--overwrite`` starts over.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from alignlab.decoding.spec import (
    GREEDY_ONLY,
    METHODS,
    SEARCHES,
    add_method_flags,
    build_method,
    check_method,
    method_models,
    method_scorer,
)
from alignlab.errors import ArgumentParser, UserError
from alignlab.field_flags import add_field_flags, field_values

__all__ = ["METHODS", "cmd_decode", "run_decode"]


def _parser() -> argparse.ArgumentParser:
    from alignlab.generation import SamplingParams
    from alignlab.models import DTYPES
    from alignlab.sample_cli import PROMPT_SETS, SAMPLING_HELP, default_backend
    from alignlab.tasks import task_names

    parser = ArgumentParser(prog="alignlab decode", allow_abbrev=False,
                            description="Answer prompts through a decoding-time alignment method and write the "
                                        "answers (as alignlab sample does); with --task, measure them against plain "
                                        "sampling.")
    add_method_flags(parser)
    parser.add_argument("--model", required=True, help="the model that samples: a local directory or a hub name")
    parser.add_argument("--answers", type=int, default=1, help="answers per prompt (default 1)")
    parser.add_argument("--prompts", default=None, help="data file whose prompts are answered (any shape with a prompt)")
    parser.add_argument("--task", default=None, help=f"answer a testbed task's prompts and measure the answers: "
                                                     f"{', '.join(task_names())}")
    parser.add_argument("--prompt-set", default="eval", choices=PROMPT_SETS, help="with --task: eval (default) or train")
    parser.add_argument("--prompt-column", default=None, help="with --prompts: the column that holds the prompt "
                                                              "(default prompt)")
    parser.add_argument("--split", default=None, help="with --prompts: split of a dataset directory or hub dataset")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N prompts")
    parser.add_argument("--output", required=True, help="the .jsonl file to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output and the summary or sample record beside it")
    add_field_flags(parser, SamplingParams, "decode", helps=SAMPLING_HELP)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts answered together (default 16)")
    parser.add_argument("--backend", default=default_backend(), help=f"generation backend (default {default_backend()})")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights' dtype (default fp32)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model directory")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def summary_path(out: Path) -> Path:
    """Where a run's summary is written beside its answers (``O.jsonl.summary.json``)."""
    return Path(f"{out}.summary.json")


def _check(args) -> None:
    """Everything that can be wrong before a model loads."""
    check_method(args)
    if args.method in GREEDY_ONLY and (args.temperature != 0 or args.stop_token_ids):
        raise UserError(f"{args.method} decodes greedily, as the paper does, and ends at either model's end token: "
                        "pass --temperature 0 and no --stop-token-ids")
    for name, plain in (("top_p", 1.0), ("top_k", 0)):
        if args.method in SEARCHES and getattr(args, name) != plain:
            raise UserError(f"--{name.replace('_', '-')}: {args.method} does not read it (it samples from the "
                            "softmax of its own scores at --temperature; the flag is for best-of-n, qalign and urial)")
    for name in ("answers", "batch_size"):
        value = getattr(args, name)
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not Path(args.output).suffix.lower() == ".jsonl":
        raise UserError(f"--output {args.output}: answers are written as JSON lines; name the file *.jsonl")
    out = Path(args.output).expanduser()
    if out.is_dir():
        raise UserError(f"--output {args.output}: is a folder; name the file to write (*.jsonl)")
    from alignlab.data.write import blocking_file, check_not_input

    if not out.parent.is_dir():
        above = blocking_file(out.parent)
        if above is not None:
            raise UserError(f"--output {args.output}: '{above}' is a file, not a folder")
        raise UserError(f"--output {args.output}: folder '{out.parent}' does not exist")
    check_not_input(args.output, ("the prompt file", "--prompts", args.prompts))
    if not args.overwrite:
        from alignlab.sample_cli import meta_path

        if out.is_file() and out.stat().st_size and not meta_path(out).is_file():
            raise UserError(f"--output {args.output}: {out} exists and has no record of an alignlab decode run beside "
                            f"it ({meta_path(out).name}); pass --overwrite to replace it, or choose another --output")
        if summary_path(out).is_file() and not out.is_file():
            raise UserError(f"--output {args.output}: {summary_path(out)} exists, of answers no longer there; pass "
                            "--overwrite to replace it, or choose another --output")


def cmd_decode(tokens: list[str]) -> int:
    from transformers.utils import logging as hf_logging

    from alignlab.generation import SamplingParams

    args = _parser().parse_args(tokens)
    _check(args)
    hf_logging.disable_progress_bar()
    from alignlab.sample_cli import SampleJob, _sampling_params

    params = _sampling_params(field_values(args, SamplingParams, "decode"))
    job = SampleJob(model=args.model, params=params, n=args.answers, prompts=args.prompts, task=args.task,
                    prompt_set=args.prompt_set, prompt_column=args.prompt_column, split=args.split, limit=args.limit, backend=args.backend, batch_size=args.batch_size,
                    scorer=args.scorer, dtype=args.dtype)
    result = run_decode(job, args)
    if not result["written"]:
        print(f"{args.output} already holds all {result['rows']} rows (--overwrite decodes again)")
    else:
        resumed = f", resumed after row {result['resumed_at']}" if result["resumed_at"] else ""
        print(f"wrote {result['written']} rows to {args.output} ({result['rows']} in all{resumed})")
    if "summary" in result:
        print(format_summary(result["summary"]))
    return 0


def run_decode(job, args) -> dict[str, Any]:
    """Answer ``job``'s prompts through ``args.method``; write the rows, and with a task measure them."""
    from alignlab import generation
    from alignlab.decode_record import append_lines, chunks_path
    from alignlab.decoding import estimate
    from alignlab.models import load_model, load_tokenizer
    from alignlab.rewards import load_scorer
    from alignlab.rewards.base import reward_prompt, win_points
    from alignlab.rewards.guard import guard, rows_of
    from alignlab.sample_cli import _default_device, check_context, output_row, read_prompts, rows_kept_text

    prompts = read_prompts(job)
    out = Path(args.output).expanduser()
    kept, chunks = _start(out, job, args, prompts)
    if kept == len(prompts) and (job.task is None or summary_path(out).is_file()):  # finished earlier
        result: dict[str, Any] = {"rows": kept, "resumed_at": kept, "written": 0}
        if job.task is not None:
            result["summary"] = json.loads(summary_path(out).read_text())
        return result
    scorer = method_scorer(args)
    if scorer is not None:  # a failing scorer is one line naming the answer, not a traceback
        scorer = guard(scorer, f"--scorer {args.scorer}", rows_of(prompts))
    tokenizer = load_tokenizer(job.model, trust_remote_code=args.trust_remote_code)
    model = load_model(job.model, dtype=job.dtype, trust_remote_code=args.trust_remote_code).to(_default_device())
    job.params.check_stops(model, "--stop-token-ids")
    best_of = args.method == "best-of-n"
    base = generation.make_generator(model, tokenizer, job.backend,
                                     batch_size=job.batch_size * job.n * (args.n if best_of else 1))
    others = method_models(args, job.dtype, args.trust_remote_code, _default_device(), tokenizer, job.model)
    method = build_method(args, model, tokenizer, base, scorer, others)
    framing = ""
    if args.method == "urial":
        size = len(tokenizer(method.prefix, add_special_tokens=False)["input_ids"])
        framing = (f" with urial's in-context prefix ({args.prefix or 'the shipped one'}; the prefix alone is {size} "
                   "tokens, --prefix FILE gives a shorter one)")
    check_context(method, model, tokenizer, prompts, job.params.max_new_tokens, framing)
    for start in range(kept, len(prompts), job.batch_size):
        chunk = prompts[start:start + job.batch_size]
        try:  # a failure (the scorer's, mostly) says what is kept of the run
            got = method.generate([p.prompt for p in chunk], job.n, job.params, start=start)
            report = method.last_report
            tally: dict[str, Any] = {"start": start, "rows": len(chunk), "forward": report.forward_tokens,
                                     "rollout": getattr(report, "rollout_tokens", 0)}
            if best_of:
                scores = report.picked_rewards
                tally["candidate_rewards"] = [[r for per in report.candidate_rewards[i] for r in per]
                                              for i in range(len(chunk))]
            else:
                if args.method == "qalign":
                    tally.update(accepted=report.accepted, proposed=report.proposals)
                if args.method == "nudging":
                    tally.update(nudged=report.nudged_tokens, answer_tokens=report.answer_tokens)
                scores = None
                if scorer is not None:
                    flat = scorer.score([reward_prompt(p.prompt) for p in chunk for _ in range(job.n)],
                                        [s.text for group in got for s in group])
                    scores = [flat[i * job.n:(i + 1) * job.n] for i in range(len(chunk))]
        except UserError as e:
            raise UserError(f"{e}; {rows_kept_text(out, start)}") from None
        lines = [json.dumps(output_row(p, got[i], None if scores is None else scores[i]), ensure_ascii=False,
                            allow_nan=False) + "\n" for i, p in enumerate(chunk)]
        try:
            append_lines(out, "".join(lines))
            append_lines(chunks_path(out), json.dumps(tally, allow_nan=False) + "\n")  # after its rows
        except OSError as e:
            raise UserError(f"{out}: cannot write: {e.strerror or e}") from None
        chunks.append(tally)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    answers = [[s["text"] for s in row["samples"]] for row in rows]
    forward = sum(c["forward"] for c in chunks)
    rollout = sum(c["rollout"] for c in chunks)
    result = {"rows": len(rows), "resumed_at": kept, "written": len(rows) - kept}
    if job.task is None:
        return result
    gold = load_scorer(f"task:{job.task}:gold")
    texts = [p.prompt for p in prompts]
    plain_params = replace(job.params, seed=(job.params.seed + 1) % (2**63))
    plain, plain_tokens = [], 0
    for start in range(0, len(prompts), job.batch_size):
        chunk = base.generate(texts[start:start + job.batch_size], job.n, plain_params, start=start)
        plain += chunk
        plain_tokens += sum(len(s.prompt_ids) + len(s.token_ids) for group in chunk for s in group)
    flat_prompts = [t for t in texts for _ in range(job.n)]
    g_dec = gold.score(flat_prompts, [text for group in answers for text in group])
    g_plain = gold.score(flat_prompts, [s.text for group in plain for s in group])
    win = sum(win_points(g_dec, g_plain)) / len(g_dec)
    summary = {"method": args.method, "scorer": args.scorer, "task": job.task, "prompts": len(prompts),
               "gold": sum(g_dec) / len(g_dec), "gold_plain": sum(g_plain) / len(g_plain), "win_rate": win,
               "forward_tokens": forward, "forward_tokens_plain": plain_tokens,
               "temperature": args.temperature}
    if best_of:
        candidate_rewards = [per for c in chunks for per in c["candidate_rewards"]]
        summary.update(pick_temperature=args.pick_temperature, calibrate=args.calibrate,
                       **estimate(candidate_rewards, args.n).as_dict())  # with n
        if args.pick_temperature > 0:  # a calibrated hard pick is best-of-n's own
            summary["kl_note"] = "the bound and the estimate are best-of-n's; a soft pick moves less"
    elif args.method == "qalign":
        accepted, proposed = (sum(c[k] for c in chunks) for k in ("accepted", "proposed"))
        summary.update(steps=args.steps, beta=args.beta, vote=args.vote, burn_in=args.burn_in,
                       acceptance_rate=accepted / proposed if proposed else 0.0)
    elif args.method in ("reward-guided", "transfer-q"):
        summary.update(candidates=args.candidates, guide_weight=args.guide_weight, lookahead=args.lookahead,
                       rollout_tokens=rollout)
        if args.method == "transfer-q":
            summary.update(aligned=args.aligned, reference=args.reference, implicit_beta=args.implicit_beta)
    elif args.method == "nudging":
        nudged, tokens = (sum(c[k] for c in chunks) for k in ("nudged", "answer_tokens"))
        summary.update(aligned=args.aligned, threshold=args.threshold,
                       nudged_share=nudged / tokens if tokens else 0.0)
    else:
        summary["prefix"] = str(args.prefix or "shipped")
    try:
        summary_path(out).write_text(json.dumps(summary, indent=1))
    except OSError as e:  # the answers are written; say what is missing, in one line
        raise UserError(f"{summary_path(out)}: cannot write: {e.strerror or e} (the answers are in {out})") from None
    result["summary"] = summary
    return result


def _start(out: Path, job, args, prompts) -> tuple[int, list[dict[str, Any]]]:
    """The rows of ``out`` an earlier run of the same settings wrote, and their chunks' tally
    (``decode_record.py``), with the record of this run's settings written; with ``--overwrite``
    (or no earlier run) none, the earlier files removed."""
    from alignlab.decode_record import check_same_decode, chunks_path, method_settings, resumable_rows
    from alignlab.sample_cli import FORMAT, _write_meta, check_same_run, meta_path, prompts_hash, rows_kept

    header = {"format": FORMAT, **job.record(), "num_prompts": len(prompts), "prompts_sha256": prompts_hash(prompts),
              "decode": method_settings(args)}
    meta = meta_path(out)
    kept, chunks = 0, []
    try:
        if args.overwrite or not out.is_file() or not out.stat().st_size:  # no rows of an earlier run
            for stale in (out, summary_path(out), meta, chunks_path(out)):  # of the run this one replaces
                if stale.is_file():
                    stale.unlink()
        else:
            try:
                old = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
            except ValueError as e:
                raise UserError(f"{meta}: cannot read the record of the earlier run ({e}); pass --overwrite to "
                                "start over") from None
            old = old if isinstance(old, dict) else {}
            def flags(record):  # as decode's flags name them: the sample record's n is --answers
                return {("answers" if k == "n" else k): v for k, v in record.items() if k != "decode"}

            check_same_decode(old, header, out)  # first: a file of alignlab sample is named as such
            check_same_run(flags(old), flags(header), out)
            kept, chunks = resumable_rows(out, rows_kept(out, prompts), job.batch_size, len(prompts))
            if kept < len(prompts) and summary_path(out).is_file():
                summary_path(out).unlink()  # of the rows before this run's
        if not meta.is_file():
            _write_meta(meta, header)
    except OSError as e:
        raise UserError(f"{out}: cannot write: {e.strerror or e}") from None
    return kept, chunks


def format_summary(s: dict[str, Any]) -> str:
    head = f"{s['method']}" + (f" (n {s['n']})" if "n" in s else "")
    plain = "plain greedy" if s.get("temperature") == 0 else "plain sampling"
    lines = [f"{head} on {s['prompts']} {s['task']} prompts" + (f", scorer {s['scorer']}:" if s["scorer"] else ":"),
             f"  gold reward            {s['gold']:.4f}   ({plain} {s['gold_plain']:.4f})",
             f"  win rate vs plain      {s['win_rate']:.4f}"]
    if "kl" in s:
        lines.append(f"  KL to the model        {s['kl']:.4f} [{s['kl_low']:.4f}, {s['kl_high']:.4f}]   "
                     f"(bound log n - (n-1)/n = {s['kl_bound']:.4f})")
        if "kl_note" in s:
            lines.append(f"                         ({s['kl_note']})")
    if "acceptance_rate" in s:
        lines.append(f"  acceptance rate        {s['acceptance_rate']:.4f}   ({s['steps']} steps, beta {s['beta']:g})")
    if "nudged_share" in s:
        lines.append(f"  nudged share           {s['nudged_share']:.4f}   (of the answers' tokens, by {s['aligned']}; "
                     f"threshold {s['threshold']:g})")
    lines.append(f"  forward tokens         {s['forward_tokens']}   ({plain} {s['forward_tokens_plain']})"
                 + (f", {s['rollout_tokens']} in rollouts" if s.get("rollout_tokens") else ""))
    return "\n".join(lines)
