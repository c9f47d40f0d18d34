"""A scorer's failure as one line naming the answer at fault, not a traceback.

A scorer is the user's code or model: any exception it raises, or an answer other than one finite
number per item, is a failure of the scorer on some item. ``find_fault`` scores the items one by one
to find the first at fault; ``Guarded`` wraps a scorer so that every call (``score``,
``score_sampled``, ``compare``) fails with a ``UserError`` naming the flag, the spec, the prompt
(its file and row where the caller knows them) and the error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from alignlab.errors import UserError
from alignlab.rewards.base import Scorer, finite_number


def cause(e: BaseException) -> str:
    """An exception in one line: a UserError's own text (the scorer's own check), else "raised"
    with its type and first line."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if isinstance(e, UserError):
        return text or type(e).__name__
    return f"raised {type(e).__name__}: {text}" if text else f"raised {type(e).__name__}"


def values_problem(values: Sequence, count: int) -> str | None:
    """What is wrong with ``values`` as the scores of ``count`` items (one finite number each, as
    ``finite_number`` reads a number: text is not), or None."""
    if len(values) != count:
        return f"returned {len(values)} values for {count} item{'s' if count != 1 else ''}"
    for v in values:
        x, problem = finite_number(v)
        if x is None:
            return f"returned {problem}"
    return None


def whole_call(call: Callable[[], Sequence], count: int) -> tuple[list[float] | None, str | None]:
    """(the values, None) when ``call`` gives ``count`` finite numbers, else (None, what went wrong)."""
    try:
        values = list(call())
    except Exception as e:  # a scorer is the user's code or model: any failure is reported, not a crash
        return None, cause(e)
    problem = values_problem(values, count)
    return (None, problem) if problem else ([float(v) for v in values], None)


def find_fault(call_one: Callable[[int], Sequence], count: int) -> tuple[int, str] | None:
    """The first item ``i`` (of ``count``) on which ``call_one(i)`` fails alone, and how (see
    ``cause`` and ``values_problem``); None when none does."""
    for i in range(count):
        try:
            problem = values_problem(list(call_one(i)), 1)
        except Exception as e:  # see whole_call
            problem = cause(e)
        if problem is not None:
            return i, problem
    return None


def _short(text: str, size: int = 40) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= size else text[:size] + "...")


class Guarded(Scorer):
    """``scorer`` whose failures are ``UserError``s: "``label`` failed on the answer to PROMPT:
    ERROR". ``where(prompt)`` names a prompt's file and row ("p.jsonl, row 3"), or None to quote the
    prompt. Everything else is the wrapped scorer's."""

    def __init__(self, scorer: Scorer, label: str, where: Callable[[str], str | None] | None = None):
        self.inner, self.label, self.where = scorer, label, where
        self.name = scorer.name

    def __getattr__(self, attr: str):
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    @property
    def compares_by_score(self) -> bool:
        return self.inner.compares_by_score

    def prompt_problem(self, prompt: str) -> str | None:
        return self.inner.prompt_problem(prompt)

    def _place(self, prompt: str) -> str:
        found = self.where(prompt) if self.where is not None else None
        return f"prompt ({found})" if found else f"prompt {_short(prompt)}"

    def _run(self, call: Callable[[Sequence[int]], Sequence], prompts: Sequence[str], answers: Sequence[str],
             count: int | None = None, second: Sequence[str] | None = None) -> list[float]:
        count = len(prompts) if count is None else count
        values, error = whole_call(lambda: call(range(count)), count)
        if values is not None:
            return values
        fault = find_fault(lambda i: call([i]), count)
        if fault is None:
            raise UserError(f"{self.label} failed on {count} items together, though on none alone: {error}")
        i, problem = fault
        answer = f"the answer {_short(answers[i])}" if second is None else \
            f"the pair of answers {_short(answers[i])} and {_short(second[i])}"
        raise UserError(f"{self.label} failed on {answer} to {self._place(prompts[i])}: "
                        f"{problem}")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self._run(lambda ix: self.inner.score([prompts[i] for i in ix], [responses[i] for i in ix]),
                         prompts, responses)

    def score_sampled(self, prompts: Sequence[str], responses: Sequence[str],
                      token_counts: Sequence[int]) -> list[float]:
        return self._run(lambda ix: self.inner.score_sampled([prompts[i] for i in ix], [responses[i] for i in ix],
                                                             [token_counts[i] for i in ix]), prompts, responses)

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[float]:
        return self._run(lambda ix: self.inner.compare([prompts[i] for i in ix], [first[i] for i in ix],
                                                       [second[i] for i in ix]), prompts, first,
                         second=second)


def guard(scorer: Scorer, label: str, where: Callable[[str], str | None] | None = None) -> Scorer:
    """``scorer`` as a ``Guarded`` one (see there); a scorer already guarded is returned as it is."""
    return scorer if isinstance(scorer, Guarded) else Guarded(scorer, label, where)


def rows_of(records) -> Callable[[str], str | None]:
    """``where`` for ``Guarded`` from records with ``source``, ``row`` and a prompt (``scorer_prompt``
    or ``prompt``): the rows that hold the prompt ("a.jsonl, row 3"; a prompt on several rows, as
    pair data often has, names them all: "a.jsonl, rows 1, 4 and 9", the first few of many)."""
    from alignlab.rewards.base import reward_prompt

    places: dict[str, list[tuple[str, int]]] = {}
    for r in records:
        try:
            text = getattr(r, "scorer_prompt", None) or reward_prompt(r.prompt)
        except ValueError:
            continue
        places.setdefault(text, []).append((r.source, r.row))

    def where(prompt: str) -> str | None:
        found = places.get(prompt)
        if not found:
            return None
        if len(found) == 1:
            return f"{found[0][0]}, row {found[0][1]}"
        shown = found[:_SHOWN_ROWS]
        more = f" … ({len(found)} rows)" if len(found) > _SHOWN_ROWS else ""
        if len({source for source, _ in found}) > 1:  # several files: each row with its file
            return "; ".join(f"{source}, row {row}" for source, row in shown) + more
        rows = [str(row) for _, row in shown]
        listed = ", ".join(rows) + more if more else ", ".join(rows[:-1]) + " and " + rows[-1]
        return f"{shown[0][0]}, rows {listed}"

    return where


_SHOWN_ROWS = 5  # rows of one prompt named in a scorer's failure
