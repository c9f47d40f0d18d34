"""Rows of the feedback shapes beyond sft and pairs, turned into records (``formats`` has those two).

Accepted rows (a text is a string or a list of messages; all texts of a row have the same kind;
the prompt is required but may be empty):

- joint:     {"prompt_chosen", "chosen", "prompt_rejected", "rejected"}, or a single "prompt"
             that both responses answer (so pair rows load as joint rows as they are)
- unpaired:  {"prompt", "completion", "label"} (TRL's KTO format); see ``fields.to_label``
- scored:    {"prompt", "completion", "score"}; a finite number, higher is better
- ranked:    {"prompt", "completions": [...], "scores": [...]}, or "ranks" (smaller is better,
             1 the best) instead of or beside "scores". Ranks r become scores -r. Given both, they
             must order the completions alike, and the scores are kept. The record lists the
             completions best first; completions that tie keep the data's order. The completions
             and their scores or ranks may come from one list of objects through a column mapping
             like "answers[].answer" (see ``fields``; ``load`` finds Nectar's on its own).
- negatives: {"prompt", "rejected"}

Each function here takes a ``RowReader`` and raises ``Bad`` (or collects problems and raises
``Stop``); ``formats.to_record`` turns those into ``RowIssue`` values naming the user's column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alignlab.data.detect import detect_kind, shape_error
from alignlab.data.records import (
    JointRecord,
    NegativeRecord,
    RankedRecord,
    ScoredRecord,
    Text,
    UnpairedRecord,
)
from alignlab.data.rows.fields import (
    Bad,
    RowReader,
    check_response,
    kind_name,
    match_prompt,
    same_kind,
    to_label,
    to_list,
    to_number,
    to_text,
)


def joint(reader: RowReader, source: str, row: int) -> JointRecord:
    shared = _shared_prompt(reader)
    prompt_fields = ("prompt", "prompt") if shared else ("prompt_chosen", "prompt_rejected")
    prompt_chosen = reader.text(prompt_fields[0])
    chosen = reader.text("chosen")
    prompt_rejected = reader.text(prompt_fields[1]) if not shared else prompt_chosen
    rejected = reader.text("rejected")
    reader.stop_if_problems()
    assert prompt_chosen is not None and chosen is not None
    assert prompt_rejected is not None and rejected is not None
    pc_col, pr_col = (reader.column(f) for f in prompt_fields)
    c_col, r_col = reader.column("chosen"), reader.column("rejected")
    same_kind(chosen, c_col, rejected, r_col)
    prompt_chosen = match_prompt(prompt_chosen, pc_col, chosen, c_col)
    prompt_rejected = match_prompt(prompt_rejected, pr_col, rejected, r_col)
    if chosen == rejected and prompt_chosen == prompt_rejected:
        raise Bad(r_col, "chosen and rejected are identical, and so are their prompts")
    reader.attempt(check_response, chosen, c_col)
    reader.attempt(check_response, rejected, r_col)
    reader.stop_if_problems()
    return JointRecord(prompt_chosen, chosen, prompt_rejected, rejected, source=source, row=row)


def _shared_prompt(reader: RowReader) -> bool:
    """Whether a joint row gives one prompt for both responses rather than one prompt each.

    Mapped columns decide; otherwise the row's columns do. A row holding both 'prompt' and
    'prompt_chosen'/'prompt_rejected' is refused: which one is meant cannot be told.
    """
    own = ("prompt_chosen", "prompt_rejected")
    if any(reader.mapped(f) for f in own):
        return False
    if reader.mapped("prompt"):
        return True
    if any(reader.has(f) for f in own):
        if reader.has("prompt"):
            raise Bad("prompt", "the row holds both 'prompt' and 'prompt_chosen'/'prompt_rejected'; give "
                                "one prompt shared by both responses, or one prompt each, not both")
        return False
    if reader.has("prompt"):
        return True
    raise reader.missing(
        "prompt_chosen",
        need="joint rows need 'prompt_chosen' and 'prompt_rejected', or a 'prompt' both responses share",
        wanted=("prompt", "prompt_rejected"),
    )


def unpaired(reader: RowReader, source: str, row: int) -> UnpairedRecord:
    prompt, completion = _prompt_and(reader, "completion")
    label = reader.read("label", to_label)
    reader.stop_if_problems()
    assert label is not None
    return UnpairedRecord(prompt, completion, label, source=source, row=row)


def scored(reader: RowReader, source: str, row: int) -> ScoredRecord:
    prompt, completion = _prompt_and(reader, "completion")
    score = reader.read("score", to_number)
    reader.stop_if_problems()
    assert score is not None
    return ScoredRecord(prompt, completion, score, source=source, row=row)


def negatives(reader: RowReader, source: str, row: int) -> NegativeRecord:
    prompt, rejected = _prompt_and(reader, "rejected")
    reader.stop_if_problems()
    return NegativeRecord(prompt, rejected, source=source, row=row)


def _prompt_and(reader: RowReader, field: str) -> tuple[Text, Text]:
    """The prompt and one response, checked; other fields' problems may still be collected."""
    prompt = reader.text("prompt")
    response = reader.text(field)
    if prompt is None or response is None:
        return "", ""  # the caller reads its other fields, then stops on the problems
    column = reader.column(field)
    try:
        prompt = match_prompt(prompt, reader.column("prompt"), response, column)
        check_response(response, column)
    except Bad as bad:
        reader.problems.append(bad)
    return prompt, response


