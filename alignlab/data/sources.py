"""Read raw rows from a data source: a file, a local dataset directory, or a Hugging Face dataset.

This layer knows about file formats and nothing about what the rows mean. Every row comes out as
a ``RawRow``: where it came from (``source``, ``row``) and either the row's dict or a ``RowIssue``
saying why the row could not be read (a malformed JSON line, bytes that are not UTF-8, a value
that is not an object, a key given twice). A bad row never stops the other rows from being read.

Row numbers are 1-based. For JSON-lines content they are line numbers in the file; for every
other format they count data rows (in a CSV file, data row 1 is the first record after the
header).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from alignlab.errors import RowIssue, UserError

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
KNOWN_SPLITS = ("train", "test", "validation", "valid", "val", "dev", "eval")
DEFAULT_SPLIT = "train"

# A Hugging Face Hub dataset id: "owner/name".
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A file extension starts with a letter, so that a version in a Hub name ("OpenHermes-2.5") is none.
_EXTENSION = re.compile(r"\.[A-Za-z]\w*$")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a bad byte
_ARROW_BATCH = 1024
_NOT_UTF8 = "not valid UTF-8 (the row holds bytes that do not decode)"


class RawRow(NamedTuple):
    """One row as read from its source, before validation."""

    row: int
    data: dict[str, Any] | RowIssue
    source: str


def iter_rows(source: str | os.PathLike[str], *, split: str | None = None) -> Iterator[RawRow]:
    """Yield every row of ``source`` as a ``RawRow``, in order.

    ``source`` is a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a directory saved by
    ``datasets`` (``save_to_disk`` of a Dataset or DatasetDict), a directory holding data files,
    or, when no such path exists, a Hugging Face Hub dataset name like ``owner/name``. A leading
    ``~`` is expanded. A missing path is reported as missing, not looked up on the Hub, when it
    starts with '.', '/' or '~', has a file extension, or its first folder exists here.
    ``split`` selects the split of a DatasetDict, of a directory of files, or of a Hub dataset
    (default ``"train"``).

    Raises ``UserError`` when the source cannot be opened at all; problems with single rows are
    yielded as ``RowIssue`` values instead.
    """
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_dir():
        yield from _iter_directory(path, name, split)
    elif path.is_file():
        if split is not None:
            raise UserError(f"{name}: a split ('{split}') applies to dataset directories and hub datasets, "
                            "not to a single file")
        yield from _iter_file(path, name)
    elif _HUB_NAME.match(name) and not _means_local(name):
        yield from _iter_hub(name, split)
    else:
        raise UserError(f"{name}: no such file or directory")


def _means_local(name: str) -> bool:
    """Whether a name that is not an existing path was still meant as one (a mistyped path)."""
    if name.startswith((".", "/", "~")) or _EXTENSION.search(name):
        return True
    return Path(Path(name).parts[0]).exists()


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
        value = _loads(text)
    except (ValueError, RecursionError) as e:
        return RowIssue(name, number, None, f"malformed JSON: {_json_error(e, line=False)}")
    return _as_object(value, name, number, lossy=False)


def _loads(text: str) -> Any:
    """Parse JSON, marking every object that repeats a key (see ``_Duplicated``)."""
    return json.loads(text, object_pairs_hook=_object_from_pairs)


class _Duplicated(dict[str, Any]):
    """A JSON object that held ``key`` more than once; like ``json``, it keeps the last value."""

    key: str = ""


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    keys = [key for key, _ in pairs]
    marked = _Duplicated(value)
    marked.key = next(key for key in keys if keys.count(key) > 1)
    return marked


def _json_error(e: Exception, *, line: bool) -> str:
    """Why JSON did not parse: a syntax error with its position, too deep a nesting, or a bad value."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} (line {e.lineno}, column {e.colno})" if line else f"{e.msg} (column {e.colno})"
    if isinstance(e, RecursionError):
        return "nested too deeply to read"
    return str(e)


def _as_object(value: Any, name: str, number: int, *, lossy: bool) -> dict[str, Any] | RowIssue:
    """The row if it is a usable JSON object, else its issue.

    ``lossy`` says the text was decoded with errors="surrogateescape", so that a surrogate in
    U+DC80..U+DCFF stands for a byte that was not UTF-8 rather than for a JSON escape.
    """
    if not isinstance(value, dict):
        return RowIssue(name, number, None, f"expected a JSON object, got {_json_type(value)}")
    problem = _row_problem(value, lossy=lossy)
    if problem:
        return RowIssue(name, number, None, problem)
    return value


