"""Turn one raw row (a dict) into a typed record, or say precisely what is wrong with it.

Accepted shapes (TRL's dataset formats, plus Anthropic HH transcripts):

- pair, standard:        {"prompt": str, "chosen": str, "rejected": str}
- pair, conversational:  {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}
- pair, implicit prompt: {"chosen": ..., "rejected": ...}; the shared beginning is the prompt.
  Anthropic HH transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") are split after the last
  "\\n\\nAssistant:" both share. An empty shared beginning is only accepted when the row has no
  other columns: otherwise the prompt is probably in a column of another name.
- pair, UltraFeedback:   {"prompt": str, "chosen": [msgs], "rejected": [msgs]} where both
  conversations start with the prompt's turns; the turns they share are the prompt, as in TRL.
- sft:                   {"prompt": str, "completion": str}, {"text": str},
                         {"prompt": [msgs], "completion": [msgs]}, {"messages": [msgs]}
  A "text" row whose other columns hold text too (an "instruction") is refused unless "text" is
  mapped explicitly: one of those columns is probably the prompt.

``columns`` maps alignlab field names to the user's column names. Every problem becomes a
``RowIssue`` naming the source, the row and the user's column.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from alignlab.data.records import ROLES, Conversation, Message, PairRecord, Record, SFTRecord, Text
from alignlab.errors import RowIssue, UserError

Kind = Literal["sft", "pair"]
KINDS: tuple[str, ...] = ("sft", "pair")
FIELDS: dict[str, tuple[str, ...]] = {
    "pair": ("prompt", "chosen", "rejected"),
    "sft": ("prompt", "completion", "messages", "text"),
}
HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"


class _Bad(Exception):
    """Internal: one problem with one field of the row being converted."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class _Stop(Exception):
    """Internal: problems were collected; stop converting this row."""


