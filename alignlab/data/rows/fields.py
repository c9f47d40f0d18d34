"""Reading the fields of one raw row: texts, conversations, numbers, labels and lists.

Every problem is a ``Bad`` naming the user's column, so that the row converters (``formats`` for
sft and pair rows, ``shapes`` for the other kinds) report it as a ``RowIssue``.

A column mapping's value is usually a column name. Two other forms read several values (which
fields may use them is checked in ``formats.check_columns``):

- ``LIST[].KEY`` (``answers[].rank``): the value of KEY in every object of the list column LIST,
  as one list. A ranked row's completions, scores or ranks inside a list of answer objects.
- ``W*COLUMN + W*COLUMN ...`` (``0.65*helpfulness + 0.8*correctness - 0.1*verbosity``): a
  weighted sum of number columns, every term with its weight. A score made of several ratings.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from alignlab.data.records import ROLES, Conversation, Message, Text


class Bad(Exception):
    """Internal: one problem with one field of the row being converted. ``lacks`` names the
    alignlab field when the problem is that the row has no column for it."""

    def __init__(self, field: str | None, message: str, lacks: str | None = None):
        super().__init__(message)
        self.field = field
        self.message = message
        self.lacks = lacks


class Stop(Exception):
    """Internal: problems were collected; stop converting this row."""


class RowReader:
    """Reads alignlab fields out of one row through the column mapping, collecting problems."""

    def __init__(self, data: Mapping[str, Any], mapping: dict[str, str]):
        self.data = data
        self.mapping = mapping
        self.problems: list[Bad] = []

    def column(self, field: str) -> str:
        return self.mapping.get(field, field)

    def has(self, field: str) -> bool:
        return all(column in self.data for column in read_from(self.column(field)))

    def mapped(self, field: str) -> bool:
        return field in self.mapping

    def missing(self, field: str, need: str = "", wanted: tuple[str, ...] = ()) -> Bad:
        """A problem for a field (or mapped column) the row does not have.

        Says which fields the row has and, when one of them is close to a wanted name (the
        missing column, plus ``wanted``), which one looks misspelt.
        """
        mapped_to = self.column(field)
        column = next((c for c in read_from(mapped_to) if c not in self.data), mapped_to)
        found = [str(k) for k in self.data]
        if weighted_sum(mapped_to):
            what = f"missing column '{column}' (a term of the sum mapped to '{field}': {mapped_to})"
        elif column != mapped_to:
            what = f"missing column '{column}' (mapped to '{field}' as {mapped_to})"
        elif self.mapped(field):
            what = f"missing column '{column}' (mapped to '{field}')"
        else:
            what = f"missing field '{field}'"
        if need:
            what += f"; {need}"
        what += f" (found: {listing(found) or 'no fields'}"
        close = closest((column, *wanted), found)
        if close and close[0] == column and self.mapped(field):
            what += f"; did you mean '{close[1]}'?"  # the mapping is misspelt, not the data
        elif close:
            what += f"; '{close[1]}' looks like a misspelling of '{close[0]}'"
        return Bad(column, what + ")", lacks=None if weighted_sum(mapped_to) else field)

    def others(self, *fields: str) -> list[str]:
        """The row's columns, sorted, other than those that ``fields`` are read from."""
        used = {column for field in fields for column in read_from(self.column(field))}
        return sorted(str(key) for key in self.data if key not in used)

    def text(self, field: str, *, allow_list: bool = True) -> Text | None:
        """The field as a Text; records a problem and returns None if it is missing or bad."""
        return self.read(field, lambda value, column: to_text(value, column, allow_list=allow_list))

    def read(self, field: str, parse: Callable[[Any, str], Any], *, optional: bool = False) -> Any:
        """The field parsed by ``parse(value, column)``, or None with the problem recorded.

        An ``optional`` field that the row lacks, or that holds null, is None with no problem,
        unless it is mapped to a column: a mapped column must be there.
        """
        column = self.column(field)
        if not self.has(field):
            if not (optional and not self.mapped(field)):
                self.problems.append(self.missing(field))
            return None
        try:
            value = self.value(field)
            if optional and value is None:
                return None
            return parse(value, column)
        except Bad as bad:
            self.problems.append(bad)
            return None

    def value(self, field: str) -> Any:
        """The raw value of a field the row has: its column's, the list a ``LIST[].KEY`` path
        gathers, or the number a weighted sum makes."""
        column = self.column(field)
        path = item_path(column)
        if path is not None:
            return items(self.data[path[0]], path[0], path[1], column)
        terms = weighted_sum(column)
        if terms is None:
            return self.data[column]
        total = 0.0
        for weight, name in terms:
            try:
                total += weight * to_number(self.data[name], name)
            except Bad as bad:
                raise Bad(name, f"{bad.message} (a term of the sum mapped to '{field}': {column})") from None
        return total

    def attempt(self, check: Callable[..., None], *args: Any) -> None:
        """Run one check, recording its problem instead of stopping at it."""
        try:
            check(*args)
        except Bad as bad:
            self.problems.append(bad)

    def stop_if_problems(self) -> None:
        if self.problems:
            raise Stop


