"""Records to rows and JSON lines: every kind loads back as it was written; writes are atomic."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from alignlab.data import load_records
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
from alignlab.data.write import record_to_row, write_jsonl, write_rows
from alignlab.errors import UserError

Q = (Message("system", "be kind"), Message("user", "q"))


def A(text):  # noqa: N802
    return (Message("assistant", text),)


RECORDS = {
    "sft": [SFTRecord("q", "a"), SFTRecord(Q, A("a"))],
    "pair": [PairRecord("q", "a", "b"), PairRecord(Q, A("a"), A("b"), score_chosen=2.5, score_rejected=-1.0,
                                                   strength=0.8)],
    "joint": [JointRecord("q1", "a", "q2", "b"), JointRecord(Q, A("a"), (Message("user", "r"),), A("b"))],
    "unpaired": [UnpairedRecord("q", "a", True), UnpairedRecord(Q, A("b"), False)],
    "scored": [ScoredRecord("q", "a", 0.25), ScoredRecord(Q, A("b"), -3.0)],
    "ranked": [RankedRecord("q", ("a", "b", "c"), (2.0, 2.0, -1.0)), RankedRecord(Q, (A("a"), A("b")), (1.0, 0.0))],
    "negatives": [NegativeRecord("ünïcode ✓", "b"), NegativeRecord(Q, A("b"))],
}


@pytest.mark.parametrize("kind", sorted(RECORDS))
def test_round_trip(tmp_path, kind):
    path = tmp_path / f"{kind}.jsonl"
    assert write_jsonl(path, RECORDS[kind]) == 2
    loaded = load_records(path, kind)
    assert loaded.records == [replace(r, source=str(path), row=i) for i, r in enumerate(RECORDS[kind], 1)]


def test_rows_hold_plain_json():
    row = record_to_row(RECORDS["pair"][1])
    assert row == {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "q"}],
                   "chosen": [{"role": "assistant", "content": "a"}],
                   "rejected": [{"role": "assistant", "content": "b"}],
                   "score_chosen": 2.5, "score_rejected": -1.0, "strength": 0.8}
    assert record_to_row(RECORDS["pair"][0]) == {"prompt": "q", "chosen": "a", "rejected": "b"}
    assert record_to_row(RECORDS["ranked"][0]) == {"prompt": "q", "completions": ["a", "b", "c"],
                                                   "scores": [2.0, 2.0, -1.0]}


def test_unicode_is_written_as_it_is(tmp_path):
    path = tmp_path / "n.jsonl"
    write_jsonl(path, RECORDS["negatives"][:1])
    assert path.read_text(encoding="utf-8") == json.dumps({"prompt": "ünïcode ✓", "rejected": "b"},
                                                          ensure_ascii=False) + "\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        write_jsonl(path, [SFTRecord("q", "a"), "not a record"])  # type: ignore[list-item]
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_only_jsonl_and_a_writable_place(tmp_path):
    with pytest.raises(UserError, match="name the file \\*.jsonl"):
        write_jsonl(tmp_path / "out.csv", RECORDS["sft"])
    with pytest.raises(UserError, match="cannot write"):
        write_jsonl(tmp_path / "missing" / "out.jsonl", RECORDS["sft"])


def test_a_path_under_a_file_is_a_one_line_error(tmp_path):
    """An output "inside" a file (its folder is a file): the temporary cannot be made, and the
    clean-up of the temporary must not turn that into a NotADirectoryError traceback."""
    (tmp_path / "afile").write_text("x\n")
    with pytest.raises(UserError, match=r"afile/out.jsonl: cannot write: Not a directory$"):
        write_jsonl(tmp_path / "afile" / "out.jsonl", RECORDS["sft"])
    assert (tmp_path / "afile").read_text() == "x\n"


def test_plain_rows_are_written_in_their_key_order(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert write_rows(path, [{"text": "é ✓"}, {"b": 1, "a": [0.5, True]}]) == 2
    assert path.read_bytes() == '{"text": "é ✓"}\n{"b": 1, "a": [0.5, true]}\n'.encode()
    with pytest.raises(ValueError):
        write_rows(path, [{"x": float("nan")}])  # not JSON; the file stays as it was
    assert path.read_bytes() == '{"text": "é ✓"}\n{"b": 1, "a": [0.5, true]}\n'.encode()
