"""Tell a data file's shape from its column names, and say how to get the shape a method needs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from alignlab.data.rows.fields import item_path

# What a row of each shape holds, for messages.
COLUMNS: dict[str, str] = {
    "sft": "prompt and completion, or messages, or text",
    "pair": "prompt, chosen, rejected",
    "joint": "prompt_chosen, chosen, prompt_rejected, rejected",
    "unpaired": "prompt, completion, label",
    "scored": "prompt, completion, score",
    "ranked": "prompt, completions, scores or ranks",
    "negatives": "prompt, rejected",
}

# (have, need): the `alignlab convert` steps that make one from the other, in order.
_STEPS: dict[tuple[str, str], tuple[str, ...]] = {
    ("scored", "ranked"): ("scored-to-ranked",),
    ("scored", "pair"): ("scored-to-pairs",),
    ("scored", "joint"): ("scored-to-pairs",),
    ("scored", "unpaired"): ("scored-to-pairs", "pairs-to-unpaired"),
    ("ranked", "pair"): ("ranked-to-pairs",),
    ("ranked", "joint"): ("ranked-to-pairs",),
    ("ranked", "unpaired"): ("ranked-to-pairs", "pairs-to-unpaired"),
    ("pair", "unpaired"): ("pairs-to-unpaired",),
    ("scored", "sft"): ("scored-to-sft",),
    ("ranked", "sft"): ("ranked-to-sft",),
}
_OPTIONS = {"scored-to-pairs": " --rule best_worst", "ranked-to-pairs": " --rule best_worst"}
_UNORDERED = "a thumbs up or down says nothing about which of two responses to a prompt is better"
_WHY_NOT: dict[tuple[str, str], str] = {
    ("unpaired", "pair"): _UNORDERED,
    ("unpaired", "joint"): _UNORDERED,
    ("unpaired", "ranked"): _UNORDERED,
}


# The keys that hold an answer's text in a list of answer objects, in the order they are looked for.
ANSWER_TEXT_KEYS = ("answer", "completion", "response", "text")


def detect_kind(row: Mapping[str, Any]) -> str | None:
    """The data shape a row's column names suggest, or None when they suggest none.

    Checked in this order, so that a column that only one shape has decides: prompt_chosen or
    prompt_rejected (joint), completions (ranked), chosen and rejected (pair), a list of answer
    objects with ranks or scores (ranked, see ``answer_list``), label (unpaired), score (scored),
    rejected alone (negatives), completion, messages or text (sft).
    """
    names = {str(key) for key in row}
    if names & {"prompt_chosen", "prompt_rejected"}:
        return "joint"
    if "completions" in names:
        return "ranked"
    if {"chosen", "rejected"} <= names:
        return "pair"
    if answer_list(row) is not None:
        return "ranked"
    if "label" in names:
        return "unpaired"
    if "score" in names:
        return "scored"
    if "rejected" in names:
        return "negatives"
    if names & {"completion", "messages", "text"}:
        return "sft"
    return None


def answer_list(row: Mapping[str, Any]) -> dict[str, str] | None:
    """The column mapping that reads a ranked row out of its one list of answer objects, or None.

    Nectar keeps a prompt's answers as ``"answers": [{"answer": "...", "model": "...", "rank": 1},
    ...]``. A column whose value is a non-empty list of objects (or, in a CSV cell, the JSON text of
    one) that hold a text (the first of ``ANSWER_TEXT_KEYS`` found) and a ``rank`` (else a
    ``score``) is read as ``{"completions": "answers[].answer", "ranks": "answers[].rank"}``.
    A row with no such column, or with several, gives None.
    """
    found = []
    for column, value in row.items():
        objects = list_of_objects(value)
        keys = {key for item in objects for key in item}
        text = next((key for key in ANSWER_TEXT_KEYS if key in keys), None)
        order = next((key for key in ("rank", "score") if key in keys), None)
        if text and order and item_path(f"{column}[].{text}") and item_path(f"{column}[].{order}"):
            found.append({"completions": f"{column}[].{text}", f"{order}s": f"{column}[].{order}"})
    return found[0] if len(found) == 1 else None


def list_of_objects(value: Any) -> list[Mapping[str, Any]]:
    """The value as a non-empty list of objects (a CSV cell holds one as JSON text), or []."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return []
    if isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
        return value
    return []


def compatible(have: str, need: str) -> bool:
    """Whether data of shape ``have`` loads as ``need`` as it is (pair rows are joint rows)."""
    return have == need or (have, need) == ("pair", "joint")


def conversion_hint(have: str, need: str) -> str:
    """How to make ``need`` data from ``have`` data: the commands, or why nothing does."""
    steps = _STEPS.get((have, need))
    if steps:
        commands = [f"`alignlab convert {step} IN OUT{_OPTIONS.get(step, '')}`" for step in steps]
        return "convert it with " + ", then ".join(commands)
    why = _WHY_NOT.get((have, need))
    return f"no converter makes {need} data from {have} data" + (f": {why}" if why else "")


def shape_error(have: str | None, need: str, method: str) -> str:
    """A message for a method given data of the wrong shape: what it needs, what the data holds,
    and the `alignlab convert` command that makes one from the other, or that none does."""
    wanted = f"{method} trains on {need} data (rows of {COLUMNS.get(need, need)})"
    if have is None:
        return f"{wanted}, but the data's columns match no known shape"
    if compatible(have, need):
        return f"{wanted}, and the data holds {have} data, which loads as it is"
    return f"{wanted}, but the data holds {have} data (rows of {COLUMNS[have]}); {conversion_hint(have, need)}"
