"""Read raw rows from a data source: a file, a local dataset directory, or a Hugging Face dataset.

This layer knows about file formats and nothing about what the rows mean. Every row comes out as
a ``RawRow``: where it came from (``source``, ``row``) and either the row's dict or a ``RowIssue``
saying why the row could not be read (a malformed JSON line, bytes that are not UTF-8, a value
that is not an object). A bad row never stops the other rows from being read.

Row numbers are 1-based. For JSON-lines content they are line numbers in the file; for every
other format they count data rows (in a CSV file, data row 1 is the first record after the
header).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from alignlab.errors import RowIssue, UserError

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
KNOWN_SPLITS = ("train", "test", "validation", "valid", "val", "dev", "eval")
DEFAULT_SPLIT = "train"

# A Hugging Face Hub dataset id: "owner/name".
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ARROW_BATCH = 1024


class RawRow(NamedTuple):
    """One row as read from its source, before validation."""

    row: int
    data: dict[str, Any] | RowIssue
    source: str


def iter_rows(source: str | os.PathLike[str], *, split: str | None = None) -> Iterator[RawRow]:
    """Yield every row of ``source`` as a ``RawRow``, in order.

    ``source`` is a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a directory saved by
    ``datasets`` (``save_to_disk`` of a Dataset or DatasetDict), a directory holding data files,
    or, when no such path exists, a Hugging Face Hub dataset name like ``owner/name``.
    ``split`` selects the split of a DatasetDict, of a directory of files, or of a Hub dataset
    (default ``"train"``).

    Raises ``UserError`` when the source cannot be opened at all; problems with single rows are
    yielded as ``RowIssue`` values instead.
    """
    name = os.fspath(source)
    path = Path(name)
    if path.is_dir():
        yield from _iter_directory(path, name, split)
    elif path.is_file():
        if split is not None:
            raise UserError(f"{name}: a split ('{split}') applies to dataset directories and hub datasets, "
                            "not to a single file")
        yield from _iter_file(path, name)
    elif _looks_like_hub_name(name):
        yield from _iter_hub(name, split)
    else:
        raise UserError(f"{name}: no such file or directory")


def _looks_like_hub_name(name: str) -> bool:
    return bool(_HUB_NAME.match(name)) and Path(name).suffix.lower() not in SUPPORTED_EXTENSIONS


# ---------------------------------------------------------------- single files


def _iter_file(path: Path, name: str) -> Iterator[RawRow]:
    ext = path.suffix.lower()
    readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".parquet": _iter_parquet, ".csv": _iter_csv}
    if ext not in readers:
        raise UserError(
            f"{name}: unsupported file type '{ext or path.name}'; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    try:
        yield from readers[ext](path, name)
    except OSError as e:
        raise UserError(f"{name}: cannot read file: {e}") from e


def _iter_jsonl(path: Path, name: str) -> Iterator[RawRow]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
            if line.strip():
                yield RawRow(number, _parse_json_line(line, name, number), name)


def _parse_json_line(line: bytes, name: str, number: int) -> dict[str, Any] | RowIssue:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return RowIssue(
            name, number, None, f"not valid UTF-8 (byte 0x{line[e.start]:02x} at offset {e.start})"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return RowIssue(name, number, None, f"malformed JSON: {e.msg} (column {e.colno})")
    return _as_object(value, name, number)


def _as_object(value: Any, name: str, number: int) -> dict[str, Any] | RowIssue:
    if not isinstance(value, dict):
        return RowIssue(name, number, None, f"expected a JSON object, got {_json_type(value)}")
    if _has_bad_text(value):
        return RowIssue(name, number, None, "not valid UTF-8 (the row holds bytes that do not decode)")
    return value


def _iter_json(path: Path, name: str) -> Iterator[RawRow]:
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        if _first_line_is_object(text):
            # JSON-lines content saved with a .json extension.
            yield from _iter_jsonl(path, name)
            return
        raise UserError(f"{name}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from e
    for number, value in enumerate(_json_rows(document, name), start=1):
        yield RawRow(number, _as_object(value, name, number), name)


def _first_line_is_object(text: str) -> bool:
    for line in text.splitlines():
        if line.strip():
            try:
                return isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                return False
    return False


def _json_rows(document: Any, name: str) -> list[Any]:
    """The rows of a JSON document: a list, or the one list-valued key of an object."""
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        raise UserError(
            f"{name}: expected a list of rows or an object holding one, got {_json_type(document)}"
        )
    lists = [key for key, value in document.items() if isinstance(value, list)]
    if len(lists) != 1:
        raise UserError(
            f"{name}: a JSON object must hold its rows under exactly one list-valued key, like "
            f'{{"data": [...]}}; found {len(lists)} list-valued keys ({", ".join(lists) or "none"})'
        )
    rows = document[lists[0]]
    if rows and all(isinstance(r, dict) and "role" in r for r in rows):
        raise UserError(
            f"{name}: holds a single conversation under '{lists[0]}', not a list of rows; "
            "write one row per line in a .jsonl file, or a JSON list of row objects"
        )
    return rows


def _iter_parquet(path: Path, name: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several error types for a bad file
        raise UserError(f"{name}: cannot read as Parquet: {e}") from e
    number = 0
    for batch in parquet.iter_batches(batch_size=_ARROW_BATCH):
        for value in batch.to_pylist():
            number += 1
            yield RawRow(number, value, name)


def _iter_csv(path: Path, name: str) -> Iterator[RawRow]:
    # surrogateescape keeps undecodable bytes as markers so that one bad cell is one bad row.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        if _has_bad_text(header):
            raise UserError(f"{name}: the CSV header is not valid UTF-8")
        number = 0
        try:
            for cells in reader:
                if not cells:
                    continue  # a blank line is not a row
                number += 1
                yield RawRow(number, _csv_row(header, cells, name, number), name)
        except csv.Error as e:
            raise UserError(f"{name}: malformed CSV after data row {number}: {e}") from e


def _csv_row(header: list[str], cells: list[str], name: str, number: int) -> dict[str, Any] | RowIssue:
    if len(cells) != len(header):
        return RowIssue(
            name, number, None, f"row has {len(cells)} cells but the header has {len(header)} columns"
        )
    if _has_bad_text(cells):
        return RowIssue(name, number, None, "not valid UTF-8 (the row holds bytes that do not decode)")
    return {column: _csv_cell(cell) for column, cell in zip(header, cells, strict=True)}


def _csv_cell(cell: str) -> str | list[Any]:
    """A CSV cell is text, except one holding a JSON list of objects (a conversation).

    Cells whose stripped text starts with '[' and ends with ']' and parses as a JSON list whose
    items are all objects become that list; everything else stays the string it is.
    """
    stripped = cell.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return cell
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return cell
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    return cell


def _has_bad_text(value: Any) -> bool:
    """True if any string in ``value`` holds a surrogate, i.e. bytes that were not UTF-8."""
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(_has_bad_text(k) or _has_bad_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_text(v) for v in value)
    return False


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# ---------------------------------------------------------------- directories and datasets


def _iter_directory(path: Path, name: str, split: str | None) -> Iterator[RawRow]:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        yield from _iter_saved_dataset(path, name, split)
        return
    for file in _pick_split_files(path, name, split):
        yield from _iter_file(file, os.path.join(name, str(file.relative_to(path))))


def _iter_saved_dataset(path: Path, name: str, split: str | None) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many error types for a damaged directory
        raise UserError(f"{name}: cannot load the saved dataset: {e}") from e
    if isinstance(loaded, datasets.DatasetDict):
        wanted = split or DEFAULT_SPLIT
        if wanted not in loaded:
            raise UserError(f"{name}: no split '{wanted}'; available splits: {', '.join(loaded)}")
        loaded = loaded[wanted]
    elif split is not None and str(loaded.split) != split:
        raise UserError(f"{name}: holds a single dataset without splits; remove split='{split}'")
    yield from _iter_dataset(loaded, name)


def _iter_dataset(dataset: Any, name: str) -> Iterator[RawRow]:
    number = 0
    for table in dataset.with_format("arrow").iter(batch_size=_ARROW_BATCH):
        for value in table.to_pylist():
            number += 1
            yield RawRow(number, value, name)


def _iter_hub(name: str, split: str | None) -> Iterator[RawRow]:
    import datasets

    wanted = split or DEFAULT_SPLIT
    try:
        loaded = datasets.load_dataset(name, split=wanted)
    except Exception as e:  # network, authentication, missing split: all the user's to fix
        raise UserError(
            f"{name}: not a local path, and loading it from the Hugging Face Hub failed: {e}"
        ) from e
    yield from _iter_dataset(loaded, name)


def _pick_split_files(path: Path, name: str, split: str | None) -> list[Path]:
    """The data files of a directory that belong to ``split``.

    A file belongs to a split when its name starts with the split's name followed by '-', '_'
    or '.' (``train.jsonl``, ``train-00000-of-00002.parquet``) or when one of its folders is
    named after it (``data/train/0.parquet``). With no ``split``, the "train" files are used;
    if no file is tagged with any split name, all files are.
    """
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUPPORTED_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise UserError(f"{name}: no data files ({', '.join(SUPPORTED_EXTENSIONS)}) in this directory")
    tags = {f: _split_tags(f.relative_to(path)) for f in files}
    wanted = split or DEFAULT_SPLIT
    chosen = [f for f in files if wanted in tags[f]]
    if chosen:
        return chosen
    found = sorted({t for f in files for t in tags[f] if t in KNOWN_SPLITS})
    if split is None and not found:
        return files
    listing = ", ".join(str(f.relative_to(path)) for f in files[:10])
    raise UserError(f"{name}: no data files for split '{wanted}' (found: {listing}); pass the split to use")


def _split_tags(relative: Path) -> set[str]:
    stem_head = re.split(r"[-_.]", relative.name, maxsplit=1)[0]
    return {stem_head.lower(), *(part.lower() for part in relative.parts[:-1])}
