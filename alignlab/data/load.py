"""Load a data source into validated records, and split records into train and eval sets."""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from alignlab.data.detect import (
    COLUMNS,
    answer_list,
    compatible,
    conversion_hint,
    detect_kind,
    list_of_objects,
)
from alignlab.data.records import PairRecord, Record
from alignlab.data.rows.fields import item_path, weighted_sum
from alignlab.data.rows.formats import FIELDS, Kind, check_columns, to_record
from alignlab.data.sources import iter_rows
from alignlab.errors import DataError, RowIssue, UserError, columns_option, on_command_line, option

T = TypeVar("T")
_SHOWN_REASONS = 3
# What one record of each kind is called in a summary: (one, many).
NOUNS: dict[str, tuple[str, str]] = {
    "sft": ("SFT example", "SFT examples"),
    "pair": ("pair", "pairs"),
    "joint": ("joint pair", "joint pairs"),
    "unpaired": ("labelled response", "labelled responses"),
    "scored": ("scored response", "scored responses"),
    "ranked": ("ranked list", "ranked lists"),
    "negatives": ("negative", "negatives"),
}


@dataclass
class LoadResult:
    """The records loaded from one source, and what was skipped on the way."""

    records: list[Record]
    skipped: list[RowIssue]
    source: str
    kind: Kind = "pair"
    duplicates: int = 0  # rows whose content repeats an earlier row; they are kept
    detected: dict[str, str] = dataclasses.field(default_factory=dict)  # columns mapped without being asked

    @property
    def skipped_rows(self) -> int:
        """How many rows were skipped (a row may have several issues)."""
        return len({(issue.source, issue.row) for issue in self.skipped})

    def summary(self) -> str:
        """One human line: how many records, from where, and what was skipped and why."""
        n = len(self.records)
        noun = NOUNS[self.kind][0 if n == 1 else 1]
        line = f"loaded {n} {noun} from {self.source}"
        if self.detected:
            line += ", reading " + " and ".join(f"{field} from {column}" for field, column in self.detected.items())
        if self.duplicates:
            line += f", {self.duplicates} duplicate{_s(self.duplicates)} kept"
        if self.skipped:
            rows = self.skipped_rows
            line += f" ({rows} invalid row{_s(rows)} skipped: {self._reasons()})"
        return line

    def _reasons(self) -> str:
        """The first issue of each of the first few skipped rows, and how many rows are not shown."""
        first_per_row: dict[tuple[str, int], RowIssue] = {}
        for issue in self.skipped:
            first_per_row.setdefault((issue.source, issue.row), issue)
        shown = list(first_per_row.values())[:_SHOWN_REASONS]
        reasons = "; ".join(str(issue) for issue in shown)
        more = len(first_per_row) - len(shown)
        return reasons + (f"; and {more} more row{_s(more)}" if more else "")


def load_records(
    source: str | os.PathLike[str],
    kind: Kind,
    *,
    columns: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    split: str | None = None,
    strict_order: bool = False,
) -> LoadResult:
    """Read ``source`` and validate every row into records of ``kind``.

    ``kind`` is one of sft, pair, joint, unpaired, scored, ranked, negatives (see ``rows.formats``
    and ``rows.shapes`` for the rows each accepts); ``strict_order`` refuses ranked rows whose
    completions tie.

    ``source`` is a .jsonl/.json/.parquet/.csv file, a local dataset directory, or a Hugging
    Face Hub dataset name (see ``sources.iter_rows``); ``split`` picks a split where there are
    several (default "train"). ``columns`` maps alignlab field names (``rows.formats.FIELDS``) to the
    source's column names.

    Unless ``columns`` is given, the first readable row's column names are checked against the
    kind: a file that holds another shape (ranked lists loaded as pairs, thumbs up/down loaded as
    SFT examples) is refused as a whole, with the `alignlab convert` command that makes the
    needed shape from it, rather than row by row or, worse, by quietly ignoring a column.
    Ranked rows with no 'completions' column (and none mapped) whose first readable row keeps
    its answers in a list of objects with ranks or scores (Nectar's ``answers``) are read through
    that list, for every row (``detect.answer_list``; ``LoadResult.detected`` says how).

    Every row is checked. If any row is bad, raises ``DataError`` holding every issue, unless
    ``skip_invalid``, in which case bad rows are left out and listed in ``LoadResult.skipped``.
    When every row is bad, the message does not offer ``skip_invalid`` (it would leave nothing)
    but the column mapping that names the fields the rows lack.
    For pairs, a file in which some rows have a prompt column and others do not is taken to
    have lost the prompts of the others: those rows are bad ones too (the field 'prompt').
    Raises ``UserError`` if the source has no rows, or no valid rows.
    """
    mapping = check_columns(kind, columns)
    name = os.fspath(source)
    prompt_column = mapping.get("prompt", "prompt")
    results: list[_Result] = []
    checked = bool(mapping)
    detected: dict[str, str] = {}
    first_row: Mapping[str, object] | None = None
    for raw in iter_rows(source, split=split):
        if isinstance(raw.data, RowIssue):
            results.append(_Result(raw.source, [raw.data], False))
        else:
            if not checked:
                _check_shape(raw.data, kind, raw.source)
                checked = True
            if first_row is None:
                first_row = raw.data
                if kind == "ranked":
                    detected = _answer_list_columns(raw.data, mapping)
                    mapping = {**mapping, **detected}
            record = to_record(
                raw.data, kind, source=raw.source, row=raw.row, columns=mapping, strict_order=strict_order
            )
            results.append(_Result(raw.source, record, prompt_column in raw.data))
    n_rows = len(results)
    if kind == "pair":
        results = _refuse_missing_prompts(results)
    records = [r.outcome for r in results if not isinstance(r.outcome, list)]
    issues = [issue for r in results if isinstance(r.outcome, list) for issue in r.outcome]
    if n_rows == 0:
        raise UserError(f"{name}: no rows")
    if issues and not skip_invalid:
        raise DataError(issues, hint=_every_row_bad(issues, kind, mapping, first_row) if not records else
                        f"pass {option('skip_invalid')} to skip bad rows")
    if not records:
        raise UserError(
            f"{name}: no valid rows ({n_rows} row{_s(n_rows)} read, all invalid; first: {issues[0]}); "
            + _every_row_bad(issues, kind, mapping, first_row)
        )
    return LoadResult(records, issues, name, kind=kind, duplicates=count_duplicates(records), detected=detected)


