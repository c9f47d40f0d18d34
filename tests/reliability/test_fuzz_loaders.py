"""Property-based fuzzing of every loader: whatever a file holds, loading it either gives valid
records of the asked kind or raises ``UserError`` (``DataError`` for bad rows), the documented
error type; never anything else.

Rows are drawn from the column names each shape uses (and near misses) with values of any JSON
type, including NaN, infinities, empty strings, nested lists and conversations; some lines are
arbitrary bytes. Every kind is read from JSONL, from a JSON array and from CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.data.load import load_records
from alignlab.data.records import (
    JointRecord,
    Message,
    NegativeRecord,
    PairRecord,
    RankedRecord,
    ScoredRecord,
    SFTRecord,
    UnpairedRecord,
)
from alignlab.errors import UserError

KINDS = {"sft": SFTRecord, "pair": PairRecord, "joint": JointRecord, "unpaired": UnpairedRecord,
         "scored": ScoredRecord, "ranked": RankedRecord, "negatives": NegativeRecord}
COLUMNS = ["prompt", "chosen", "rejected", "completion", "completions", "label", "score", "scores", "ranks",
           "messages", "text", "prompt_chosen", "prompt_rejected", "score_chosen", "score_rejected", "strength",
           "choosen", "Prompt", "id"]

texts = st.text(min_size=0, max_size=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", ""]),
                                           "content": texts}), max_size=3)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                    texts)
values = st.one_of(scalars, messages, st.lists(st.one_of(scalars, messages), max_size=4),
                   st.dictionaries(texts, scalars, max_size=2))
rows = st.one_of(st.dictionaries(st.sampled_from(COLUMNS), values, max_size=6), scalars, st.lists(scalars, max_size=2))
files = st.lists(st.one_of(rows, st.binary(max_size=20)), min_size=0, max_size=5)


def _valid_text(t) -> bool:
    if isinstance(t, str):
        return bool(t.strip())
    return (isinstance(t, tuple) and len(t) > 0 and all(isinstance(m, Message) and isinstance(m.content, str)
                                                        and isinstance(m.role, str) and m.role for m in t))


def _check(record, kind: str) -> None:
    assert type(record) is KINDS[kind]
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if f.name in ("source",):
            assert isinstance(v, str)
        elif f.name == "row":
            assert isinstance(v, int) and v >= 1
        elif f.name in ("prompt", "prompt_chosen", "prompt_rejected"):
            assert isinstance(v, (str, tuple))
        elif f.name in ("chosen", "rejected", "completion"):
            assert _valid_text(v)
        elif f.name == "completions":
            assert len(v) >= 2 and all(_valid_text(c) for c in v)
        elif f.name == "scores":
            assert len(v) == len(record.completions) and all(math.isfinite(x) for x in v)
            assert all(a >= b for a, b in zip(v, v[1:], strict=False))
        elif f.name == "label":
            assert isinstance(v, bool)
        elif f.name in ("score", "score_chosen", "score_rejected", "strength"):
            assert v is None or (isinstance(v, float) and math.isfinite(v))
    if kind == "pair":
        assert record.chosen != record.rejected


def _write(tmp_path, fmt: str, content: list) -> str:
    if fmt == "jsonl":
        path = tmp_path / "data.jsonl"
        path.write_bytes(b"".join(x if isinstance(x, bytes) else json.dumps(x).encode() + b"\n" for x in content))
    elif fmt == "json":
        path = tmp_path / "data.json"
        path.write_text(json.dumps([x for x in content if not isinstance(x, bytes)]))
    else:
        path = tmp_path / "data.csv"
        dicts = [x for x in content if isinstance(x, dict)]
        header = sorted({k for d in dicts for k in d}) or ["prompt"]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        for d in dicts:
            w.writerow(["" if k not in d else d[k] if isinstance(d[k], str) else json.dumps(d[k]) for k in header])
        path.write_text(buf.getvalue())
    return str(path)


def _load(path: str, kind: str, skip_invalid: bool) -> None:
    try:
        result = load_records(path, kind, skip_invalid=skip_invalid)
    except UserError as e:
        assert str(e)  # a message, always
        return
    assert result.records
    for record in result.records:
        _check(record, kind)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=files, kind=st.sampled_from(sorted(KINDS)), fmt=st.sampled_from(["jsonl", "json", "csv"]),
       skip_invalid=st.booleans())
def test_any_file_loads_valid_records_or_raises_the_documented_error(tmp_path, content, kind, fmt, skip_invalid):
    _load(_write(tmp_path, fmt, content), kind, skip_invalid)


def _good_row(kind: str) -> dict:
    return {"sft": {"prompt": "p", "completion": "c"}, "pair": {"prompt": "p", "chosen": "a", "rejected": "b"},
            "joint": {"prompt_chosen": "p", "chosen": "a", "prompt_rejected": "q", "rejected": "b"},
            "unpaired": {"prompt": "p", "completion": "c", "label": True},
            "scored": {"prompt": "p", "completion": "c", "score": 1.0},
            "ranked": {"prompt": "p", "completions": ["a", "b"], "scores": [2.0, 1.0]},
            "negatives": {"prompt": "p", "rejected": "b"}}[kind]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(KINDS)), data=st.data())
def test_one_field_of_a_good_row_replaced_by_anything(tmp_path, kind, data):
    """Closer to real mistakes: a valid row of the kind with one field changed to any value."""
    row = dict(_good_row(kind))
    field = data.draw(st.sampled_from(sorted(row)))
    row[field] = data.draw(values)
    _load(_write(tmp_path, "jsonl", [_good_row(kind), row]), kind, skip_invalid=False)
