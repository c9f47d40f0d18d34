"""LLM judges: a language model reads a prompt and responses and says which is better, or rates one.

Three parts, each replaceable on its own:

- a *backend* turns judge prompts into judge outputs (text in, text out): any object with
  ``complete(prompts: list[str]) -> list[str]``. ``HFBackend`` runs a local Hugging Face causal LM
  (greedy), ``CallableBackend`` wraps a Python function (scripted judges in tests),
  ``alignlab.rewards.http_judge.OpenAIBackend`` calls an OpenAI-compatible server;
- a *template* with placeholders that becomes the judge prompt, and a *parser* that reads the
  verdict out of free text (``verdicts.py``); an unreadable verdict is counted, never raised,
  except by a backend that asks again (``asks_again``: the HTTP one, whose next answer may differ),
  which re-asks up to its ``retries`` and then raises an error naming the answer.

``PairwiseJudge`` and ``PointwiseJudge`` are ``Scorer``s. Pairwise judges prefer whichever response
sits in a given slot more often than they should (position bias, "Judging the Judges" and
MT-Bench; "Split and Merge", PORTIA, Li et al. 2023; ALGORITHMS.md §8.4). ``PairwiseJudge`` therefore
asks in both orders by default and averages, and ``swap_consistency`` measures the bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Protocol, runtime_checkable

from alignlab.data.records import Message, Text
from alignlab.errors import UserError
from alignlab.generation.base import SamplingParams
from alignlab.rewards.base import Scorer, check_lengths
from alignlab.rewards.verdicts import (
    PAIRWISE_TEMPLATE,
    POINTWISE_TEMPLATE,
    Verdict,
    check_template,
    flip,
    parse_pairwise,
    parse_rating,
    render,
)

# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class JudgeBackend(Protocol):
    """Text in, text out: one completion per prompt, in prompt order."""

    def complete(self, prompts: list[str]) -> list[str]: ...


class CallableBackend:
    """A judge backend from a Python function.

    ``fn(prompt) -> str`` is called once per prompt; with ``batched=True``, ``fn(prompts) ->
    list[str]`` is called once with the whole list. A function that returns something other than
    text (or the wrong number of texts) is a UserError naming the item.
    """

    def __init__(self, fn: Callable, batched: bool = False):
        if not callable(fn):
            raise UserError(f"CallableBackend needs a function, got {type(fn).__name__}")
        self.fn = fn
        self.batched = batched

    def complete(self, prompts: list[str]) -> list[str]:
        prompts = list(prompts)
        if self.batched:
            outputs = self.fn(prompts)
            if isinstance(outputs, str) or not isinstance(outputs, Sequence):
                raise UserError(f"CallableBackend: a batched function must return a list of strings, "
                                f"got {type(outputs).__name__}")
        else:
            outputs = [self.fn(p) for p in prompts]
        return _check_outputs("CallableBackend", prompts, outputs)


class HFBackend:
    """A local Hugging Face causal LM as the judge, decoding greedily (temperature 0).

    Each judge prompt becomes a single user message rendered with the tokenizer's chat template
    when it has one, and is given as plain text otherwise. Generation goes through a generator from
    ``make_generator`` (``backend``, default "native"; ``batch_size`` sequences at a time), at most
    ``max_new_tokens`` new tokens.
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 512, batch_size: int = 8, backend: str = "native"):
        from alignlab.generation.factory import make_generator
        from alignlab.generation.native import context_limit

        self.generator = make_generator(model, tokenizer, backend, batch_size=batch_size)
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        self.chat = getattr(tokenizer, "chat_template", None) is not None
        self.context = context_limit(model, tokenizer)  # as `alignlab sample` reads it

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "fp32", trust_remote_code: bool = False,
                        **kwargs) -> HFBackend:
        """Load the judge model and tokenizer from a local directory or hub name (``load_model``)."""
        from alignlab.models import load_model, load_tokenizer

        model = load_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
        tok = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, tok, **kwargs)

    def as_text(self, prompt: str) -> Text:
        """The prompt as the generator takes it: a one-message conversation, or the plain string."""
        return (Message("user", prompt),) if self.chat else prompt

    def prompt_ids(self, prompt: str) -> tuple[int, ...]:
        """Token ids the judge model sees before its answer."""
        return self.generator.prompt_ids(self.as_text(prompt))

    def room_problem(self, query: str) -> str | None:
        """Why the judge could not answer ``query`` within its context, whatever is added to it
        (the answers it judges); None when it has room."""
        if self.context is None:
            return None
        n, answer = len(self.prompt_ids(query)), self.params.max_new_tokens
        if n + answer <= self.context:
            return None
        return (f"the judge's prompt for it is {n} tokens before any answer is put in, and with the judge's "
                f"max_new_tokens {answer} exceeds its context of {self.context} tokens (shorten the template)")

    def complete(self, prompts: list[str]) -> list[str]:
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise UserError(f"HFBackend: judge prompt {i} is a {type(p).__name__}, not a string")
        samples = self.generator.generate([self.as_text(p) for p in prompts], 1, self.params)
        return [s[0].text for s in samples]