def listing(names: list[str]) -> str:
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def misspelling(wanted: tuple[str, ...], found: list[str]) -> str:
    """" ('promt' looks like a misspelling of 'prompt')", or "" when no name is close."""
    close = closest(wanted, found)
    return f" ('{close[1]}' looks like a misspelling of '{close[0]}')" if close else ""


def closest(wanted: tuple[str, ...], found: list[str]) -> tuple[str, str] | None:
    """The (wanted, found) name pair most alike, if alike enough to be a typo.

    A typo is one edit (a letter added, dropped or changed, or two neighbours swapped), or two in
    a wanted name of nine letters or more; case does not count. So 'choosen' is 'chosen' mistyped
    and 'complexity' (three letters changed) is no 'completion'.
    """
    best: tuple[int, str, str] | None = None
    for want in wanted:
        allowed = 2 if len(want) >= 9 else 1
        for key in found:
            distance = edit_distance(want.lower(), key.lower())
            if key != want and distance <= allowed and (best is None or distance < best[0]):
                best = (distance, want, key)
    return (best[1], best[2]) if best else None


def edit_distance(a: str, b: str) -> int:
    """Letters added, dropped, changed, or neighbours swapped, to make ``b`` from ``a`` (the
    optimal string alignment distance)."""
    before, row = [], list(range(len(b) + 1))  # the rows for a[:i-2] and a[:i-1]
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        before, row = row, current
    return row[-1]


# ---------------------------------------------------------------- paths into lists, weighted sums

_PATH = re.compile(r"([^\[\]]+)\[\]\.([^\[\]]+)")
_TERM = re.compile(r"\s*([+-]?)\s*((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\*\s*([A-Za-z_]\w*)\s*")


def item_path(column: str) -> tuple[str, str] | None:
    """('answers', 'rank') for the mapping value 'answers[].rank'; None for any other value."""
    match = _PATH.fullmatch(column)
    return (match[1], match[2]) if match else None


def weighted_sum(column: str) -> list[tuple[float, str]] | None:
    """[(0.65, 'helpfulness'), (-0.1, 'verbosity')] for '0.65*helpfulness - 0.1*verbosity'; None
    when the value is no such sum. Every term is WEIGHT*COLUMN; terms are joined by + or -."""
    if "*" not in column:
        return None
    terms: list[tuple[float, str]] = []
    at = 0
    while at < len(column):
        match = _TERM.match(column, at)
        if match is None or (terms and not match[1]):
            return None
        terms.append((-float(match[2]) if match[1] == "-" else float(match[2]), match[3]))
        at = match.end()
    return terms or None


def read_from(column: str) -> list[str]:
    """The row's columns that a mapping value reads: the list of a path, the terms of a sum, or
    the column itself."""
    path = item_path(column)
    if path is not None:
        return [path[0]]
    terms = weighted_sum(column)
    return [name for _, name in terms] if terms else [column]


def items(value: Any, name: str, key: str, column: str) -> list[Any]:
    """The value of ``key`` in every object of the list ``value`` (the column ``name``); the
    problems name ``column``, the path."""
    out = []
    for i, item in enumerate(to_list(value, column, "objects"), start=1):
        if not isinstance(item, Mapping):
            raise Bad(column, f"item {i} of '{name}' is not an object (got {type_name(item)})")
        if key not in item:
            keys = listing(sorted(str(k) for k in item)) or "no keys"
            raise Bad(column, f"item {i} of '{name}' has no '{key}' (it has: {keys})")
        out.append(item[key])
    return out


