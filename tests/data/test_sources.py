"""Reading raw rows: every file format, directories, Hub names, and unreadable rows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.data.sources import iter_rows
from alignlab.errors import RowIssue, UserError


def rows(source, **kw) -> list[tuple[int, object, str]]:
    return [(r.row, r.data, r.source) for r in iter_rows(source, **kw)]


def write_jsonl(path: Path, objs: list) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


# ---------------------------------------------------------------- JSONL


def test_jsonl_rows_are_numbered_by_line_and_blank_lines_are_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n{"a": "x\\u00e9"}\n')
    assert rows(p) == [(1, {"a": 1}, str(p)), (4, {"a": "x\u00e9"}, str(p))]


def test_jsonl_source_name_is_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", [{"a": 1}])
    assert rows("d.jsonl") == [(1, {"a": 1}, "d.jsonl")]


def test_jsonl_malformed_line_is_a_row_issue_and_reading_goes_on(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n{"a": 2,,}\n{"a": 3}\n', encoding="utf-8")
    got = rows(p)
    assert [(n, d) for n, d, _ in got if not isinstance(d, RowIssue)] == [(1, {"a": 1}), (3, {"a": 3})]
    issue = got[1][1]
    assert isinstance(issue, RowIssue)
    assert (issue.source, issue.row, issue.field) == (str(p), 2, None)
    assert "malformed JSON" in issue.message and "column" in issue.message


@pytest.mark.parametrize(
    ("line", "got"), [("[1, 2]", "a list"), ("7", "a number"), ('"s"', "a string"), ("null", "null")]
)
def test_jsonl_non_object_row_is_a_row_issue(tmp_path, line, got):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n' + line + "\n", encoding="utf-8")
    issue = rows(p)[1][1]
    assert isinstance(issue, RowIssue)
    assert (issue.row, issue.field) == (2, None)
    assert issue.message == f"expected a JSON object, got {got}"


def test_jsonl_non_utf8_bytes_are_a_row_issue_for_that_line_only(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n{"a": "fine"}\n')
    got = rows(p)
    assert got[0][1] == {"a": "ok"} and got[2][1] == {"a": "fine"}
    issue = got[1][1]
    assert isinstance(issue, RowIssue) and issue.row == 2 and issue.field is None
    assert "not valid UTF-8" in issue.message and "0xe9" in issue.message


# ---------------------------------------------------------------- JSON


def test_json_list_of_objects(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"a": 1}, {"a": 2}]), encoding="utf-8")
    assert rows(p) == [(1, {"a": 1}, str(p)), (2, {"a": 2}, str(p))]


def test_json_object_with_one_list_valued_key(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"version": "1", "data": [{"a": 1}, {"a": 2}]}), encoding="utf-8")
    assert [d for _, d, _ in rows(p)] == [{"a": 1}, {"a": 2}]


def test_json_file_holding_json_lines(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{oops\n', encoding="utf-8")
    got = rows(p)
    assert [(n, d) for n, d, _ in got[:2]] == [(1, {"a": 1}), (3, {"a": 2})]
    assert isinstance(got[2][1], RowIssue) and got[2][1].row == 4


def test_json_non_object_element_and_bad_bytes_are_row_issues(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b'[{"a": "x"}, 5, {"a": "caf\xe9"}, {"a": "y"}]')
    got = rows(p)
    assert got[0][1] == {"a": "x"} and got[3][1] == {"a": "y"}
    assert isinstance(got[1][1], RowIssue) and got[1][1].row == 2 and "got a number" in got[1][1].message
    assert isinstance(got[2][1], RowIssue) and got[2][1].row == 3 and "UTF-8" in got[2][1].message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"a": [1], "b": [2]}', "exactly one list-valued key"),
        ('{"a": 1}', "exactly one list-valued key"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "single conversation"),
        ('[{"a": 1},\n {"a": 2', "not valid JSON"),
        ("42", "got a number"),
    ],
)
def test_json_documents_that_hold_no_rows(tmp_path, content, needle):
    p = tmp_path / "d.json"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=needle) as e:
        rows(p)
    assert str(p) in str(e.value)


# ---------------------------------------------------------------- Parquet


def test_parquet_rows_including_nested_messages(tmp_path):
    p = tmp_path / "d.parquet"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pq.write_table(pa.Table.from_pylist([{"t": "x", "m": msgs}, {"t": "y", "m": msgs[:1]}]), p)
    assert rows(p) == [(1, {"t": "x", "m": msgs}, str(p)), (2, {"t": "y", "m": msgs[:1]}, str(p))]


def test_parquet_that_is_not_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_text("not parquet")
    with pytest.raises(UserError, match="cannot read as Parquet"):
        rows(p)


# ---------------------------------------------------------------- CSV


def test_csv_rows_are_numbered_after_the_header(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('prompt,chosen\n"a, b","line 1\nline 2"\n\nc,d\n', encoding="utf-8")
    assert rows(p) == [
        (1, {"prompt": "a, b", "chosen": "line 1\nline 2"}, str(p)),
        (2, {"prompt": "c", "chosen": "d"}, str(p)),
    ]


def test_csv_cells_holding_a_json_list_of_objects_become_lists(tmp_path):
    msgs = [{"role": "assistant", "content": "hi"}]
    p = tmp_path / "d.csv"
    with p.open("w", encoding="utf-8", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["conv", "numbers", "text", "bad"])
        w.writerow([json.dumps(msgs), "[1, 2]", "[not json]", "[{oops}]"])
    assert rows(p)[0][1] == {"conv": msgs, "numbers": "[1, 2]", "text": "[not json]", "bad": "[{oops}]"}


def test_csv_wrong_cell_count_and_bad_bytes_are_row_issues(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"a,b\n1,2\n3\n4,caf\xe9\n5,6\n")
    got = rows(p)
    assert got[0][1] == {"a": "1", "b": "2"} and got[3][1] == {"a": "5", "b": "6"}
    assert isinstance(got[1][1], RowIssue) and got[1][1].row == 2
    assert got[1][1].message == "row has 1 cells but the header has 2 columns"
    assert isinstance(got[2][1], RowIssue) and got[2][1].row == 3 and "UTF-8" in got[2][1].message


def test_empty_csv_has_no_rows(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("")
    assert rows(p) == []


# ---------------------------------------------------------------- paths


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="no such file") as e:
        rows(tmp_path / "nope.jsonl")
    assert str(tmp_path / "nope.jsonl") in str(e.value)


def test_missing_relative_data_file_is_not_taken_for_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="data/train.jsonl: no such file"):
        rows("data/train.jsonl")


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("x")
    with pytest.raises(
        UserError, match=r"unsupported file type '\.txt'; supported: \.jsonl, \.json, \.parquet, \.csv"
    ):
        rows(p)


# ---------------------------------------------------------------- datasets and directories


def test_saved_dataset_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"a": "x"}, {"a": "y"}]).save_to_disk(tmp_path / "ds")
    assert rows(tmp_path / "ds") == [
        (1, {"a": "x"}, str(tmp_path / "ds")),
        (2, {"a": "y"}, str(tmp_path / "ds")),
    ]
    with pytest.raises(UserError, match="single dataset without splits"):
        rows(tmp_path / "ds", split="test")


def test_saved_dataset_dict_picks_train_by_default_and_split_selects(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"a": "tr"}]), test=datasets.Dataset.from_list([{"a": "te"}])
    )
    dd.save_to_disk(tmp_path / "dd")
    assert [d for _, d, _ in rows(tmp_path / "dd")] == [{"a": "tr"}]
    assert [d for _, d, _ in rows(tmp_path / "dd", split="test")] == [{"a": "te"}]
    with pytest.raises(UserError, match="no split 'dev'; available splits: train, test"):
        rows(tmp_path / "dd", split="dev")


def test_directory_of_data_files_picks_split_files(tmp_path):
    d = tmp_path / "repo"
    (d / "data").mkdir(parents=True)
    write_jsonl(d / "data" / "train-00000-of-00002.jsonl", [{"a": 1}])
    write_jsonl(d / "data" / "train-00001-of-00002.jsonl", [{"a": 2}])
    write_jsonl(d / "data" / "test.jsonl", [{"a": 3}])
    (d / "README.md").write_text("not data")
    got = rows(d)
    assert [x for _, x, _ in got] == [{"a": 1}, {"a": 2}]
    assert got[1][2] == str(d / "data" / "train-00001-of-00002.jsonl")
    assert [x for _, x, _ in rows(d, split="test")] == [{"a": 3}]
    with pytest.raises(UserError, match="no data files for split 'validation'"):
        rows(d, split="validation")


def test_directory_without_split_names_reads_every_file(tmp_path):
    write_jsonl(tmp_path / "part_a.jsonl", [{"a": 1}])
    pq.write_table(pa.Table.from_pylist([{"a": 2}]), tmp_path / "part_b.parquet")
    assert [x for _, x, _ in rows(tmp_path)] == [{"a": 1}, {"a": 2}]


def test_directory_with_only_other_splits_asks_for_one(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [{"a": 1}])
    write_jsonl(tmp_path / "validation.jsonl", [{"a": 2}])
    with pytest.raises(UserError, match="no data files for split 'train'"):
        rows(tmp_path)


def test_empty_directory(tmp_path):
    with pytest.raises(UserError, match="no data files"):
        rows(tmp_path)


def test_hub_name_goes_to_load_dataset(monkeypatch, tmp_path):
    import datasets

    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"a": "hub"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert rows("someone/prefs") == [(1, {"a": "hub"}, "someone/prefs")]
    assert rows("someone/prefs", split="test_prefs")[0][1] == {"a": "hub"}
    assert calls == [("someone/prefs", "train"), ("someone/prefs", "test_prefs")]


def test_hub_failure_is_a_user_error(monkeypatch, tmp_path):
    import datasets

    monkeypatch.chdir(tmp_path)

    def failing(name, split=None):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(UserError, match="someone/prefs: not a local path.*offline"):
        rows("someone/prefs")
