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
  Pair rows may also carry "score_chosen" and "score_rejected" (both or neither) and a preference
  "strength" in [0, 1].
- sft:                   {"prompt": str, "completion": str}, {"text": str},
                         {"prompt": [msgs], "completion": [msgs]}, {"messages": [msgs]}
  A "text" row whose other columns hold text too (an "instruction") is refused unless "text" is
  mapped explicitly: one of those columns is probably the prompt.

The other kinds (joint, unpaired, scored, ranked, negatives) are read in ``shapes``.

``columns`` maps alignlab field names to the user's column names, to a path into a list of
objects (a ranked row's completions, scores and ranks: ``answers[].rank``), or to a weighted sum of
number columns (a score: ``0.65*helpfulness + 0.8*correctness``); see ``fields``. Every problem
becomes a ``RowIssue`` naming the source, the row and the user's column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from alignlab.data.records import Conversation, PairRecord, Record, SFTRecord, Text
from alignlab.data.rows import shapes
from alignlab.data.rows.fields import (
    Bad,
    RowReader,
    Stop,
    check_response,
    item_path,
    listing,
    match_prompt,
    misspelling,
    same_kind,
    weighted_sum,
)
from alignlab.errors import RowIssue, UserError, columns_option

Kind = Literal["sft", "pair", "joint", "unpaired", "scored", "ranked", "negatives"]
KINDS: tuple[str, ...] = ("sft", "pair", "joint", "unpaired", "scored", "ranked", "negatives")
FIELDS: dict[str, tuple[str, ...]] = {
    "pair": ("prompt", "chosen", "rejected", "score_chosen", "score_rejected", "strength"),
    "sft": ("prompt", "completion", "messages", "text"),
    "joint": ("prompt", "prompt_chosen", "chosen", "prompt_rejected", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "scored": ("prompt", "completion", "score"),
    "ranked": ("prompt", "completions", "scores", "ranks"),
    "negatives": ("prompt", "rejected"),
}
# The fields that may be read through a path into a list (LIST[].KEY), and as a weighted sum.
PATH_FIELDS = ("completions", "scores", "ranks")
SUM_FIELDS = ("score",)
HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"


def check_columns(kind: str, columns: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a column mapping for ``kind`` and return it as a plain dict.

    Raises ``UserError`` for an unknown kind, an unknown alignlab field, a non-string column name,
    a path or weighted sum that does not read or that its field cannot take, two fields mapped to
    one column, or (sft) fields from different row shapes.
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
        _check_form(field, column)
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
    if kind == "joint" and "prompt" in mapping and mapping.keys() & {"prompt_chosen", "prompt_rejected"}:
        raise UserError("columns: map either 'prompt' (shared by both responses) or 'prompt_chosen' and "
                        "'prompt_rejected', not both")
    return mapping


def _check_form(field: str, column: str) -> None:
    """Refuse a path (LIST[].KEY) or weighted sum (W*COLUMN + ...) that is malformed or whose
    field cannot take it."""
    if "[]" in column:
        if field not in PATH_FIELDS:
            raise UserError(f"columns: '{field}' is read from one column; a path into a list like '{column}' "
                            f"is for {', '.join(PATH_FIELDS)}")
        if item_path(column) is None:
            raise UserError(f"columns: cannot read '{column}' (for '{field}') as a path into a list; write "
                            f"LIST[].KEY, like answers[].{'answer' if field == 'completions' else field[:-1]}")
    elif "*" in column:
        if field not in SUM_FIELDS:
            raise UserError(f"columns: '{field}' is read from one column; a weighted sum like '{column}' is for "
                            f"{', '.join(SUM_FIELDS)}")
        terms = weighted_sum(column)
        if terms is None:
            raise UserError(f"columns: cannot read '{column}' (for '{field}') as a weighted sum; write "
                            "WEIGHT*COLUMN terms joined by + or -, like 0.65*helpfulness + 0.8*correctness")
        names = [name for _, name in terms]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UserError(f"columns: the sum for '{field}' names {', '.join(repeated)} more than once")


def to_record(
    data: Mapping[str, Any],
    kind: Kind,
    *,
    source: str,
    row: int,
    columns: Mapping[str, str] | None = None,
    strict_order: bool = False,
) -> Record | list[RowIssue]:
    """Convert one raw row into a record of ``kind``, or return every issue found.

    ``strict_order`` (ranked rows) refuses completions that tie.

    ``columns`` (already checked with ``check_columns``) maps alignlab fields to column names.
    Extra message keys other than role and content (``name``, ``tool_calls``...) are ignored.
    Other columns are ignored too, except where they suggest that a prompt is being lost: a pair
    whose implicit prompt is empty, or an sft ``text`` row (with 'text' not mapped) that has other
    non-empty string columns, is an issue naming those columns.
    """
    if kind not in KINDS:
        raise UserError(f"unknown data kind '{kind}'; expected one of: {', '.join(KINDS)}")
    reader = RowReader(data, dict(columns or {}))
    try:
        if kind == "ranked":
            return shapes.ranked(reader, source, row, strict_order=strict_order)
        convert = {"sft": _sft, "pair": _pair, **shapes.READERS}[kind]
        return convert(reader, source, row)
    except Bad as bad:
        reader.problems.append(bad)
    except Stop:
        pass
    return [RowIssue(source, row, b.field, b.message, lacks=b.lacks) for b in reader.problems]


# ---------------------------------------------------------------- pairs


def _pair(reader: RowReader, source: str, row: int) -> PairRecord:
    chosen = reader.text("chosen")
    rejected = reader.text("rejected")
    explicit_prompt = reader.mapped("prompt") or reader.has("prompt")
    prompt = reader.text("prompt") if explicit_prompt else None
    extras = shapes.pair_scores(reader)
    reader.stop_if_problems()
    assert chosen is not None and rejected is not None
    c_col, r_col = reader.column("chosen"), reader.column("rejected")
    same_kind(chosen, c_col, rejected, r_col)
    if chosen == rejected:
        raise Bad(r_col, "chosen and rejected are identical")
    if prompt is None:
        prompt, chosen, rejected = _split_implicit(chosen, c_col, rejected, r_col)
        if not prompt:
            _check_nothing_unused(reader, c_col, r_col)
    elif _string_beside_conversations(prompt, chosen, rejected):
        assert isinstance(prompt, str) and isinstance(chosen, tuple) and isinstance(rejected, tuple)
        p_col = reader.column("prompt")
        prompt, chosen, rejected = _split_under_string_prompt(prompt, p_col, chosen, c_col, rejected, r_col)
    else:
        prompt = match_prompt(prompt, reader.column("prompt"), chosen, c_col)
    reader.attempt(check_response, chosen, c_col)
    reader.attempt(check_response, rejected, r_col)
    reader.stop_if_problems()
    return PairRecord(prompt=prompt, chosen=chosen, rejected=rejected, source=source, row=row, **extras)


def _check_nothing_unused(reader: RowReader, c_col: str, r_col: str) -> None:
    """Refuse an empty implicit prompt in a row that has columns besides chosen and rejected.

    Some data really has no prompt, but a row with other columns probably keeps its prompt in
    one of them (``question``, a misspelt ``promt``), which would otherwise be dropped silently.
    """
    unused = reader.others("chosen", "rejected", "score_chosen", "score_rejected", "strength")
    if unused:
        raise Bad(
            reader.column("prompt"),
            f"{c_col} and {r_col} share no prompt; unused columns: {listing(unused)}"
            f"{misspelling(('prompt',), unused)}; map one with {columns_option({'prompt': 'NAME'})}",
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
        raise Bad(p_col, f"'{c_col}' and '{r_col}' are whole conversations that share no user turn, "
                          f"so there is no prompt to match '{p_col}'")
    if prompt.strip() not in users:
        raise Bad(p_col, f"'{p_col}' is not the content of any user turn that '{c_col}' and '{r_col}' share")
    return shared, chosen_rest, rejected_rest


def _split_implicit(chosen: Text, c_col: str, rejected: Text, r_col: str) -> tuple[Text, Text, Text]:
    """Split two whole texts into (shared prompt, chosen rest, rejected rest)."""
    if isinstance(chosen, tuple) and isinstance(rejected, tuple):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
    elif isinstance(chosen, str) and isinstance(rejected, str):
        cut = _string_cut(chosen, rejected, c_col)
    else:  # same_kind has already rejected mixed kinds
        raise AssertionError("mixed kinds")
    for text, column in ((chosen, c_col), (rejected, r_col)):
        if isinstance(text, str) and text[cut:] and not text[cut:].strip():
            raise Bad(column, f"empty response: the prompt shared with the other response leaves only "
                               f"white space of '{column}'")
        if not text[cut:]:
            raise Bad(column, f"the prompt shared with the other response swallows the whole of '{column}'")
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
            raise Bad(
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


def _sft(reader: RowReader, source: str, row: int) -> SFTRecord:
    shape = _sft_shape(reader)
    if shape == "messages":
        prompt, completion = _split_messages(reader)
    elif shape == "text":
        text = reader.text("text", allow_list=False)
        reader.stop_if_problems()
        assert isinstance(text, str)
        prompt, completion = "", text
        if not text.strip():
            raise Bad(reader.column("text"), "empty text")
        if not reader.mapped("text"):
            _check_text_alone(reader)
    else:
        completion = reader.text("completion")
        prompt = reader.text("prompt")
        reader.stop_if_problems()
        assert prompt is not None and completion is not None
        c_col = reader.column("completion")
        prompt = match_prompt(prompt, reader.column("prompt"), completion, c_col)
        check_response(completion, c_col)
    return SFTRecord(prompt=prompt, completion=completion, source=source, row=row)


def _check_text_alone(reader: RowReader) -> None:
    """Refuse a 'text' row whose other columns hold text too.

    A 'text' row trains on the whole text with no prompt. If another column holds a non-empty
    string (an 'instruction', a 'prompt' beside 'text'), it is probably the prompt and would be
    dropped silently. Columns holding numbers, lists, nulls or blank strings do not count, and
    mapping 'text' explicitly (--columns.text text) says that the text alone is meant.
    """
    t_col = reader.column("text")
    unused = [c for c in reader.others("text") if isinstance(reader.data[c], str) and reader.data[c].strip()]
    if unused:
        raise Bad(
            t_col,
            f"'{t_col}' would be trained on alone, with no prompt, but other columns hold text: "
            f"{listing(unused)}{misspelling(('prompt', 'completion'), unused)}; map the prompt and "
            f"completion with {columns_option({'prompt': 'NAME', 'completion': 'NAME'})}, or map "
            f"{columns_option({'text': t_col})} to train on '{t_col}' alone",
        )


def _sft_shape(reader: RowReader) -> str:
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


def _split_messages(reader: RowReader) -> tuple[Conversation, Conversation]:
    """Split a whole conversation at its first assistant turn into (prompt, completion)."""
    column = reader.column("messages")
    messages = reader.text("messages")
    reader.stop_if_problems()
    if not isinstance(messages, tuple):
        raise Bad(column, "expected a list of messages, got a string (use 'text' for plain text)")
    first = next((i for i, m in enumerate(messages) if m.role == "assistant"), None)
    if first is None:
        raise Bad(column, "conversation has no assistant turn")
    completion = messages[first:]
    check_response(completion, column)
    return messages[:first], completion


# ---------------------------------------------------------------- shared checks