def _row_problem(value: Any, *, lossy: bool) -> str | None:
    """What makes a parsed row unusable: a repeated key, or text that is not valid; None if nothing.

    Walks the value with an explicit stack, so that deep nesting cannot overflow Python's stack.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Duplicated):
            return f"duplicate key '{item.key}' in one object (only one value per key can be kept)"
        if isinstance(item, str):
            problem = _text_problem(item, lossy=lossy)
            if problem:
                return problem
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _text_problem(text: str, *, lossy: bool) -> str | None:
    bad = _SURROGATE.search(text)
    if bad is None:
        return None
    if lossy and _UNDECODED_BYTE.match(bad.group()):
        return _NOT_UTF8
    return (
        f"holds an unpaired surrogate (\\u{ord(bad.group()):04x}), an escape for half of a character "
        "that is not text on its own"
    )


def _iter_json(path: Path, name: str) -> Iterator[RawRow]:
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    lossy = False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text, lossy = raw.decode("utf-8", errors="surrogateescape"), True
    try:
        document = _loads(text)
    except (ValueError, RecursionError) as e:
        if _first_line_is_object(text):
            # JSON-lines content saved with a .json extension.
            yield from _iter_jsonl(path, name)
            return
        raise UserError(f"{name}: not valid JSON: {_json_error(e, line=True)}") from e
    for number, value in enumerate(_json_rows(document, name), start=1):
        yield RawRow(number, _as_object(value, name, number, lossy=lossy), name)


def _first_line_is_object(text: str) -> bool:
    # Only "\n" ends a JSON line; str.splitlines would also cut at U+2028 inside a string.
    for line in text.split("\n"):
        if line.strip():
            try:
                return isinstance(json.loads(line), dict)
            except (ValueError, RecursionError):
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
    if isinstance(document, _Duplicated):
        raise UserError(f"{name}: the top-level object holds the key '{document.key}' more than once")
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
    yield from _iter_arrow(parquet.iter_batches(batch_size=_ARROW_BATCH), name)


def _iter_arrow(batches: Iterable[Any], name: str) -> Iterator[RawRow]:
    """The rows of Arrow record batches or tables, numbered from 1.

    A row holding a string that is not UTF-8 becomes a ``RowIssue``; data that cannot be read at
    all (a damaged page) is a ``UserError`` naming the source.
    """
    import pyarrow

    number = 0
    try:
        for batch in batches:
            yield from _arrow_rows(batch, name, number)
            number += batch.num_rows
    except (OSError, pyarrow.ArrowException) as e:
        raise UserError(f"{name}: cannot read the data after row {number} (is the file damaged?): {e}") from e


def _arrow_rows(batch: Any, name: str, offset: int) -> Iterator[RawRow]:
    """The rows of one batch; if the batch does not convert as a whole, each row on its own."""
    import pyarrow

    try:
        values = batch.to_pylist()
    except (UnicodeDecodeError, pyarrow.ArrowException):
        values = None
    if values is not None:
        for number, value in enumerate(values, start=offset + 1):
            yield RawRow(number, value, name)
        return
    for i in range(batch.num_rows):
        number = offset + i + 1
        yield RawRow(number, _arrow_row(batch.slice(i, 1), name, number), name)


def _arrow_row(row: Any, name: str, number: int) -> dict[str, Any] | RowIssue:
    import pyarrow

    try:
        return row.to_pylist()[0]
    except UnicodeDecodeError:
        column = _undecodable_column(row)
        return RowIssue(name, number, None, "not valid UTF-8" + (f" (in column '{column}')" if column else ""))
    except pyarrow.ArrowException as e:
        raise UserError(f"{name}: cannot read row {number}: {e}") from e


def _undecodable_column(row: Any) -> str | None:
    for column_name, column in zip(row.schema.names, row.columns, strict=True):
        try:
            column.to_pylist()
        except UnicodeDecodeError:
            return column_name
    return None


def _iter_csv(path: Path, name: str) -> Iterator[RawRow]:
    _allow_large_csv_cells()
    # surrogateescape keeps undecodable bytes as markers so that one bad cell is one bad row.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = _csv_header(reader, name)
        if header is None:
            return
        number = 0
        try:
            for cells in reader:
                if not cells:
                    continue  # a blank line is not a row
                number += 1
                yield RawRow(number, _csv_row(header, cells, name, number), name)
        except csv.Error as e:
            raise UserError(
                f"{name}: malformed CSV in data row {number + 1} (line {reader.line_num}): {e}"
            ) from e


def _allow_large_csv_cells() -> None:
    """Lift the csv module's cell size limit (128 KiB) to the largest the platform allows."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _csv_header(reader: Any, name: str) -> list[str] | None:
    """The header row, checked; None for an empty file."""
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise UserError(f"{name}: malformed CSV header: {e}") from e
    if header is None:
        return None
    if _SURROGATE.search("".join(header)):
        raise UserError(f"{name}: the CSV header is not valid UTF-8")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        names = ", ".join(f"'{column}'" for column in repeated)
        raise UserError(f"{name}: the CSV header names column {names} more than once; rename the copies")
    return header


