"""Rewards behind one interface (``base.Scorer``): score responses, compare two of them.

Modules: ``base`` (the interface), ``model`` (the reward-model network: backbone and head),
``learned`` (trained reward models and a DPO policy's implicit reward as scorers), ``programs``
(testbed gold rewards and verifiers, length penalty, user functions), ``overlong`` (DAPO's soft
overlong punishment of sampled token counts), ``bleu`` (sentence BLEU
against references), ``judge`` and ``http_judge`` (LLM judges, local or over an OpenAI-compatible
endpoint), ``combine`` (weighted sums, log-sigmoid sums, routing by prompt).

``load_scorer(spec)`` builds a scorer from a short text, as the command line takes it:

    rm:DIR  (or a reward-model DIR)      a model trained with --method reward_model
    task:NAME[:gold|proxy]               a testbed task's reward (arithmetic, chainsum, sentiment, constraints)
    length[:coef=0.01,target=0,unit=words]   a length penalty
    overlong:cache=N[,max=M,penalty=1]   DAPO's soft overlong punishment of the tokens sampled
                                         (max: the run's max_new_tokens); only where samples are
    fn:MODULE:FUNCTION                   a user function f(prompt, response) -> number
    bleu:REFS.jsonl                      sentence BLEU against {"prompt", "references"} rows
    implicit:policy=DIR,reference=DIR[,beta=0.1]   a DPO policy's implicit reward
    judge:DIR[,swap=true,max_new_tokens=512,mode=pairwise|pointwise,template=FILE]   an LLM judge: a local
                                         causal LM, pairwise (asked in both orders) or rating one answer
    openai:URL,model=NAME[,swap=true,timeout=120,retries=3,backoff=1,workers=4]   a pairwise judge
                                         behind an OpenAI-compatible endpoint: seconds a request may
                                         take, times it is asked again, the first wait (doubling),
                                         requests at once
"""

from __future__ import annotations

import math
from pathlib import Path

from alignlab.errors import UserError
from alignlab.rewards.base import Scorer
from alignlab.rewards.bleu import BleuReward
from alignlab.rewards.combine import LogSigmoidSum, Routed, WeightedSum, by_task, reference_rewards
from alignlab.rewards.judge import CallableBackend, HFBackend, PairwiseJudge, PointwiseJudge, swap_consistency
from alignlab.rewards.learned import ImplicitReward, RewardModelScorer
from alignlab.rewards.overlong import WHERE, OverlongPunishment
from alignlab.rewards.programs import FunctionReward, LengthPenalty, TaskReward

SPECS = ("rm", "task", "length", "overlong", "fn", "bleu", "implicit", "judge", "openai")


def _options(text: str, what: str, positional: str | None = None) -> dict[str, str]:
    """``a=1,b=2`` as a dict; a first item without ``=`` is the ``positional`` option. An option
    given twice is an error (not the last one silently winning)."""
    out: dict[str, str] = {}
    for i, item in enumerate(p for p in text.split(",") if p):
        key, sep, value = item.partition("=")
        if not sep:
            if i == 0 and positional:
                out[positional] = item
                continue
            raise UserError(f"scorer '{what}': expected key=value, got '{item}'")
        if key.strip() in out:
            raise UserError(f"scorer '{what}': option '{key.strip()}' is given twice")
        out[key.strip()] = value.strip()
    return out


def _flag(value: str, key: str, what: str) -> bool:
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise UserError(f"scorer '{what}': {key} must be true or false, got '{value}'")