def first_row_kind(source: str | os.PathLike[str], split: str | None = None) -> str | None:
    """The shape that the columns of the first readable row of ``source`` suggest, or None."""
    for raw in iter_rows(source, split=split):
        if not isinstance(raw.data, RowIssue):
            return detect_kind(raw.data)
    return None


def _check_shape(row: Mapping[str, object], kind: str, source: str) -> None:
    have = detect_kind(row)
    if have is None or compatible(have, kind):
        return
    raise UserError(
        f"{source} holds {have} data (rows of {COLUMNS[have]}), not {kind} data (rows of {COLUMNS[kind]}); "
        f"{conversion_hint(have, kind)}; if the file does hold {kind} data, map its columns with "
        f"{columns_option({'FIELD': 'NAME'})}"
    )


def _answer_list_columns(row: Mapping[str, object], mapping: dict[str, str]) -> dict[str, str]:
    """What to read a ranked file's completions (and their ranks or scores) from, when neither
    the mapping nor the row names them: its list of answer objects, if it has one."""
    if "completions" in mapping or "completions" in row:
        return {}
    found = answer_list(row) or {}
    if mapping.keys() & {"scores", "ranks"} or row.keys() & {"scores", "ranks"}:
        found = {field: column for field, column in found.items() if field == "completions"}
    return found


def _every_row_bad(
    issues: list[RowIssue], kind: str, mapping: Mapping[str, str], row: Mapping[str, object] | None
) -> str:
    """What to do when no row is valid (skipping the bad ones would leave nothing).

    When the first bad row lacks fields, the column mapping that would name them, with the flag
    and the YAML key, and, where the row suggests one, a path into its list of objects (ranked) or
    a weighted sum of its number columns (scored); otherwise, that the data must be fixed.
    """
    first = issues[0]
    lacking = {i.lacks for i in issues if (i.source, i.row) == (first.source, first.row) and i.lacks}
    if not lacking:
        return "every row is bad: fix the data (skipping bad rows would leave none)"
    if kind == "sft" and "completion" in lacking:
        lacking.add("prompt")
    if kind == "joint" and "prompt_chosen" in lacking and row is not None:  # the reader stopped at the prompt
        lacking |= {f for f in ("prompt_rejected", "chosen", "rejected") if mapping.get(f, f) not in row}
    elif row is not None and "prompt" in FIELDS[kind] and "prompt" not in mapping and "prompt" not in row:
        lacking.add("prompt")
    fields = [f for f in FIELDS[kind] if f in lacking]
    yaml = ", ".join(f"{f}: NAME" for f in fields)
    hint = (f"every row is bad: if the data holds {_and(fields)} under other names, map them with the columns "
            f"option, e.g. {columns_option(dict.fromkeys(fields, 'NAME'))} (in YAML: columns: {{{yaml}}})")
    return hint + _forms_hint(kind, fields, row)