def _check_outputs(who: str, prompts: Sequence[str], outputs: Sequence) -> list[str]:
    if len(outputs) != len(prompts):
        raise UserError(f"{who}: returned {len(outputs)} judge outputs for {len(prompts)} prompts")
    for i, out in enumerate(outputs):
        if not isinstance(out, str):
            raise UserError(f"{who}: judge output {i} is a {type(out).__name__}, not a string")
    return list(outputs)


def _ask(who: str, backend: JudgeBackend, queries: list[str], accept: Callable[[str], bool]) -> list[str]:
    """The backend's outputs for ``queries``; a backend that asks again (``asks_again``) is given
    ``accept``, the judge's test of a readable verdict, and re-asks for an answer that fails it."""
    if not queries:
        return []
    if getattr(backend, "asks_again", False):
        return _check_outputs(who, queries, backend.complete(queries, accept=accept))
    return _check_outputs(who, queries, backend.complete(queries))


def _check_backend(backend) -> JudgeBackend:
    if not callable(getattr(backend, "complete", None)):
        raise UserError(f"judge backend must have a complete(prompts) method, got {type(backend).__name__}")
    return backend


# ---------------------------------------------------------------------------------------------
# Pairwise judge and the swap report
# ---------------------------------------------------------------------------------------------

_POINTS = {"A": 1.0, "B": 0.0, "tie": 0.5, None: 0.5}


@dataclass(frozen=True)
class PairVerdict:
    """One judged pair. Verdicts are in the original labels: "A" means ``first`` is better.

    ``verdict`` is the judge's verdict with ``first`` in slot A; ``swapped_verdict`` the verdict with
    ``second`` in slot A, mapped back (the raw "A" becomes "B"). None: unparseable, or (for
    ``swapped_verdict``) not asked, which ``raw_swapped is None`` tells apart.
    """

    prompt: str
    first: str
    second: str
    verdict: Verdict | None
    swapped_verdict: Verdict | None
    raw: str
    raw_swapped: str | None
    p_first: float  # mean over the orders asked of 1 (first wins), 0.5 (tie, unparsed), 0 (first loses)

    @property
    def consistent(self) -> bool | None:
        """v1 == v2; None when the swap was not asked or either verdict is unparsed."""
        if self.raw_swapped is None or self.verdict is None or self.swapped_verdict is None:
            return None
        return self.verdict == self.swapped_verdict