def to_text(value: Any, column: str, *, allow_list: bool = True) -> Text:
    if value is None:
        raise Bad(column, "missing value (null)")
    if isinstance(value, float) and math.isnan(value):
        raise Bad(column, "missing value (NaN)")
    if isinstance(value, str):
        return value
    if allow_list and isinstance(value, list | tuple):
        return to_conversation(value, column)
    expected = "a string or a list of messages" if allow_list else "a string"
    raise Bad(column, f"expected {expected}, got {type_name(value)}")


def to_conversation(items: list[Any] | tuple[Any, ...], column: str) -> Conversation:
    messages = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            raise Bad(column, f"message {i} is not an object (got {type_name(item)})")
        for key in ("role", "content"):
            if key not in item:
                raise Bad(column, f"message {i} has no '{key}'")
        role, content = item["role"], item["content"]
        if role not in ROLES:
            raise Bad(column, f"message {i}: unknown role {role!r} (allowed: {', '.join(ROLES)})")
        if not isinstance(content, str):
            got = "null" if content is None else type_name(content)
            raise Bad(column, f"message {i}: content must be a string, got {got}")
        messages.append(Message(role, content))
    return tuple(messages)


def type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return type(value).__name__


def same_kind(a: Text, a_col: str, b: Text, b_col: str) -> None:
    if isinstance(a, tuple) != isinstance(b, tuple):
        raise Bad(b_col, f"mixed kinds in one row: '{a_col}' is {kind_name(a)} but '{b_col}' is {kind_name(b)}")


def kind_name(text: Text) -> str:
    return "a list of messages" if isinstance(text, tuple) else "a string"


def match_prompt(prompt: Text, p_col: str, response: Text, r_col: str) -> Text:
    """The prompt in the response's kind; an empty string prompt fits a conversation as ()."""
    if isinstance(response, tuple) and prompt == "":
        return ()
    same_kind(response, r_col, prompt, p_col)
    return prompt


def check_response(text: Text, column: str) -> None:
    if isinstance(text, str):
        if not text.strip():
            raise Bad(column, "empty response")
        return
    if not text:
        raise Bad(column, "empty response (no messages)")
    if text[-1].role != "assistant":
        raise Bad(column, f"conversation does not end with an assistant turn (last role: {text[-1].role})")
    if not any(m.content.strip() for m in text if m.role == "assistant"):
        raise Bad(column, "empty response (the assistant turns are blank)")


# ---------------------------------------------------------------- numbers, labels, lists


def to_number(value: Any, column: str, item: str = "") -> float:
    """A finite number. Strings holding one are read too: CSV cells are text.

    ``item`` ("score 2") starts the message when the value is one item of a list.
    """
    at = f"{item}: " if item else ""
    if value is None:
        raise Bad(column, f"{at}missing value (null)")
    if isinstance(value, bool):
        raise Bad(column, f"{at}expected a number, got a boolean ({str(value).lower()})")
    try:
        if isinstance(value, str):
            number = float(value.strip())
        elif isinstance(value, int | float):
            number = float(value)
        else:
            raise Bad(column, f"{at}expected a number, got {type_name(value)}")
    except ValueError:
        raise Bad(column, f"{at}expected a number, got the string {value!r}") from None
    except OverflowError:
        raise Bad(column, f"{at}the number {value} is too large") from None
    if math.isnan(number):
        raise Bad(column, f"{at}not a number (NaN)")
    if math.isinf(number):
        raise Bad(column, f"{at}not a finite number ({number})")
    return number


_LABELS = {"true": True, "false": False, "1": True, "0": False}


def to_label(value: Any, column: str) -> bool:
    """A thumbs up (True) or down (False): a JSON boolean, the integer 1 or 0, or one of the
    strings "true", "false", "1", "0" (any case; CSV cells are text). Nothing else: "yes" or 0.5
    could mean several things."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABELS:
        return _LABELS[value.strip().lower()]
    got = "null" if value is None else repr(value) if isinstance(value, str | int | float) else type_name(value)
    raise Bad(column, f"expected a boolean label (true or false, or 1 or 0), got {got}")


def to_list(value: Any, column: str, what: str) -> list[Any]:
    """A list (of ``what``, for the message). A string holding a JSON list is read as one: a CSV
    cell cannot hold a list otherwise."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise Bad(column, f"expected a list of {what}, got a string that is not a JSON list") from None
    if value is None:
        raise Bad(column, f"expected a list of {what}, got null")
    if not isinstance(value, list | tuple):
        got = "a string" if isinstance(value, str) else type_name(value)
        raise Bad(column, f"expected a list of {what}, got {got}")
    return list(value)

