"""`alignlab decode`: answer prompts through a decoding-time method (``alignlab.decoding``) and write
the answers as `alignlab sample` writes samples; on a testbed task, also measure them.

    alignlab decode --method best-of-n --model M --scorer SPEC --n 8 (--prompts FILE | --task T) --output O.jsonl
    alignlab decode --method qalign --model M --scorer SPEC --steps 16 --beta 1 (--prompts FILE | --task T) --output O.jsonl
    alignlab decode --method reward-guided --model M --scorer SPEC --candidates 10 --guide-weight 1 [--lookahead L] ...
    alignlab decode --method transfer-q --model BASE --aligned DPO_MODEL --reference REF_MODEL [--candidates 10]
        [--lookahead 20] [--guide-weight 1] [--implicit-beta 0.1] ...
    alignlab decode --method urial --model BASE [--prefix FILE] (--prompts FILE | --task T) --output O.jsonl

The output has one row per prompt in the `alignlab sample` format (prompt, completions, scores:
the scorer's reward of each answer, the rewards the pick used, samples, input_row). With
``--task`` the command also prints, and writes beside the output (``O.jsonl.summary.json``), the
held-out gold reward of the answers and of plain samples of the same model (one per answer,
drawn with another seed), the win rate of the answers against those plain samples (a tie counts
half), for best-of-n its KL to the model (the analytic bound log n − (n−1)/n and the estimate from the
candidates' rewards with a bootstrap interval, ``decoding/kl.py``) and the compute both spent, in
model forward tokens (prompt and generated tokens of every sequence sampled).

Settings that cannot work (a method that needs a scorer or a model and has none, n < 1, an unknown
method, a flag given to a method that does not read it) are one-line errors before the model loads.
The command does not resume: it writes the file at the end.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from alignlab.errors import ArgumentParser, UserError

METHODS = ("best-of-n", "qalign", "reward-guided", "transfer-q", "urial")
# Flags only some methods read (their default is None): given to another method they are a mistake.
METHOD_FLAGS = {"beta": ("qalign",), "lookahead": ("reward-guided", "transfer-q"), "aligned": ("transfer-q",),
                "reference": ("transfer-q",), "implicit_beta": ("transfer-q",)}


def _parser() -> argparse.ArgumentParser:
    from alignlab.cli import add_field_flags  # the command line imports this module: not at the top
    from alignlab.generation import SamplingParams
    from alignlab.models import DTYPES
    from alignlab.sample_cli import PROMPT_SETS, SAMPLING_HELP, default_backend
    from alignlab.tasks import task_names

    parser = ArgumentParser(prog="alignlab decode", allow_abbrev=False,
                            description="Answer prompts through a decoding-time alignment method and write the "
                                        "answers (as alignlab sample does); with --task, measure them against plain "
                                        "sampling.")
    parser.add_argument("--method", required=True, help=f"decoding method: {', '.join(METHODS)}")
    parser.add_argument("--model", required=True, help="the model that samples: a local directory or a hub name")
    parser.add_argument("--scorer", default=None, help="the scorer that picks (best-of-n): rm:DIR, "
                                                       "task:NAME[:gold|proxy], fn:MODULE:FUNCTION, judge:DIR, ...")
    parser.add_argument("--n", type=int, default=4, help="best-of-n: candidates per answer (default 4)")
    parser.add_argument("--pick-temperature", type=float, default=0.0,
                        help="soft best-of-n: pick candidate i with probability ∝ exp(r_i / T) (default 0: the best)")
    parser.add_argument("--calibrate", action="store_true",
                        help="pick by each reward's quantile among --calibration-samples plain samples of the prompt "
                             "(InfAlign's calibration)")
    parser.add_argument("--calibration-samples", type=int, default=16, help="plain samples per prompt for --calibrate")
    parser.add_argument("--steps", type=int, default=16, help="qalign: Metropolis-Hastings steps per answer (default 16)")
    parser.add_argument("--beta", type=float, default=None, help="qalign: the reward's temperature β in "
                                                                 "π·exp(r/β) (default 1, QAlign's; transfer-q's β "
                                                                 "is --implicit-beta)")
    parser.add_argument("--vote", action="store_true", help="qalign: answer with the chain's most frequent "
                                                            "answer after --burn-in steps, not its last state")
    parser.add_argument("--burn-in", type=int, default=0, help="qalign: steps left out of the vote (default 0)")
    parser.add_argument("--candidates", type=int, default=10, help="reward-guided, transfer-q: the most likely "
                                                                  "next tokens scored at each step (default 10)")
    parser.add_argument("--guide-weight", type=float, default=1.0, help="reward-guided, transfer-q: the reward's "
                                                                       "weight beside the logits (transfer-q's α; "
                                                                       "default 1)")
    parser.add_argument("--lookahead", type=int, default=None, help="reward-guided, transfer-q: greedy tokens each "
                                                                    "candidate is rolled out before it is valued "
                                                                    "(default 0 for reward-guided, ARGS; 20 for "
                                                                    "transfer-q)")
    parser.add_argument("--aligned", default=None, help="the aligned model a method uses: nudging's nudger, "
                                                        "transfer-q's guide (a local directory or a hub name)")
    parser.add_argument("--reference", default=None, help="transfer-q: the model --aligned was trained from; the "
                                                          "guide is β·log(aligned / reference)")
    parser.add_argument("--implicit-beta", type=float, default=None, help="transfer-q: β of the aligned model's "
                                                                          "implicit reward, the β it was trained "
                                                                          "with (default 0.1, DPO's)")
    parser.add_argument("--prefix", default=None, help="urial: the in-context prefix file (default: the shipped "
                                                       "preamble and three examples, decoding/prefixes/urial.txt)")
    parser.add_argument("--answers", type=int, default=1, help="answers per prompt (default 1)")
    parser.add_argument("--prompts", default=None, help="data file whose prompts are answered (any shape with a prompt)")
    parser.add_argument("--task", default=None, help=f"answer a testbed task's prompts and measure the answers: "
                                                     f"{', '.join(task_names())}")
    parser.add_argument("--prompt-set", default="eval", choices=PROMPT_SETS, help="with --task: eval (default) or train")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N prompts")
    parser.add_argument("--output", required=True, help="the .jsonl file to write")
    add_field_flags(parser, SamplingParams, "decode", helps=SAMPLING_HELP)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts answered together (default 16)")
    parser.add_argument("--backend", default=default_backend(), help=f"generation backend (default {default_backend()})")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights' dtype (default fp32)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model directory")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def _check(args) -> None:
    """Everything that can be wrong before a model loads; fills in the defaults that depend on the method."""
    if args.method not in METHODS:
        raise UserError(f"--method: unknown decoding method '{args.method}' (methods: {', '.join(METHODS)})")
    for flag, methods in METHOD_FLAGS.items():
        if getattr(args, flag) is not None and args.method not in methods:
            hint = "; transfer-q's β is --implicit-beta" if flag == "beta" and args.method == "transfer-q" else ""
            raise UserError(f"--{flag.replace('_', '-')}: {args.method} does not read it (it is for "
                            f"{' and '.join(methods)}){hint}")
    if args.method == "transfer-q":
        for flag, what in (("aligned", "the aligned model that guides (e.g. a DPO model)"),
                           ("reference", "the model the aligned model was trained from")):
            if getattr(args, flag) is None:
                raise UserError(f"--{flag}: transfer-q needs {what}; give --{flag} DIR")
    # the defaults of the flags above, now that they are known to be the method's
    args.beta = 1.0 if args.beta is None else args.beta
    args.implicit_beta = 0.1 if args.implicit_beta is None else args.implicit_beta
    args.lookahead = (20 if args.method == "transfer-q" else 0) if args.lookahead is None else args.lookahead
    if args.lookahead < 0 or not 0 < args.implicit_beta < float("inf"):
        raise UserError(f"--lookahead must be >= 0 and --implicit-beta > 0; got {args.lookahead}, {args.implicit_beta}")
    if args.method in ("best-of-n", "qalign", "reward-guided") and not args.scorer:
        raise UserError(f"--scorer: {args.method} needs a scorer (a reward); give one (e.g. --scorer task:arithmetic "
                        "or rm:DIR)")
    if args.method == "qalign" and (args.steps < 0 or not args.beta > 0 or not 0 <= args.burn_in <= args.steps):
        raise UserError(f"--steps must be >= 0, --beta > 0 and --burn-in in [0, steps]; got {args.steps}, {args.beta}, "
                        f"{args.burn_in}")
    for name in ("n", "answers", "batch_size", "calibration_samples"):
        value = getattr(args, name)
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.prefix is not None and args.method != "urial":
        raise UserError(f"--prefix: an in-context prefix is for urial, not {args.method}")
    if args.method == "urial":
        from alignlab.decoding.urial import read_prefix

        read_prefix(args.prefix)  # a missing or empty file fails now
    if not Path(args.output).suffix.lower() == ".jsonl":
        raise UserError(f"--output {args.output}: answers are written as JSON lines; name the file *.jsonl")


def cmd_decode(tokens: list[str]) -> int:
    from transformers.utils import logging as hf_logging

    from alignlab.cli import field_values
    from alignlab.generation import SamplingParams

    args = _parser().parse_args(tokens)
    _check(args)
    hf_logging.disable_progress_bar()
    from alignlab.sample_cli import SampleJob, _sampling_params

    params = _sampling_params(field_values(args, SamplingParams, "decode"))
    job = SampleJob(model=args.model, params=params, n=args.answers, prompts=args.prompts, task=args.task,
                    prompt_set=args.prompt_set, limit=args.limit, backend=args.backend, batch_size=args.batch_size,
                    scorer=args.scorer, dtype=args.dtype)
    result = run_decode(job, args)
    print(f"wrote {result['rows']} rows to {args.output}")
    if "summary" in result:
        print(format_summary(result["summary"]))
    return 0


def run_decode(job, args) -> dict[str, Any]:
    """Answer ``job``'s prompts through ``args.method``; write the rows, and with a task measure them."""
    from alignlab import generation
    from alignlab.decoding import BestOfN, estimate
    from alignlab.decoding.guided import RewardGuided
    from alignlab.decoding.qalign import QAlign
    from alignlab.decoding.urial import InContext, read_prefix
    from alignlab.models import load_model, load_tokenizer
    from alignlab.rewards import load_scorer
    from alignlab.rewards.base import reward_prompt, win_points
    from alignlab.sample_cli import _default_device, output_row, read_prompts

    prompts = read_prompts(job)
    scorer = load_scorer(args.scorer) if args.scorer else None
    tokenizer = load_tokenizer(job.model, trust_remote_code=args.trust_remote_code)
    model = load_model(job.model, dtype=job.dtype, trust_remote_code=args.trust_remote_code).to(_default_device())
    best_of = args.method == "best-of-n"
    base = generation.make_generator(model, tokenizer, job.backend,
                                     batch_size=job.batch_size * job.n * (args.n if best_of else 1))
    if best_of:
        method = BestOfN(base, scorer, args.n, temperature=args.pick_temperature, calibrate=args.calibrate,
                         calibration_samples=args.calibration_samples)
    elif args.method == "qalign":
        method = QAlign(base, scorer, args.steps, args.beta, vote=args.vote, burn_in=args.burn_in, tokenizer=tokenizer)
    elif args.method == "reward-guided":
        method = RewardGuided(model, tokenizer, scorer, k=args.candidates, weight=args.guide_weight,
                              lookahead=args.lookahead)
    elif args.method == "transfer-q":
        method = _transfer_q(args, job, model, tokenizer)
    else:
        method = InContext(base, read_prefix(args.prefix), tokenizer)
    acceptance = []
    rows, answers, candidate_rewards, forward, rollout = [], [], [], 0, 0
    for start in range(0, len(prompts), job.batch_size):
        chunk = prompts[start:start + job.batch_size]
        got = method.generate([p.prompt for p in chunk], job.n, job.params, start=start)
        report = method.last_report
        forward += report.forward_tokens
        rollout += getattr(report, "rollout_tokens", 0)
        if best_of:
            scores = report.picked_rewards
            candidate_rewards += [[r for per in report.candidate_rewards[i] for r in per] for i in range(len(chunk))]
        else:
            if args.method == "qalign":
                acceptance.append((report.accepted, report.proposals))
            scores = None
            if scorer is not None:
                flat = scorer.score([reward_prompt(p.prompt) for p in chunk for _ in range(job.n)],
                                    [s.text for group in got for s in group])
                scores = [flat[i * job.n:(i + 1) * job.n] for i in range(len(chunk))]
        for i, p in enumerate(chunk):
            rows.append(output_row(p, got[i], None if scores is None else scores[i]))
            answers.append(got[i])
    out = Path(args.output)
    try:
        out.write_text("".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows),
                       encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out}: cannot write: {e.strerror or e}") from None
    result: dict[str, Any] = {"rows": len(rows)}
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
    g_dec = gold.score(flat_prompts, [s.text for group in answers for s in group])
    g_plain = gold.score(flat_prompts, [s.text for group in plain for s in group])
    win = sum(win_points(g_dec, g_plain)) / len(g_dec)
    summary = {"method": args.method, "scorer": args.scorer, "task": job.task, "prompts": len(prompts),
               "gold": sum(g_dec) / len(g_dec), "gold_plain": sum(g_plain) / len(g_plain), "win_rate": win,
               "forward_tokens": forward, "forward_tokens_plain": plain_tokens}
    if best_of:
        summary.update(pick_temperature=args.pick_temperature, calibrate=args.calibrate,
                       **estimate(candidate_rewards, args.n).as_dict())  # with n
        if args.pick_temperature > 0 or args.calibrate:
            summary["kl_note"] = "the bound and the estimate are best-of-n's; a soft or calibrated pick moves less"
    elif args.method == "qalign":
        accepted, proposed = (sum(x) for x in zip(*acceptance, strict=True)) if acceptance else (0, 0)
        summary.update(steps=args.steps, beta=args.beta, vote=args.vote, burn_in=args.burn_in,
                       acceptance_rate=accepted / proposed if proposed else 0.0)
    elif args.method in ("reward-guided", "transfer-q"):
        summary.update(candidates=args.candidates, guide_weight=args.guide_weight, lookahead=args.lookahead,
                       rollout_tokens=rollout)
        if args.method == "transfer-q":
            summary.update(aligned=args.aligned, reference=args.reference, implicit_beta=args.implicit_beta)
    else:
        summary["prefix"] = str(args.prefix or "shipped")
    Path(f"{out}.summary.json").write_text(json.dumps(summary, indent=1))
    result["summary"] = summary
    return result


