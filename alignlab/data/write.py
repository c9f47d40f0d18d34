"""Records back to rows: the JSON objects the loaders read, written as JSON lines, atomically."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alignlab.data.records import (
    JointRecord,
    NegativeRecord,
    PairRecord,
    RankedRecord,
    Record,
    ScoredRecord,
    SFTRecord,
    Text,
    UnpairedRecord,
)
from alignlab.errors import UserError


def record_to_row(record: Record) -> dict[str, Any]:
    """The row that loads back as ``record`` (its source and row aside).

    Conversations become lists of {"role", "content"}. A pair's scores and strength are written
    only when it has them; a ranked list is written with its scores, best first.
    """
    if isinstance(record, PairRecord):
        row = {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected}
        extras = ("score_chosen", "score_rejected", "strength")
        row |= {name: getattr(record, name) for name in extras if getattr(record, name) is not None}
    elif isinstance(record, SFTRecord):
        row = {"prompt": record.prompt, "completion": record.completion}
    elif isinstance(record, JointRecord):
        row = {"prompt_chosen": record.prompt_chosen, "chosen": record.chosen,
               "prompt_rejected": record.prompt_rejected, "rejected": record.rejected}
    elif isinstance(record, UnpairedRecord):
        row = {"prompt": record.prompt, "completion": record.completion, "label": record.label}
    elif isinstance(record, ScoredRecord):
        row = {"prompt": record.prompt, "completion": record.completion, "score": record.score}
    elif isinstance(record, RankedRecord):
        row = {"prompt": record.prompt, "completions": list(record.completions), "scores": list(record.scores)}
    elif isinstance(record, NegativeRecord):
        row = {"prompt": record.prompt, "rejected": record.rejected}
    else:
        raise TypeError(f"not a record: {type(record).__name__}")
    return {key: _plain(value) for key, value in row.items()}


def _plain(value: Text | list[Any] | float | bool) -> Any:
    if isinstance(value, tuple):
        return [m.as_dict() for m in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def check_jsonl_path(path: str | os.PathLike[str]) -> Path:
    """The path, if it names a .jsonl file; a ``UserError`` otherwise."""
    final = Path(path)
    if final.suffix.lower() != ".jsonl":
        raise UserError(f"{final}: converted data is written as JSON lines; name the file *.jsonl")
    return final


def blocking_file(folder: str | os.PathLike[str]) -> Path | None:
    """The file that stands where ``folder`` or a folder above it should be (the nearest of them
    that exists, when it is not a folder); None when the folder exists or can be made."""
    folder = Path(folder)
    made = next((p for p in [folder, *folder.parents] if p.exists()), None)
    return made if made is not None and not made.is_dir() else None


def check_not_input(output: str | os.PathLike[str],
                    *inputs: tuple[str, str, str | os.PathLike[str] | None]) -> None:
    """Refuse an output that names the same file as one of the command's inputs, given as
    ``(what, flag, path)`` (``("the input", "--data", path)``): writing it would replace what is
    being read. An output that does not exist yet is no input's; a path that is no file here (a
    hub dataset's name) is none."""
    out = Path(output).expanduser()
    for what, flag, path in inputs:
        if path is None or not out.exists():
            continue
        try:
            same = os.path.samefile(out, Path(path).expanduser())
        except OSError:
            same = False
        if same:
            raise UserError(f"{output}: is {what} ({flag} {path}); writing it would replace what is read: write "
                            "to another file")


def check_report_path(out: str | None, args, *flags: str) -> None:
    """Refuse a report path ``out`` that is one of a command's input files, before any work:
    ``flags`` name the inputs' flags (``--data``), read from the parsed ``args``."""
    if out:
        check_not_input(out, *(("the input", flag, getattr(args, flag[2:].replace("-", "_"), None)) for flag in flags))


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Record]) -> int:
    """Write one row per record to a .jsonl file and return how many (``write_rows``)."""
    return write_rows(path, (record_to_row(record) for record in records))


def write_rows(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write JSON objects, one a line, to a .jsonl file and return how many; UTF-8 is kept as it is.

    The file is written beside its final path and renamed into place, so a reader never sees half
    of it and an interrupted run leaves the old file as it was.
    """
    final = check_jsonl_path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                n += 1
        os.replace(tmp, final)
    except OSError as e:
        with contextlib.suppress(OSError):  # it may not exist, nor its folder (a file in the path)
            tmp.unlink()
        raise UserError(f"{final}: cannot write: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