def check_columns(kind: str, columns: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a column mapping for ``kind`` and return it as a plain dict.

    Raises ``UserError`` for an unknown kind, an unknown alignlab field, a non-string column name,
    two fields mapped to one column, or (sft) fields from different row shapes.
    """
    if kind not in KINDS:
        raise UserError(f"unknown data kind '{kind}'; expected one of: {', '.join(KINDS)}")
    mapping = dict(columns or {})
    allowed = FIELDS[kind]
    for field, column in mapping.items():
        if field not in allowed:
            raise UserError(
                f"columns: unknown field '{field}' for {kind} data; expected one of: {', '.join(allowed)}"
            )
        if not isinstance(column, str) or not column:
            raise UserError(
                f"columns: the column name for '{field}' must be a non-empty string, got {column!r}"
            )
    targets = list(mapping.values())
    for column in set(targets):
        if targets.count(column) > 1:
            shared = sorted(f for f, c in mapping.items() if c == column)
            raise UserError(f"columns: fields {', '.join(shared)} are all mapped to column '{column}'")
    if kind == "sft":
        shapes = [s for s in ({"messages"}, {"text"}, {"prompt", "completion"}) if s & mapping.keys()]
        if len(shapes) > 1:
            raise UserError(
                "columns: map either 'messages', or 'text', or 'prompt' and 'completion', not a mix "
                f"(got {', '.join(sorted(mapping))})"
            )
    return mapping


def to_record(
    data: Mapping[str, Any],
    kind: Kind,
    *,
    source: str,
    row: int,
    columns: Mapping[str, str] | None = None,
) -> Record | list[RowIssue]:
    """Convert one raw row into a ``PairRecord``/``SFTRecord``, or return every issue found.

    ``columns`` (already checked with ``check_columns``) maps alignlab fields to column names.
    Extra message keys other than role and content (``name``, ``tool_calls``...) are ignored.
    Other columns are ignored too, except where they suggest that a prompt is being lost: a pair
    whose implicit prompt is empty, or an sft ``text`` row (with 'text' not mapped) that has other
    non-empty string columns, is an issue naming those columns.
    """
    if kind not in KINDS:
        raise UserError(f"unknown data kind '{kind}'; expected one of: {', '.join(KINDS)}")
    reader = _RowReader(data, dict(columns or {}))
    try:
        return _pair(reader, source, row) if kind == "pair" else _sft(reader, source, row)
    except _Bad as bad:
        reader.problems.append(bad)
    except _Stop:
        pass
    return [RowIssue(source, row, b.field, b.message) for b in reader.problems]


# ---------------------------------------------------------------- reading fields


class _RowReader:
    """Reads alignlab fields out of one row through the column mapping, collecting problems."""

    def __init__(self, data: Mapping[str, Any], mapping: dict[str, str]):
        self.data = data
        self.mapping = mapping
        self.problems: list[_Bad] = []

    def column(self, field: str) -> str:
        return self.mapping.get(field, field)

    def has(self, field: str) -> bool:
        return self.column(field) in self.data

    def mapped(self, field: str) -> bool:
        return field in self.mapping

    def missing(self, field: str, need: str = "", wanted: tuple[str, ...] = ()) -> _Bad:
        """A problem for a field (or mapped column) the row does not have.

        Says which fields the row has and, when one of them is close to a wanted name (the
        missing column, plus ``wanted``), which one looks misspelt.
        """
        column = self.column(field)
        found = [str(k) for k in self.data]
        what = (
            f"missing column '{column}' (mapped to '{field}')"
            if self.mapped(field)
            else f"missing field '{field}'"
        )
        if need:
            what += f"; {need}"
        what += f" (found: {_listing(found) or 'no fields'}"
        close = _closest((column, *wanted), found)
        if close:
            what += f"; '{close[1]}' looks like a misspelling of '{close[0]}'"
        return _Bad(column, what + ")")

    def others(self, *fields: str) -> list[str]:
        """The row's columns, sorted, other than those that ``fields`` are read from."""
        used = {self.column(field) for field in fields}
        return sorted(str(key) for key in self.data if key not in used)

    def text(self, field: str, *, allow_list: bool = True) -> Text | None:
        """The field as a Text; records a problem and returns None if it is missing or bad."""
        column = self.column(field)
        if column not in self.data:
            self.problems.append(self.missing(field))
            return None
        try:
            return _to_text(self.data[column], column, allow_list=allow_list)
        except _Bad as bad:
            self.problems.append(bad)
            return None

    def attempt(self, check: Callable[..., None], *args: Any) -> None:
        """Run one check, recording its problem instead of stopping at it."""
        try:
            check(*args)
        except _Bad as bad:
            self.problems.append(bad)

    def stop_if_problems(self) -> None:
        if self.problems:
            raise _Stop


def _listing(names: list[str]) -> str:
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def _misspelling(wanted: tuple[str, ...], found: list[str]) -> str:
    """" ('promt' looks like a misspelling of 'prompt')", or "" when no name is close."""
    close = _closest(wanted, found)
    return f" ('{close[1]}' looks like a misspelling of '{close[0]}')" if close else ""


def _closest(wanted: tuple[str, ...], found: list[str]) -> tuple[str, str] | None:
    """The (wanted, found) name pair most alike, if alike enough to be a typo."""
    best: tuple[float, str, str] | None = None
    for want in wanted:
        for key in found:
            ratio = difflib.SequenceMatcher(None, want.lower(), key.lower()).ratio()
            if key != want and ratio >= 0.7 and (best is None or ratio > best[0]):
                best = (ratio, want, key)
    return (best[1], best[2]) if best else None


def _to_text(value: Any, column: str, *, allow_list: bool = True) -> Text:
    if value is None:
        raise _Bad(column, "missing value (null)")
    if isinstance(value, float) and math.isnan(value):
        raise _Bad(column, "missing value (NaN)")
    if isinstance(value, str):
        return value
    if allow_list and isinstance(value, list | tuple):
        return _to_conversation(value, column)
    expected = "a string or a list of messages" if allow_list else "a string"
    raise _Bad(column, f"expected {expected}, got {_type_name(value)}")


def _to_conversation(items: list[Any] | tuple[Any, ...], column: str) -> Conversation:
    messages = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            raise _Bad(column, f"message {i} is not an object (got {_type_name(item)})")
        for key in ("role", "content"):
            if key not in item:
                raise _Bad(column, f"message {i} has no '{key}'")
        role, content = item["role"], item["content"]
        if role not in ROLES:
            raise _Bad(column, f"message {i}: unknown role {role!r} (allowed: {', '.join(ROLES)})")
        if not isinstance(content, str):
            got = "null" if content is None else _type_name(content)
            raise _Bad(column, f"message {i}: content must be a string, got {got}")
        messages.append(Message(role, content))
    return tuple(messages)


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return type(value).__name__


# ---------------------------------------------------------------- pairs


def _pair(reader: _RowReader, source: str, row: int) -> PairRecord:
    chosen = reader.text("chosen")
    rejected = reader.text("rejected")
    explicit_prompt = reader.mapped("prompt") or reader.has("prompt")
    prompt = reader.text("prompt") if explicit_prompt else None
    reader.stop_if_problems()
    assert chosen is not None and rejected is not None
    c_col, r_col = reader.column("chosen"), reader.column("rejected")
    _same_kind(chosen, c_col, rejected, r_col)
    if chosen == rejected:
        raise _Bad(r_col, "chosen and rejected are identical")
    if prompt is None:
        prompt, chosen, rejected = _split_implicit(chosen, c_col, rejected, r_col)
        if not prompt:
            _check_nothing_unused(reader, c_col, r_col)
    elif _string_beside_conversations(prompt, chosen, rejected):
        assert isinstance(prompt, str) and isinstance(chosen, tuple) and isinstance(rejected, tuple)
        p_col = reader.column("prompt")
        prompt, chosen, rejected = _split_under_string_prompt(prompt, p_col, chosen, c_col, rejected, r_col)
    else:
        prompt = _match_prompt(prompt, reader.column("prompt"), chosen, c_col)
    reader.attempt(_check_response, chosen, c_col)
    reader.attempt(_check_response, rejected, r_col)
    reader.stop_if_problems()
    return PairRecord(prompt=prompt, chosen=chosen, rejected=rejected, source=source, row=row)


def _check_nothing_unused(reader: _RowReader, c_col: str, r_col: str) -> None:
    """Refuse an empty implicit prompt in a row that has columns besides chosen and rejected.

    Some data really has no prompt, but a row with other columns probably keeps its prompt in
    one of them (``question``, a misspelt ``promt``), which would otherwise be dropped silently.
    """
    unused = reader.others("chosen", "rejected")
    if unused:
        raise _Bad(
            reader.column("prompt"),
            f"{c_col} and {r_col} share no prompt; unused columns: {_listing(unused)}"
            f"{_misspelling(('prompt',), unused)}; map one with --columns.prompt NAME",
        )


def _string_beside_conversations(prompt: Text, chosen: Text, rejected: Text) -> bool:
    """A non-empty string prompt with two conversations that each start with a non-assistant turn."""
    whole = [isinstance(t, tuple) and bool(t) and t[0].role != "assistant" for t in (chosen, rejected)]
    return isinstance(prompt, str) and prompt != "" and all(whole)


def _split_under_string_prompt(
    prompt: str, p_col: str, chosen: Conversation, c_col: str, rejected: Conversation, r_col: str
) -> tuple[Text, Text, Text]:
    """UltraFeedback-style rows: a string prompt beside two whole conversations.

    As in TRL, the prompt is the turns both conversations share, and the string is not used
    beyond a check: it must be the content (white space aside) of one of the shared user turns,
    which catches rows whose columns do not belong together.
    """
    shared, chosen_rest, rejected_rest = _split_implicit(chosen, c_col, rejected, r_col)
    users = [m.content.strip() for m in shared if m.role == "user"]
    if not users:
        raise _Bad(p_col, f"'{c_col}' and '{r_col}' are whole conversations that share no user turn, "
                          f"so there is no prompt to match '{p_col}'")
    if prompt.strip() not in users:
        raise _Bad(p_col, f"'{p_col}' is not the content of any user turn that '{c_col}' and '{r_col}' share")
    return shared, chosen_rest, rejected_rest


def _split_implicit(chosen: Text, c_col: str, rejected: Text, r_col: str) -> tuple[Text, Text, Text]:
    """Split two whole texts into (shared prompt, chosen rest, rejected rest)."""
    if isinstance(chosen, tuple) and isinstance(rejected, tuple):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
    elif isinstance(chosen, str) and isinstance(rejected, str):
        cut = _string_cut(chosen, rejected, c_col)
    else:  # _same_kind has already rejected mixed kinds
        raise AssertionError("mixed kinds")
    for text, column in ((chosen, c_col), (rejected, r_col)):
        if isinstance(text, str) and text[cut:] and not text[cut:].strip():
            raise _Bad(column, f"empty response: the prompt shared with the other response leaves only "
                               f"white space of '{column}'")
        if not text[cut:]:
            raise _Bad(column, f"the prompt shared with the other response swallows the whole of '{column}'")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _string_cut(chosen: str, rejected: str, c_col: str) -> int:
    """Where the shared prompt of two strings ends.

    Anthropic HH transcripts are cut just after the last "\\n\\nAssistant:" both share, so the
    response keeps its leading space. Other strings, and "Human:" transcripts with no
    "\\n\\nAssistant:" at all (single newlines), are cut at the last whitespace of their common
    prefix, so that no word is split and the space starts the response (" Paris"), the way a
    tokenizer sees a continuation.
    """
    common = _common_prefix_len(chosen, rejected)
    has_marker = HH_ASSISTANT in chosen or HH_ASSISTANT in rejected
    if _is_hh(chosen) and _is_hh(rejected) and has_marker:
        marker = chosen.rfind(HH_ASSISTANT, 0, common)
        if marker < 0:
            raise _Bad(
                c_col, "Anthropic HH transcripts share no '\\n\\nAssistant:' turn, so there is no prompt"
            )
        return marker + len(HH_ASSISTANT)
    return max((i for i in range(common) if chosen[i].isspace()), default=0)


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _is_hh(text: str) -> bool:
    return text.startswith(HH_HUMAN) or text.startswith(HH_HUMAN.lstrip())


# ---------------------------------------------------------------- sft


def _sft(reader: _RowReader, source: str, row: int) -> SFTRecord:
    shape = _sft_shape(reader)
    if shape == "messages":
        prompt, completion = _split_messages(reader)
    elif shape == "text":
        text = reader.text("text", allow_list=False)
        reader.stop_if_problems()
        assert isinstance(text, str)
        prompt, completion = "", text
        if not text.strip():
            raise _Bad(reader.column("text"), "empty text")
        if not reader.mapped("text"):
            _check_text_alone(reader)
    else:
        completion = reader.text("completion")
        prompt = reader.text("prompt")
        reader.stop_if_problems()
        assert prompt is not None and completion is not None
        c_col = reader.column("completion")
        prompt = _match_prompt(prompt, reader.column("prompt"), completion, c_col)
        _check_response(completion, c_col)
    return SFTRecord(prompt=prompt, completion=completion, source=source, row=row)


def _check_text_alone(reader: _RowReader) -> None:
    """Refuse a 'text' row whose other columns hold text too.

    A 'text' row trains on the whole text with no prompt. If another column holds a non-empty
    string (an 'instruction', a 'prompt' beside 'text'), it is probably the prompt and would be
    dropped silently. Columns holding numbers, lists, nulls or blank strings do not count, and
    mapping 'text' explicitly (--columns.text text) says that the text alone is meant.
    """
    t_col = reader.column("text")
    unused = [c for c in reader.others("text") if isinstance(reader.data[c], str) and reader.data[c].strip()]
    if unused:
        raise _Bad(
            t_col,
            f"'{t_col}' would be trained on alone, with no prompt, but other columns hold text: "
            f"{_listing(unused)}{_misspelling(('prompt', 'completion'), unused)}; map the prompt and "
            f"completion with --columns.prompt NAME --columns.completion NAME, or pass "
            f"--columns.text {t_col} to train on '{t_col}' alone",
        )


def _sft_shape(reader: _RowReader) -> str:
    for field in ("messages", "text"):
        if reader.mapped(field):
            return field
    if reader.mapped("prompt") or reader.mapped("completion") or reader.has("completion"):
        return "completion"
    for field in ("messages", "text"):
        if reader.has(field):
            return field
    if reader.has("prompt"):
        return "completion"
    raise reader.missing(
        "completion",
        need="sft rows need 'messages', 'text', or 'prompt' and 'completion'",
        wanted=("messages", "text", "prompt"),
    )


def _split_messages(reader: _RowReader) -> tuple[Conversation, Conversation]:
    """Split a whole conversation at its first assistant turn into (prompt, completion)."""
    column = reader.column("messages")
    messages = reader.text("messages")
    reader.stop_if_problems()
    if not isinstance(messages, tuple):
        raise _Bad(column, "expected a list of messages, got a string (use 'text' for plain text)")
    first = next((i for i, m in enumerate(messages) if m.role == "assistant"), None)
    if first is None:
        raise _Bad(column, "conversation has no assistant turn")
    completion = messages[first:]
    _check_response(completion, column)
    return messages[:first], completion


# ---------------------------------------------------------------- shared checks


def _same_kind(a: Text, a_col: str, b: Text, b_col: str) -> None:
    if isinstance(a, tuple) != isinstance(b, tuple):
        raise _Bad(b_col, f"mixed kinds in one row: '{a_col}' is {_kind(a)} but '{b_col}' is {_kind(b)}")


def _kind(text: Text) -> str:
    return "a list of messages" if isinstance(text, tuple) else "a string"


def _match_prompt(prompt: Text, p_col: str, response: Text, r_col: str) -> Text:
    """The prompt in the response's kind; an empty string prompt fits a conversation as ()."""
    if isinstance(response, tuple) and prompt == "":
        return ()
    _same_kind(response, r_col, prompt, p_col)
    return prompt


def _check_response(text: Text, column: str) -> None:
    if isinstance(text, str):
        if not text.strip():
            raise _Bad(column, "empty response")
        return
    if not text:
        raise _Bad(column, "empty response (no messages)")
    if text[-1].role != "assistant":
        raise _Bad(column, f"conversation does not end with an assistant turn (last role: {text[-1].role})")
    if not any(m.content.strip() for m in text if m.role == "assistant"):
        raise _Bad(column, "empty response (the assistant turns are blank)")