@dataclass
class JudgeReport:
    """Position-bias report over pairs judged in both orders (ALGORITHMS.md §8.4; PORTIA, Li et al.
    2023, "Split and Merge"; Zheng et al. 2023, MT-Bench).

    Per pair, v1 is the verdict with ``first`` in slot 1 and v2 the verdict with ``second`` in slot 1
    mapped back to the original labels; both are "A" (first better), "B", "tie" or None (unparsed).

    - ``consistency_rate`` = mean 1[v1 == v2] over the pairs whose two verdicts both parsed; a tie in
      both orders is consistent, a tie in one order only is not. Pairs with an unparsed verdict are
      left out of it (they are counted in ``unparsed``); NaN when no pair has two parsed verdicts.
    - ``inconsistent``: the number of parsed pairs with v1 != v2.
    - ``prefers_first_slot``: share of the inconsistent pairs in which the response shown in slot 1
      won both times (v1 = "A" and v2 = "B": the raw verdict was "A" in both orders);
      ``prefers_second_slot`` likewise for slot 2 (v1 = "B", v2 = "A"). An inconsistent pair with a
      tie in one order favours neither slot, so the two shares add up to at most 1. Both are 0.0
      when no pair is inconsistent.
    - ``unparsed``: the number of judge outputs (not pairs) that gave no verdict.
    - ``win_rate_first``: the mean of P(first better) over all pairs, P as in ``PairVerdict.p_first``.

    Without the swap (``swapped`` False) the consistency numbers are not measured and are NaN.
    """

    n: int
    swapped: bool
    consistency_rate: float
    inconsistent: int
    prefers_first_slot: float
    prefers_second_slot: float
    unparsed: int
    win_rate_first: float
    pairs: list[PairVerdict] = field(default_factory=list, repr=False)

    @classmethod
    def from_pairs(cls, pairs: list[PairVerdict], swapped: bool) -> JudgeReport:
        nan = float("nan")
        unparsed = sum(p.verdict is None for p in pairs)
        unparsed += sum(p.raw_swapped is not None and p.swapped_verdict is None for p in pairs)
        win = sum(p.p_first for p in pairs) / len(pairs) if pairs else nan
        if not swapped:
            return cls(len(pairs), False, nan, 0, nan, nan, unparsed, win, pairs)
        parsed = [p for p in pairs if p.consistent is not None]
        bad = [p for p in parsed if not p.consistent]
        first_slot = sum(p.verdict == "A" and p.swapped_verdict == "B" for p in bad)
        second_slot = sum(p.verdict == "B" and p.swapped_verdict == "A" for p in bad)
        return cls(
            n=len(pairs), swapped=True,
            consistency_rate=(len(parsed) - len(bad)) / len(parsed) if parsed else nan,
            inconsistent=len(bad),
            prefers_first_slot=first_slot / len(bad) if bad else 0.0,
            prefers_second_slot=second_slot / len(bad) if bad else 0.0,
            unparsed=unparsed, win_rate_first=win, pairs=pairs,
        )

    def as_dict(self, pairs: bool = False) -> dict:
        """The metrics as a JSON-ready dict (NaN becomes None); with ``pairs``, the per-pair details too."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "pairs"}
        out = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}
        if pairs:
            out["pairs"] = [asdict(p) for p in self.pairs]
        return out


def _check_texts(who: str, **columns: Sequence) -> None:
    check_lengths(who, *columns.values())
    for name, column in columns.items():
        for i, x in enumerate(column):
            if not isinstance(x, str):
                raise UserError(f"{who}: {name} item {i} is a {type(x).__name__}, not a string")


class PairwiseJudge(Scorer):
    """A judge model that compares two responses to a prompt.

    ``compare(prompts, first, second)`` asks the judge with ``first`` in slot A and, when ``swap``
    (the default), again with ``second`` in slot A, mapping the second verdict back (ALGORITHMS.md
    §8.4). P(first better) = the mean over the orders asked of 1 for a win of ``first``, 0.5 for a
    tie or an unparseable verdict (which a backend that asks again, such as the HTTP one, re-asks
    for instead, failing after its retries), 0 for a loss; with the swap it is in {0, 0.25, 0.5,
    0.75, 1}.
    One backend call covers all the pairs and both orders.

    ``score(prompts, responses)`` is P(response better than ``anchor``) (by default the empty
    response ""), in [0, 1]: higher is better, and responses to the same prompt are comparable
    through the shared anchor. ``last_report`` holds the ``JudgeReport`` of the latest call.
    """

    def __init__(self, backend: JudgeBackend, template: str = PAIRWISE_TEMPLATE, swap: bool = True,
                 anchor: str = "", name: str = "pairwise-judge"):
        self.backend = _check_backend(backend)
        self.template = check_template(template, "pairwise")
        if not isinstance(anchor, str):
            raise UserError(f"{name}: anchor must be a string, got {type(anchor).__name__}")
        self.swap = bool(swap)
        self.anchor = anchor
        self.name = name
        self.last_report: JudgeReport | None = None

    def judge(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
              swap: bool | None = None) -> JudgeReport:
        """Judge each pair (in both orders when ``swap``, default ``self.swap``) and report."""
        _check_texts(f"{self.name}: compare", prompts=prompts, first=first, second=second)
        swap = self.swap if swap is None else swap
        triples = list(zip(prompts, first, second, strict=True))
        queries = [render(self.template, prompt=p, first=a, second=b) for p, a, b in triples]
        if swap:
            queries += [render(self.template, prompt=p, first=b, second=a) for p, a, b in triples]
        outputs = _ask(self.name, self.backend, queries, lambda text: parse_pairwise(text) is not None)
        n = len(prompts)
        pairs = []
        for i in range(n):
            v1 = parse_pairwise(outputs[i])
            raw2 = outputs[n + i] if swap else None
            v2 = flip(parse_pairwise(raw2)) if raw2 is not None else None
            points = [_POINTS[v1]] + ([_POINTS[v2]] if swap else [])
            pairs.append(PairVerdict(prompts[i], first[i], second[i], v1, v2, outputs[i], raw2,
                                     sum(points) / len(points)))
        self.last_report = JudgeReport.from_pairs(pairs, swapped=swap)
        return self.last_report

    def prompt_problem(self, prompt: str) -> str | None:
        """A judge prompt that leaves the judge no room to answer even with empty answers in it."""
        return _room_problem(self.backend, render(self.template, prompt=prompt, first="", second=""))

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        """P(first better) per pair, from the judge's verdicts (see the class docstring)."""
        return [p.p_first for p in self.judge(prompts, first, second).pairs]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """P(response better than the anchor response) per pair, in [0, 1]."""
        return self.compare(prompts, responses, [self.anchor] * len(responses))


