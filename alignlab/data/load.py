"""Load a data source into validated records, and split records into train and eval sets."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from alignlab.data.formats import check_columns, to_record
from alignlab.data.records import PairRecord, Record
from alignlab.data.sources import iter_rows
from alignlab.errors import DataError, RowIssue, UserError

T = TypeVar("T")
_SHOWN_REASONS = 3


@dataclass
class LoadResult:
    """The records loaded from one source, and what was skipped on the way."""

    records: list[Record]
    skipped: list[RowIssue]
    source: str
    kind: Literal["sft", "pair"] = "pair"
    duplicates: int = 0  # rows whose content repeats an earlier row; they are kept

    @property
    def skipped_rows(self) -> int:
        """How many rows were skipped (a row may have several issues)."""
        return len({(issue.source, issue.row) for issue in self.skipped})

    def summary(self) -> str:
        """One human line: how many records, from where, and what was skipped and why."""
        n = len(self.records)
        noun = ("pair" if self.kind == "pair" else "SFT example") + ("" if n == 1 else "s")
        line = f"loaded {n} {noun} from {self.source}"
        if self.duplicates:
            line += f", {self.duplicates} duplicate{_s(self.duplicates)} kept"
        if self.skipped:
            rows = self.skipped_rows
            reasons = "; ".join(str(issue) for issue in self.skipped[:_SHOWN_REASONS])
            if len(self.skipped) > _SHOWN_REASONS:
                reasons += f"; and {len(self.skipped) - _SHOWN_REASONS} more"
            line += f" ({rows} invalid row{_s(rows)} skipped: {reasons})"
        return line


def load_records(
    source: str | os.PathLike[str],
    kind: Literal["sft", "pair"],
    *,
    columns: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    split: str | None = None,
) -> LoadResult:
    """Read ``source`` and validate every row into ``SFTRecord``s or ``PairRecord``s.

    ``source`` is a .jsonl/.json/.parquet/.csv file, a local dataset directory, or a Hugging
    Face Hub dataset name (see ``sources.iter_rows``); ``split`` picks a split where there are
    several (default "train"). ``columns`` maps alignlab field names (prompt, chosen, rejected,
    completion, messages, text) to the source's column names.

    Every row is checked. If any row is bad, raises ``DataError`` holding every issue, unless
    ``skip_invalid``, in which case bad rows are left out and listed in ``LoadResult.skipped``.
    Raises ``UserError`` if the source has no rows, or no valid rows.
    """
    mapping = check_columns(kind, columns)
    name = os.fspath(source)
    records: list[Record] = []
    issues: list[RowIssue] = []
    n_rows = 0
    for raw in iter_rows(source, split=split):
        n_rows += 1
        if isinstance(raw.data, RowIssue):
            issues.append(raw.data)
            continue
        result = to_record(raw.data, kind, source=raw.source, row=raw.row, columns=mapping)
        if isinstance(result, list):
            issues.extend(result)
        else:
            records.append(result)
    if n_rows == 0:
        raise UserError(f"{name}: no rows")
    if issues and not skip_invalid:
        raise DataError(issues)
    if not records:
        raise UserError(
            f"{name}: no valid rows ({n_rows} row{_s(n_rows)} read, all invalid; first: {issues[0]})"
        )
    return LoadResult(records, issues, name, kind=kind, duplicates=count_duplicates(records))


def count_duplicates(records: Sequence[Record]) -> int:
    """How many records repeat the content (not the source or row) of an earlier one."""
    return len(records) - len({_content(r) for r in records})


def _content(record: Record) -> tuple[object, ...]:
    if isinstance(record, PairRecord):
        return ("pair", record.prompt, record.chosen, record.rejected)
    return ("sft", record.prompt, record.completion)


def split_records(records: Sequence[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split records into (train, eval) by a seeded shuffle; both keep the input order.

    The eval set gets ``floor(len * eval_fraction)`` records, but at least one when
    ``eval_fraction > 0``. Raises ``UserError`` if ``eval_fraction`` is not in [0, 1) or if the
    split would leave no training records.
    """
    if isinstance(eval_fraction, bool) or not (0.0 <= eval_fraction < 1.0):
        raise UserError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    n = len(records)
    if eval_fraction == 0:
        return list(records), []
    n_eval = max(1, int(n * eval_fraction + 1e-9))
    if n_eval >= n:
        raise UserError(
            f"eval_fraction={eval_fraction} of {n} record{_s(n)} leaves no training data; "
            "use more data or a smaller eval_fraction"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = [r for i, r in enumerate(records) if i not in held_out]
    evals = [r for i, r in enumerate(records) if i in held_out]
    return train, evals


def _s(n: int) -> str:
    return "" if n == 1 else "s"
