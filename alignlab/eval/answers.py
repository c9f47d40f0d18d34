"""Answers to prompts, as the diagnostics read them: from a file, or drawn from a model now.

A file is what ``alignlab sample`` and ``alignlab decode`` write (one row per prompt): the row's
``prompt`` (read as ``data.prompts`` reads prompts) and its answers, from

- ``samples``: every sample in the order drawn, each ``{"text", "num_tokens", "finished",
  "score"}`` (only ``text`` is required; ``score`` null means not scored), or else
- ``completions`` (strings, or conversations whose last assistant message is the answer) with
  ``scores`` beside them when the row has them (a ranked row of any origin).

A bad row is one line naming the file, the row and the field. Drawn answers come from
``make_generator`` and keep their ``Sample`` (token ids included) for the measurements that need
the model's view of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignlab.data.prompts import prompt_of
from alignlab.data.records import PromptRecord, Text
from alignlab.data.sources import iter_rows
from alignlab.errors import DataError, RowIssue, UserError
from alignlab.rewards.base import reward_prompt


@dataclass(frozen=True)
class Answer:
    """One answer: its text, generated tokens (end-of-sequence token excluded; None when unknown),
    its score (None: not scored) and whether it stopped on the end-of-sequence token (None: unknown)."""

    text: str
    tokens: int | None = None
    score: float | None = None
    finished: bool | None = None


@dataclass
class AnswerRow:
    """A prompt and its answers; ``samples`` (drawn here) holds the generator's samples, in order."""

    prompt: Text
    answers: list[Answer]
    source: str
    row: int
    samples: list[Any] | None = field(default=None, repr=False)

    @property
    def scorer_prompt(self) -> str:
        """The prompt as scorers take it (a conversation's last user message)."""
        try:
            return reward_prompt(self.prompt)
        except ValueError as e:
            raise UserError(f"{self.source}, row {self.row}, field 'prompt': {e}") from None


def _bad(source: str, row: int, field: str | None, message: str) -> DataError:
    return DataError([RowIssue(source, row, field, message)], hint="")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _answer_text(value: Any) -> str | None:
    """A completion as text: a string, or the last assistant message of a conversation."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
        said = [m.get("content") for m in value if m.get("role") == "assistant"]
        if said and isinstance(said[-1], str):
            return said[-1]
    return None


def _from_samples(data: Mapping[str, Any], source: str, row: int) -> list[Answer]:
    samples = data["samples"]
    if not isinstance(samples, list):
        raise _bad(source, row, "samples", f"expected a list of samples, got {type(samples).__name__}")
    out = []
    for i, s in enumerate(samples):
        where = f"sample {i + 1}"
        if not isinstance(s, Mapping) or not isinstance(s.get("text"), str):
            raise _bad(source, row, "samples", f"{where} is not an object with a 'text' string")
        num, finished, score = s.get("num_tokens"), s.get("finished"), s.get("score")
        if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 0):
            raise _bad(source, row, "samples", f"{where}: num_tokens is {num!r}, not a whole number >= 0")
        if finished is not None and not isinstance(finished, bool):
            raise _bad(source, row, "samples", f"{where}: finished is {finished!r}, not true or false")
        if score is not None and not _number(score):
            raise _bad(source, row, "samples", f"{where}: score is {score!r}, not a finite number")
        tokens = None if num is None else max(num - int(bool(finished)), 0)
        out.append(Answer(s["text"], tokens, None if score is None else float(score), finished))
    return out


def _from_completions(data: Mapping[str, Any], source: str, row: int) -> list[Answer]:
    completions, scores = data["completions"], data.get("scores")
    if not isinstance(completions, list):
        raise _bad(source, row, "completions", f"expected a list of answers, got {type(completions).__name__}")
    texts = []
    for i, c in enumerate(completions):
        text = _answer_text(c)
        if text is None:
            raise _bad(source, row, "completions", f"answer {i + 1} is neither a string nor a conversation with an "
                                                   "assistant message")
        texts.append(text)
    if scores is None:
        return [Answer(t) for t in texts]
    if not isinstance(scores, list) or len(scores) != len(texts):
        raise _bad(source, row, "scores", f"expected a list of {len(texts)} numbers, one per completion, got "
                                          f"{scores!r}")
    for i, s in enumerate(scores):
        if not _number(s):
            raise _bad(source, row, "scores", f"score {i + 1} is {s!r}, not a finite number")
    return [Answer(t, score=float(s)) for t, s in zip(texts, scores, strict=True)]


def read_answer_rows(source: str) -> list[AnswerRow]:
    """Every row of ``source`` as an ``AnswerRow`` (see the module docstring); a ``UserError``
    naming the file, row and field for the first bad row, or for a file without rows."""
    rows = []
    for raw in iter_rows(source):
        if isinstance(raw.data, RowIssue):
            raise DataError([raw.data], hint="")
        found = prompt_of(raw.data, raw.source, raw.row)
        if isinstance(found, list):
            raise DataError(found[:1], hint="")
        if "samples" in raw.data:
            answers = _from_samples(raw.data, raw.source, raw.row)
        elif "completions" in raw.data:
            answers = _from_completions(raw.data, raw.source, raw.row)
        else:
            raise _bad(raw.source, raw.row, None, "no answers: expected 'samples' (as alignlab sample writes them) or "
                                                  "'completions'")
        rows.append(AnswerRow(found.prompt, answers, raw.source, raw.row))
    if not rows:
        raise UserError(f"{source}: no rows (expected one row of answers per prompt)")
    return rows


def draw_answer_rows(generator, prompts: Sequence[PromptRecord], n: int, params, batch_size: int = 16) -> list[AnswerRow]:
    """``n`` answers per prompt from ``generator`` (``make_generator``), ``batch_size`` prompts
    per call, each call told the index of its first prompt (so that the native backend's draws do
    not depend on ``batch_size``)."""
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        drawn = generator.generate([p.prompt for p in chunk], n, params, start=start)
        for p, samples in zip(chunk, drawn, strict=True):
            answers = [Answer(s.text, len(s.token_ids) - int(s.finished), None, s.finished) for s in samples]
            rows.append(AnswerRow(p.prompt, answers, p.source, p.row, samples=list(samples)))
    return rows


def score_rows(rows: Sequence[AnswerRow], scorer) -> None:
    """Score every answer of ``rows`` with ``scorer`` in one call (replacing any score they had)."""
    prompts = [r.scorer_prompt for r in rows for _ in r.answers]
    texts = [a.text for r in rows for a in r.answers]
    scores = scorer.score(prompts, texts) if texts else []
    if len(scores) != len(texts):
        raise UserError(f"{scorer.name}: gave {len(scores)} scores for {len(texts)} answers")
    it = iter(scores)
    for r in rows:
        r.answers = [Answer(a.text, a.tokens, float(next(it)), a.finished) for a in r.answers]


def same_prompts(a: Sequence[AnswerRow], b: Sequence[AnswerRow]) -> None:
    """Refuse two answer sets whose rows are not answers to the same prompts in the same order,
    naming the first row that differs."""
    if len(a) != len(b):
        raise UserError(f"{a[0].source} has {len(a)} rows but {b[0].source} has {len(b)}: the answers to compare "
                        "must answer the same prompts, one row per prompt in the same order")
    for x, y in zip(a, b, strict=True):
        if x.prompt != y.prompt:
            raise UserError(f"{x.source}, row {x.row} and {y.source}, row {y.row}: different prompts; the answers to "
                            "compare must answer the same prompts, one row per prompt in the same order")