def swap_consistency(judge: PairwiseJudge | JudgeBackend, prompts: Sequence[str], first: Sequence[str],
                     second: Sequence[str]) -> JudgeReport:
    """Ask the judge about every pair in both orders and measure its position bias.

    ``judge`` is a ``PairwiseJudge`` (its template is used; the swap is made whatever its ``swap``
    setting) or a bare backend (judged with the default template). See ``JudgeReport`` for the exact
    definitions of consistency, slot preference, ties and unparsed verdicts.
    """
    if not isinstance(judge, PairwiseJudge):
        judge = PairwiseJudge(judge)
    return judge.judge(prompts, first, second, swap=True)


# ---------------------------------------------------------------------------------------------
# Pointwise judge
# ---------------------------------------------------------------------------------------------


@dataclass
class RatingReport:
    """The latest ratings of a ``PointwiseJudge``: parsed ratings (None: unparsed), raw outputs, count."""

    ratings: list[float | None]
    raw: list[str]
    unparsed: int


class PointwiseJudge(Scorer):
    """A judge model that rates one response at a time on ``[low, high]`` (MT-Bench single grading).

    ``score`` is the parsed rating; an unparseable or out-of-range rating scores ``fallback``
    (default the midpoint (low + high) / 2) and is counted in ``last_report.unparsed`` (a backend
    that asks again, such as the HTTP one, re-asks for it instead and fails after its retries).
    ``compare`` rates both responses (one backend call) and gives 1 when the first rating is higher,
    0 when lower, 0.5 when equal or when either rating could not be parsed (no evidence either way).
    """

    def __init__(self, backend: JudgeBackend, template: str = POINTWISE_TEMPLATE, low: float = 1,
                 high: float = 10, fallback: float | None = None, name: str = "pointwise-judge"):
        self.backend = _check_backend(backend)
        self.template = check_template(template, "pointwise")
        for what, x in (("low", low), ("high", high)) + ((("fallback", fallback),) if fallback is not None else ()):
            if not isinstance(x, int | float) or not math.isfinite(x):
                raise UserError(f"{name}: {what} must be a finite number, got {x!r}")
        if not low < high:
            raise UserError(f"{name}: low must be below high, got low={low}, high={high}")
        self.low, self.high = low, high
        self.fallback = float(fallback) if fallback is not None else (low + high) / 2
        self.name = name
        self.last_report: RatingReport | None = None

    def rate(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float | None]:
        """The parsed rating per pair, None where unparseable. Sets ``last_report``."""
        _check_texts(f"{self.name}: score", prompts=prompts, responses=responses)
        queries = [render(self.template, prompt=p, response=r, low=_num(self.low), high=_num(self.high))
                   for p, r in zip(prompts, responses, strict=True)]
        outputs = _ask(self.name, self.backend, queries,
                       lambda text: parse_rating(text, self.low, self.high) is not None)
        ratings = [parse_rating(o, self.low, self.high) for o in outputs]
        self.last_report = RatingReport(ratings, outputs, sum(r is None for r in ratings))
        return ratings

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [self.fallback if r is None else r for r in self.rate(prompts, responses)]

    def prompt_problem(self, prompt: str) -> str | None:
        """A judge prompt that leaves the judge no room to answer even with an empty answer in it."""
        return _room_problem(self.backend, render(self.template, prompt=prompt, response="", low=_num(self.low),
                                                  high=_num(self.high)))

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        n = check_lengths(f"{self.name}: compare", prompts, first, second)
        ratings = self.rate(list(prompts) * 2, list(first) + list(second))
        out = []
        for a, b in zip(ratings[:n], ratings[n:], strict=True):
            out.append(0.5 if a is None or b is None or a == b else float(a > b))
        return out


def _room_problem(backend: JudgeBackend, query: str) -> str | None:
    """A backend that knows its context (``HFBackend.room_problem``) checks ``query``; any other
    (a function, a server) has no limit to check here."""
    check = getattr(backend, "room_problem", None)
    return check(query) if callable(check) else None


def _num(x: float) -> str:
    """1.0 -> "1", 2.5 -> "2.5" (for the scale shown in the prompt)."""
    return str(int(x)) if float(x).is_integer() else str(x)
