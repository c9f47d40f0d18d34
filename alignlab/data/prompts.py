"""Prompts alone, read out of data of any shape that has them (what ``alignlab sample`` answers).

A row's prompt is its ``prompt`` column (or the column ``prompt_column`` names), a string or a
conversation, whatever else the row holds: a file of prompts alone (``{"prompt": "…"}``), pairs,
SFT examples, thumbs up/down, scored or ranked responses, negatives. Only that column is read; the
row's other columns are not checked. Rows without one are read as their shape reads them: a pair
with an implicit prompt gives the shared beginning of chosen and rejected (``rows.formats``), and
a ``messages`` conversation the turns before its first assistant turn (all of them when it has
none: a conversation that waits for its answer). A joint
row has two prompts, so one must be chosen with ``prompt_column``; a plain ``text`` row has none.
An empty prompt is a bad row: there is nothing to answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from alignlab.data.detect import detect_kind
from alignlab.data.records import PromptRecord, Text
from alignlab.data.rows.fields import Bad, RowReader, to_text
from alignlab.data.rows.formats import to_record
from alignlab.data.sources import iter_rows
from alignlab.errors import DataError, RowIssue, UserError, option


def load_prompts(source: str | os.PathLike[str], *, prompt_column: str | None = None, split: str | None = None,
                 limit: int | None = None, skipped: list[RowIssue] | None = None) -> list[PromptRecord]:
    """The prompts of ``source`` in order, each with its source and row (1-based; a JSONL file's
    line number); the first ``limit`` of them when given (later rows are not read).

    ``source`` is anything ``load_records`` reads (a file, a dataset directory, a hub dataset).
    Raises ``UserError`` for a source with no rows, and ``DataError`` naming every bad row (read
    before the limit was reached) when a row has no prompt or an empty one; given a ``skipped``
    list, the bad rows' issues go there instead and the good rows are returned (``skip_invalid``).
    """
    if limit is not None and limit < 1:
        raise UserError(f"{option('limit', limit)}: must be >= 1")
    name = os.fspath(source)
    prompts: list[PromptRecord] = []
    issues: list[RowIssue] = []
    rows = 0
    for raw in iter_rows(source, split=split):
        rows += 1
        found = [raw.data] if isinstance(raw.data, RowIssue) else prompt_of(raw.data, raw.source, raw.row,
                                                                             prompt_column)
        if isinstance(found, list):
            issues += found
        else:
            prompts.append(found)
            if limit is not None and len(prompts) == limit:
                break
    if rows == 0:
        raise UserError(f"{name}: no rows (there are no prompts to answer)")
    if issues and skipped is not None:
        skipped += issues
    elif issues:
        lacking = any(issue.lacks == "prompt" for issue in issues)
        raise DataError(issues, hint=f"name the column that holds the prompts with {option('prompt_column', 'NAME')}"
                        if lacking else "every row needs a prompt")
    return prompts


def skipped_prompts(source: str, issues: list[RowIssue]) -> str:
    """The line that says how many prompt rows of ``source`` were skipped (``skip_invalid``), and
    the first one's issue."""
    rows = len({(issue.source, issue.row) for issue in issues})
    first = min(issues, key=lambda issue: (issue.source, issue.row))
    return f"{source}: {rows} invalid prompt row{'s' if rows > 1 else ''} skipped (first: {first})"


def prompt_of(data: Mapping[str, Any], source: str, row: int, prompt_column: str | None = None
              ) -> PromptRecord | list[RowIssue]:
    """The prompt of one raw row, or the issues that stop it being read (see the module docstring)."""
    reader = RowReader(data, {"prompt": prompt_column} if prompt_column else {})
    column = reader.column("prompt")
    try:
        if reader.has("prompt"):
            prompt = to_text(reader.value("prompt"), column)
        elif prompt_column:
            raise reader.missing("prompt")
        else:
            found = _prompt_of_shape(data, reader, source, row)
            if isinstance(found, list):
                return found
            prompt, column = found
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise Bad(column, "empty prompt")
    except Bad as bad:
        return [RowIssue(source, row, bad.field, bad.message, lacks=bad.lacks)]
    return PromptRecord(prompt, source=source, row=row)


def _prompt_of_shape(data: Mapping[str, Any], reader: RowReader, source: str, row: int
                     ) -> tuple[Text, str] | list[RowIssue]:
    """The prompt of a row without a prompt column, as its shape reads it: (prompt, the column it
    came from), or the row's issues."""
    kind = detect_kind(data)
    if kind == "joint":
        raise Bad(None, "a joint row holds two prompts (prompt_chosen and prompt_rejected); choose one with "
                        f"{option('prompt_column', 'prompt_chosen')}")
    if kind == "pair":
        record = to_record(data, kind, source=source, row=row)
        return record if isinstance(record, list) else (record.prompt, "chosen")
    if kind == "sft" and "messages" in data:
        messages = to_text(data["messages"], "messages")
        if not isinstance(messages, tuple):
            raise Bad("messages", "expected a list of messages, got a string")
        first = next((i for i, m in enumerate(messages) if m.role == "assistant"), len(messages))
        return messages[:first], "messages"
    raise reader.missing("prompt", need="each row needs a prompt (a 'prompt' column, a pair whose chosen and "
                                        "rejected share their beginning, or 'messages')")