def _forms_hint(kind: str, fields: list[str], row: Mapping[str, object] | None) -> str:
    """An example of a path into the row's list of objects (ranked completions) or of a weighted
    sum of its number columns (a score), built from the row's own names; "" when neither fits."""
    if row is None:
        return ""
    if kind == "ranked" and "completions" in fields:
        for column, value in row.items():
            objects = list_of_objects(value)
            text = next((k for k, v in objects[0].items() if isinstance(v, str)), "KEY") if objects else ""
            number = next((k for k, v in objects[0].items() if _is_number(v)), "KEY") if objects else ""
            if objects and item_path(f"{column}[].{text}") and item_path(f"{column}[].{number}"):
                paths = {"completions": f"{column}[].{text}", "scores": f"{column}[].{number}"}
                return (f"; completions and their scores or ranks can be read from a list of objects, like "
                        f"{columns_option(_quoted(paths))} (scores: higher is better; ranks: 1 is best)")
    if kind == "scored" and "score" in fields:
        numbers = [str(c) for c, value in row.items() if _is_number(value) and weighted_sum(f"1*{c}")][:2]
        if len(numbers) == 2:
            total = {"score": f"0.5*{numbers[0]} + 0.5*{numbers[1]}"}
            return f"; a score can be a weighted sum of number columns, like {columns_option(_quoted(total))}"
    return ""


def _quoted(fields: dict[str, str]) -> dict[str, str]:
    """Column values quoted for a shell on the command line (they hold brackets or spaces); as
    they are for a Python caller, whose message shows them as strings anyway."""
    return {k: f"'{v}'" for k, v in fields.items()} if on_command_line() else fields


def _is_number(value: object) -> bool:
    """A finite number, or (a CSV cell) the text of one."""
    if isinstance(value, bool):
        return False
    try:
        return isinstance(value, int | float | str) and math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class _Result(NamedTuple):
    """What became of one row: its record or its issues, and whether it had a prompt column."""

    source: str
    outcome: Record | list[RowIssue]
    has_prompt: bool


def _refuse_missing_prompts(results: list[_Result]) -> list[_Result]:
    """Turn pairs read without a prompt into issues when other rows of their file have one.

    A file that mixes both probably lost some prompts; an implicit prompt would hide that.
    Rows that are already bad keep their own issues.
    """
    with_prompt = {r.source for r in results if r.has_prompt}
    message = "missing field 'prompt' (other rows of this file have one)"
    return [
        r._replace(outcome=[RowIssue(r.source, r.outcome.row, "prompt", message)])
        if isinstance(r.outcome, PairRecord) and not r.has_prompt and r.source in with_prompt
        else r
        for r in results
    ]


def count_duplicates(records: Sequence[Record]) -> int:
    """How many records repeat the content (not the source or row) of an earlier one."""
    return len(records) - len({_content(r) for r in records})


def _content(record: Record) -> tuple[object, ...]:
    """The record's type and texts (and labels, scores), without its source and row."""
    fields = (f.name for f in dataclasses.fields(record) if f.name not in ("source", "row"))
    return (type(record).__name__, *(getattr(record, name) for name in fields))


def split_records(records: Sequence[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split records into (train, eval) by a seeded shuffle; both keep the input order.

    Records that share a prompt go to the same side, so the held-out set never shows a prompt that
    training saw (several pairs per prompt, as ``all_pairs`` conversion makes, would otherwise leak
    responses into it). The shuffled records are taken in turn, each with every record of its
    prompt, until the eval set has ``floor(len * eval_fraction)`` records (at least one when
    ``eval_fraction > 0``); it may overshoot by the rest of the last prompt's records. Records
    without a prompt (plain text, a prompt-less pair) and records whose prompts are all different
    are split one by one, exactly as a plain shuffle would. Raises ``UserError`` if
    ``eval_fraction`` is not in [0, 1) or if the split would leave no training records.
    """
    if isinstance(eval_fraction, bool) or not (0.0 <= eval_fraction < 1.0):
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    n = len(records)
    if eval_fraction == 0:
        return list(records), []
    n_eval = max(1, int(n * eval_fraction + 1e-9))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    same_prompt: dict[object, list[int]] = {}
    keys = [_prompt_key(r) for r in records]
    for i, key in enumerate(keys):
        if key is not None:
            same_prompt.setdefault(key, []).append(i)
    held_out: set[int] = set()
    for i in order:
        if len(held_out) >= n_eval:
            break
        held_out.update(same_prompt[keys[i]] if keys[i] is not None else (i,))
    if len(held_out) >= n:
        groups = len(same_prompt) + keys.count(None)
        shared = (f" (records that share a prompt are held out together, and these {n} have "
                  f"{groups} distinct prompt{_s(groups)})") if groups < n else ""
        raise UserError(
            f"eval_fraction={eval_fraction} of {n} record{_s(n)} leaves no training data{shared}; "
            "use more data or a smaller eval_fraction"
        )
    train = [r for i, r in enumerate(records) if i not in held_out]
    evals = [r for i, r in enumerate(records) if i in held_out]
    return train, evals


def _prompt_key(record: object) -> object:
    """What groups a record with others in a split: its prompt, or None (a group of its own) when
    it has none or an empty one."""
    prompt = getattr(record, "prompt", None)
    return prompt if prompt else None


def _s(n: int) -> str:
    return "" if n == 1 else "s"