def _number(value: str, key: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UserError(f"scorer '{what}': {key} must be a number, got '{value}'") from None


def _integer(value: str, key: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"scorer '{what}': {key} must be a whole number, got '{value}'") from None


def _known(opts: dict[str, str], allowed: set[str], what: str) -> None:
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise UserError(f"scorer '{what}': unknown option {unknown[0]!r} (options: {', '.join(sorted(allowed))})")


def _implicit(rest: str, spec: str) -> tuple[str, str, float]:
    """An ``implicit:`` spec's policy and reference folders and its β, checked (β finite and > 0)."""
    opts = _options(rest, spec, positional="policy")
    _known(opts, {"policy", "reference", "beta"}, spec)
    if "policy" not in opts or "reference" not in opts:
        raise UserError(f"scorer '{spec}': give policy=DIR,reference=DIR")
    beta = _number(opts.get("beta", "0.1"), "beta", spec)
    if not (math.isfinite(beta) and beta > 0):
        raise UserError(f"scorer '{spec}': beta must be a finite number > 0 (the β the policy was trained with), "
                        f"got {opts['beta']}")
    return opts["policy"], opts["reference"], beta


def spec_problem(spec: str, folder: Path | None = None) -> str | None:
    """What is wrong with scorer ``spec`` that shows without loading anything (an unknown kind, an
    unknown task, a reward-model or policy folder that is not there), its relative paths read from
    ``folder`` (default: the current one); None when nothing shows. A harness that runs many jobs
    checks its scorers with this before the first, so a typo does not surface after hours."""
    from alignlab.rewards.model import is_reward_model_dir

    def where(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() or folder is None else folder / p

    kind, _, rest = spec.partition(":")
    if kind not in SPECS:
        if where(spec).is_dir() and is_reward_model_dir(where(spec)):
            return None
        return f"scorer '{spec}': unknown kind '{kind}' (kinds: {', '.join(SPECS)}; or a reward-model directory)"
    if kind == "rm":
        if not where(rest).is_dir():
            return f"scorer '{spec}': reward-model folder '{rest}' not found"
        if not is_reward_model_dir(where(rest)):
            return f"scorer '{spec}': '{rest}' is not a reward model (train one with --method reward_model)"
    if kind == "task":
        from alignlab.tasks import task_names

        name = rest.partition(":")[0]
        if name not in task_names():
            return f"scorer '{spec}': unknown task '{name}' (tasks: {', '.join(task_names())})"
    if kind == "implicit":
        try:
            folders = dict(zip(("policy", "reference"), _implicit(rest, spec)[:2], strict=True))
        except UserError as e:
            return str(e)
        for key, path in folders.items():
            if not where(path).is_dir():
                return f"scorer '{spec}': {key} folder '{path}' not found"
    return None


def load_scorer(spec: str, tokenizer=None, sampled: bool = False, max_new_tokens: int | None = None) -> Scorer:
    """A scorer from its text form (see the module docstring); a UserError for a bad one.
    ``tokenizer`` counts the tokens of ``length:unit=tokens`` (an online run gives its policy's).
    ``sampled``: the caller scores samples through ``Scorer.score_sampled``, with the token counts
    the generator sampled (``overlong`` is refused elsewhere); ``max_new_tokens``: the sampling
    limit, ``overlong``'s default ``max``."""
    from alignlab.rewards.model import is_reward_model_dir

    kind, _, rest = spec.partition(":")
    if kind not in SPECS:
        if Path(spec).expanduser().is_dir() and is_reward_model_dir(Path(spec).expanduser()):
            kind, rest = "rm", spec
        else:
            raise UserError(f"scorer '{spec}': unknown kind '{kind}' (kinds: {', '.join(SPECS)}; or a reward-model "
                            "directory)")
    if kind == "rm":
        return RewardModelScorer(rest)
    if kind == "task":
        name, _, which = rest.partition(":")
        return TaskReward(name, which or "gold")
    if kind == "length":
        opts = _options(rest, spec)
        _known(opts, {"coef", "target", "unit"}, spec)
        unit = opts.get("unit", "words")
        if unit == "tokens" and tokenizer is None:
            raise UserError(f"scorer '{spec}': unit=tokens counts the policy's tokens, and there is no policy "
                            "here (it works as an online run's reward); use unit=words or unit=chars")
        return LengthPenalty(_number(opts.get("coef", "0.01"), "coef", spec),
                             int(_number(opts.get("target", "0"), "target", spec)), unit, tokenizer=tokenizer)
    if kind == "overlong":
        return _overlong(rest, spec, sampled, max_new_tokens)
    if kind == "fn":
        return FunctionReward(rest)
    if kind == "bleu":
        return BleuReward.from_file(rest)
    if kind == "implicit":
        return ImplicitReward.from_dirs(*_implicit(rest, spec))
    if kind == "judge":
        opts = _options(rest, spec, positional="model")
        _known(opts, {"model", "swap", "max_new_tokens", "mode", "template"}, spec)
        swap = _flag(opts.get("swap", "true"), "swap", spec)
        tokens = int(_number(opts.get("max_new_tokens", "512"), "max_new_tokens", spec))
        mode = opts.get("mode", "pairwise")
        if mode not in ("pairwise", "pointwise"):
            raise UserError(f"scorer '{spec}': mode must be pairwise or pointwise, got '{mode}'")
        template = {}
        if "template" in opts:
            path = Path(opts["template"]).expanduser()
            if not path.is_file():
                raise UserError(f"scorer '{spec}': template file '{path}' not found")
            template = {"template": path.read_text(encoding="utf-8")}
        backend = HFBackend.from_pretrained(opts["model"], max_new_tokens=tokens)
        if mode == "pointwise":
            if "swap" in opts:
                raise UserError(f"scorer '{spec}': swap is for a pairwise judge; a pointwise one rates one answer")
            return PointwiseJudge(backend, name=spec, **template)
        return PairwiseJudge(backend, swap=swap, name=spec, **template)
    from alignlab.rewards.http_judge import OpenAIBackend

    url, _, tail = rest.partition(",")
    opts = _options(tail, spec)
    _known(opts, {"model", "swap", "timeout", "retries", "backoff", "workers"}, spec)
    if "model" not in opts:
        raise UserError(f"scorer '{spec}': give the endpoint's model, e.g. openai:http://host/v1,model=NAME")
    swap = _flag(opts.get("swap", "true"), "swap", spec)
    settings = {key: _number(opts[key], key, spec) for key in ("timeout", "backoff") if key in opts}
    settings.update({key: _integer(opts[key], key, spec) for key in ("retries", "workers") if key in opts})
    return PairwiseJudge(OpenAIBackend(url, opts["model"], **settings), swap=swap, name=spec)


def _overlong(rest: str, spec: str, sampled: bool, max_new_tokens: int | None) -> OverlongPunishment:
    opts = _options(rest, spec)
    _known(opts, {"cache", "max", "penalty"}, spec)
    if not sampled:
        raise UserError(f"scorer '{spec}': it scores the token counts a generator sampled, and here only texts "
                        f"are scored; it works in {WHERE}")
    if "cache" not in opts:
        raise UserError(f"scorer '{spec}': give cache=N, the last N tokens before max where the punishment grows "
                        "from 0 to -penalty (options: cache, max, penalty)")
    if "max" not in opts and max_new_tokens is None:
        raise UserError(f"scorer '{spec}': give max=M, the completion limit (there is no run's max_new_tokens here "
                        "to take it from)")
    scorer = OverlongPunishment(_integer(opts["cache"], "cache", spec),
                                _integer(opts["max"], "max", spec) if "max" in opts else int(max_new_tokens),
                                _number(opts.get("penalty", "1"), "penalty", spec), name=spec)
    start = scorer.max_tokens - scorer.cache
    if max_new_tokens is not None and start >= max_new_tokens:
        raise UserError(f"scorer '{spec}': the punishment starts after max − cache = {start} tokens, and no "
                        f"completion is longer than max_new_tokens ({max_new_tokens}): it would score 0 for every "
                        f"completion; give a max or cache with max − cache below {max_new_tokens}")
    return scorer


__all__ = ["Scorer", "BleuReward", "CallableBackend", "FunctionReward", "HFBackend", "ImplicitReward", "LengthPenalty",
           "LogSigmoidSum", "OverlongPunishment", "PairwiseJudge", "PointwiseJudge", "RewardModelScorer", "Routed",
           "TaskReward", "WeightedSum", "by_task", "load_scorer", "spec_problem", "reference_rewards", "swap_consistency"]