def _transfer_q(args, job, model, tokenizer):
    """Transfer Q* over the base ``model``: the aligned and reference models' tokenizers are checked
    to share its vocabulary before either model loads."""
    from alignlab.decoding.transfer_q import TransferQ, check_vocabulary
    from alignlab.models import load_model, load_tokenizer
    from alignlab.sample_cli import _default_device

    paths = {"aligned": args.aligned, "reference": args.reference}
    toks = {role: load_tokenizer(path, trust_remote_code=args.trust_remote_code) for role, path in paths.items()}
    check_vocabulary([(f"the base model {job.model}", tokenizer),
                      *((f"the {role} model {paths[role]}", tok) for role, tok in toks.items())])
    aligned, reference = (load_model(paths[role], dtype=job.dtype, trust_remote_code=args.trust_remote_code)
                          .to(_default_device()) for role in paths)
    return TransferQ(model, tokenizer, aligned, reference, k=args.candidates, lookahead=args.lookahead,
                     weight=args.guide_weight, beta=args.implicit_beta)


def format_summary(s: dict[str, Any]) -> str:
    head = f"{s['method']}" + (f" (n {s['n']})" if "n" in s else "")
    lines = [f"{head} on {s['prompts']} {s['task']} prompts" + (f", scorer {s['scorer']}:" if s["scorer"] else ":"),
             f"  gold reward            {s['gold']:.4f}   (plain sampling {s['gold_plain']:.4f})",
             f"  win rate vs plain      {s['win_rate']:.4f}"]
    if "kl" in s:
        lines.append(f"  KL to the model        {s['kl']:.4f} [{s['kl_low']:.4f}, {s['kl_high']:.4f}]   "
                     f"(bound log n - (n-1)/n = {s['kl_bound']:.4f})")
    if "acceptance_rate" in s:
        lines.append(f"  acceptance rate        {s['acceptance_rate']:.4f}   ({s['steps']} steps, beta {s['beta']:g})")
    lines.append(f"  forward tokens         {s['forward_tokens']}   (plain sampling {s['forward_tokens_plain']})"
                 + (f", {s['rollout_tokens']} in rollouts" if s.get("rollout_tokens") else ""))
    return "\n".join(lines)