def _csv_row(header: list[str], cells: list[str], name: str, number: int) -> dict[str, Any] | RowIssue:
    if len(cells) != len(header):
        return RowIssue(
            name, number, None, f"row has {len(cells)} cells but the header has {len(header)} columns"
        )
    if any(_SURROGATE.search(cell) for cell in cells):
        return RowIssue(name, number, None, _NOT_UTF8)
    return {column: _csv_cell(cell) for column, cell in zip(header, cells, strict=True)}


def _csv_cell(cell: str) -> str | list[Any]:
    """A CSV cell is text, except one holding a conversation as JSON.

    Cells whose stripped text starts with '[' and ends with ']' and parses as a non-empty JSON
    list whose items are all objects with both 'role' and 'content' become that list; everything
    else (``[]``, ``[1, 2]``, ``[{"a": 1}]``, ``[not json]``) stays the string it is.
    """
    stripped = cell.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return cell
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return cell
    if value and all(isinstance(item, dict) and "role" in item and "content" in item for item in value):
        return value
    return cell


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# ---------------------------------------------------------------- directories and datasets


def source_files(source: str | os.PathLike[str], split: str | None = None) -> list[Path] | None:
    """The local files ``iter_rows(source, split=split)`` reads rows from: the file itself, the
    files of ``split`` in a directory of data files, every file (not hidden) of a directory saved
    by ``datasets``; None where ``source`` is not local (a hub dataset) or names no data files."""
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        return None
    if _saved_dataset(path):
        return _visible_files(path)
    try:
        return _pick_split_files(path, os.fspath(source), split)
    except UserError:  # no data files: the run's own loading says so
        return None


def _saved_dataset(path: Path) -> bool:
    """Whether the directory ``path`` was saved by ``datasets`` (``save_to_disk``)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _visible_files(path: Path) -> list[Path]:
    """The files under ``path``, in path order, but those in or under a hidden (dot) name."""
    return sorted(f for f in path.rglob("*")
                  if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts))


def _iter_directory(path: Path, name: str, split: str | None) -> Iterator[RawRow]:
    if _saved_dataset(path):
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
    yield from _iter_arrow(dataset.with_format("arrow").iter(batch_size=_ARROW_BATCH), name)


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

    A file belongs to a split when the split's name is a whole part of its file name, between
    '-', '_' or '.' and the ends (``train.jsonl``, ``train-00000-of-00002.parquet``,
    ``pairs_train.jsonl``, ``part.val.csv``) or when one of its folders is named after it
    (``data/train/0.parquet``). With no ``split``, the "train" files are used; only if no file is
    tagged with any known split name are all files used.
    """
    files = [p for p in _visible_files(path) if p.suffix.lower() in SUPPORTED_EXTENSIONS]
    if not files:
        raise UserError(f"{name}: no data files ({', '.join(SUPPORTED_EXTENSIONS)}) in this directory")
    wanted = split or DEFAULT_SPLIT
    chosen = [f for f in files if _in_split(f.relative_to(path), wanted)]
    if chosen:
        return chosen
    found = sorted({s for f in files for s in KNOWN_SPLITS if _in_split(f.relative_to(path), s)})
    if split is None and not found:
        return files
    listing = ", ".join(str(f.relative_to(path)) for f in files[:10])
    raise UserError(
        f"{name}: no data files for split '{wanted}' (splits found: {', '.join(found) or 'none'}; "
        f"files: {listing}); pass the split to use"
    )


def _in_split(relative: Path, split: str) -> bool:
    """Whether a file (path relative to the dataset directory) is tagged with ``split``."""
    split = split.lower()
    if split in (folder.lower() for folder in relative.parts[:-1]):
        return True
    return re.search(rf"(?:^|[-_.]){re.escape(split)}(?:$|[-_.])", relative.name.lower()) is not None