# ---------------------------------------------------------------- ranked lists


def ranked(reader: RowReader, source: str, row: int, *, strict_order: bool = False) -> RankedRecord:
    """A ranked row, its completions sorted best first (stably). ``strict_order`` refuses ties."""
    prompt = reader.text("prompt")
    completions = reader.read("completions", _completions)
    given = [f for f in ("scores", "ranks") if reader.mapped(f) or reader.has(f)]
    if not given:
        reader.problems.append(
            reader.missing("scores", need="ranked rows need 'scores' or 'ranks'", wanted=("ranks",))
        )
    values = {f: reader.read(f, _scores if f == "scores" else _ranks) for f in given}
    reader.stop_if_problems()
    assert prompt is not None and completions is not None
    c_col = reader.column("completions")
    prompt = match_prompt(prompt, reader.column("prompt"), completions[0], c_col)
    for field, numbers in values.items():
        if len(numbers) != len(completions):
            reader.problems.append(Bad(reader.column(field), f"{len(numbers)} {field} for "
                                                             f"{len(completions)} completions"))
    reader.stop_if_problems()
    if len(values) == 2:
        _check_agree(values["scores"], values["ranks"], reader.column("ranks"))
    field = given[0]
    scores = values["scores"] if field == "scores" else [-r for r in values["ranks"]]
    if strict_order:
        _check_no_ties(scores, field, reader.column(field))
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    return RankedRecord(
        prompt, tuple(completions[i] for i in order), tuple(scores[i] for i in order), source=source, row=row
    )


def _completions(value: Any, column: str) -> list[Text]:
    items = to_list(value, column, "completions")
    if items and all(isinstance(item, Mapping) and "role" in item for item in items):
        raise Bad(column, "expected a list of completions, got one conversation (a list of messages); "
                          "each completion must be an item of the list")
    if len(items) < 2:
        raise Bad(column, f"a ranked row needs at least 2 completions, got {len(items)}")
    texts: list[Text] = []
    for i, item in enumerate(items, start=1):
        try:
            text = to_text(item, column)
            check_response(text, column)
        except Bad as bad:
            raise Bad(column, f"completion {i}: {bad.message}") from None
        if texts and isinstance(text, tuple) != isinstance(texts[0], tuple):
            raise Bad(column, f"mixed kinds: completion 1 is {kind_name(texts[0])} but completion {i} "
                              f"is {kind_name(text)}")
        texts.append(text)
    return texts


def _scores(value: Any, column: str) -> list[float]:
    return [to_number(v, column, f"score {i}") for i, v in enumerate(to_list(value, column, "scores"), 1)]


def _ranks(value: Any, column: str) -> list[float]:
    ranks = []
    for i, v in enumerate(to_list(value, column, "ranks"), start=1):
        rank = to_number(v, column, f"rank {i}")
        if rank < 0 or not rank.is_integer():
            raise Bad(column, f"rank {i}: expected a whole number, 1 for the best, got {v!r}")
        ranks.append(rank)
    return ranks


def _check_agree(scores: list[float], ranks: list[float], r_col: str) -> None:
    """Scores and ranks given together must order every two completions alike (ties included)."""
    n = len(scores)
    for i in range(n):
        for j in range(i + 1, n):
            by_score = (scores[i] > scores[j]) - (scores[i] < scores[j])
            by_rank = (ranks[j] > ranks[i]) - (ranks[j] < ranks[i])
            if by_score != by_rank:
                raise Bad(r_col, f"scores and ranks disagree: completions {i + 1} and {j + 1} score "
                                 f"{_num(scores[i])} and {_num(scores[j])} but rank {_num(ranks[i])} and "
                                 f"{_num(ranks[j])}")


def _check_no_ties(scores: list[float], field: str, column: str) -> None:
    seen: dict[float, int] = {}
    for i, s in enumerate(scores, start=1):
        if s in seen:
            what = f"score {_num(s)}" if field == "scores" else f"rank {_num(-s)}"
            raise Bad(column, f"completions {seen[s]} and {i} tie ({what}); this method needs a strict order "
                              "of the completions: drop or re-score one of them")
        seen[s] = i


def _num(x: float) -> str:
    return str(int(x)) if x.is_integer() else str(x)


def pair_scores(reader: RowReader) -> dict[str, float | None]:
    """The optional score_chosen, score_rejected and strength of a pair row (None when absent).

    Scores come both or neither; a strength is a number in [0, 1].
    """
    fields = ("score_chosen", "score_rejected")
    extras = {f: reader.read(f, to_number, optional=True) for f in fields}
    given = [f for f in fields if reader.has(f) and reader.data[reader.column(f)] is not None]
    if len(given) == 1:
        lacking = fields[1 - fields.index(given[0])]
        reader.problems.append(Bad(reader.column(lacking), f"'{reader.column(given[0])}' is given without "
                                                           f"'{reader.column(lacking)}'; give both scores or neither"))
    extras["strength"] = reader.read("strength", _strength, optional=True)
    return extras


def _strength(value: Any, column: str) -> float:
    strength = to_number(value, column)
    if not 0.0 <= strength <= 1.0:
        raise Bad(column, f"preference strength must be in [0, 1], got {_num(strength)}")
    return strength


__all__ = ["READERS", "detect_kind", "joint", "negatives", "pair_scores", "ranked", "scored", "shape_error",
           "unpaired"]
READERS = {"joint": joint, "unpaired": unpaired, "scored": scored, "negatives": negatives}
