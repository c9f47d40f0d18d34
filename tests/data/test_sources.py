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


# ---------------------------------------------------------------- duplicate keys, nesting, odd text


def test_jsonl_duplicate_key_is_a_row_issue_naming_the_key(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(
        '{"chosen": "a", "rejected": "b"}\n'
        '{"chosen": "a", "rejected": "b", "chosen": "c"}\n'
        '{"chosen": [{"role": "assistant", "content": "x", "content": "y"}]}\n',
        encoding="utf-8",
    )
    got = rows(p)
    assert got[0][1] == {"chosen": "a", "rejected": "b"}
    for number, key in ((2, "chosen"), (3, "content")):
        issue = got[number - 1][1]
        assert isinstance(issue, RowIssue)
        assert (issue.source, issue.row, issue.field) == (str(p), number, None)
        assert f"duplicate key '{key}'" in issue.message


def test_json_document_row_with_a_duplicate_key_is_a_row_issue(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"a": 1}, {"a": 2, "a": 3}]', encoding="utf-8")
    got = rows(p)
    assert got[0][1] == {"a": 1}
    issue = got[1][1]
    assert isinstance(issue, RowIssue) and (issue.row, issue.field) == (2, None)
    assert "duplicate key 'a'" in issue.message


def test_csv_header_repeating_a_column_is_a_user_error(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("prompt,chosen,rejected,chosen\np,a,b,c\n", encoding="utf-8")
    with pytest.raises(UserError, match="column 'chosen' more than once") as e:
        rows(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("depth", [900, 100_000])
def test_jsonl_deeply_nested_line_is_a_row_issue(tmp_path, depth):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n{"a": ' + "[" * depth + "]" * depth + '}\n{"a": 3}\n', encoding="utf-8")
    got = rows(p)
    assert [got[0][1], got[2][1]] == [{"a": 1}, {"a": 3}]
    issue = got[1][1]
    if depth == 900:  # deep, but within what the JSON parser reads
        assert isinstance(issue, dict)
    else:
        assert isinstance(issue, RowIssue) and (issue.row, issue.field) == (2, None)
        assert issue.message == "malformed JSON: nested too deeply to read"


def test_jsonl_value_error_while_parsing_is_a_row_issue(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": ' + "1" * 5000 + "}\n", encoding="utf-8")
    (issue,) = [d for _, d, _ in rows(p)]
    assert isinstance(issue, RowIssue) and (issue.row, issue.field) == (1, None)
    assert issue.message.startswith("malformed JSON: ") and "digits" in issue.message


def test_json_document_nested_too_deeply_is_a_user_error(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON: nested too deeply") as e:
        rows(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("ext", ["jsonl", "json"])
def test_escaped_lone_surrogate_is_not_called_bad_utf8(tmp_path, ext):
    p = tmp_path / f"d.{ext}"
    line = '{"text": "smile \\ud83d"}'
    p.write_text(line + "\n" if ext == "jsonl" else f"[{line}]", encoding="utf-8")
    (issue,) = [d for _, d, _ in rows(p)]
    assert isinstance(issue, RowIssue) and (issue.row, issue.field) == (1, None)
    assert issue.message.startswith("holds an unpaired surrogate (\\ud83d)")
    assert "UTF-8" not in issue.message


def test_json_with_bad_bytes_and_an_escaped_surrogate_tells_them_apart(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b'[{"a": "caf\xe9"}, {"a": "\\ud83d"}]')
    first, second = [d for _, d, _ in rows(p)]
    assert isinstance(first, RowIssue) and "not valid UTF-8" in first.message
    assert isinstance(second, RowIssue) and "unpaired surrogate" in second.message


def test_json_file_of_json_lines_with_a_line_separator_in_a_string(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"a": "x\u2028y"}\n{"a": 2}\n', encoding="utf-8")
    assert rows(p) == [(1, {"a": "x\u2028y"}, str(p)), (2, {"a": 2}, str(p))]


# ---------------------------------------------------------------- CSV limits and conversations


def test_csv_cell_larger_than_128_kib(tmp_path):
    p = tmp_path / "d.csv"
    big = "x" * (200 * 1024)
    p.write_text(f"prompt,chosen\np,{big}\n", encoding="utf-8")
    assert rows(p) == [(1, {"prompt": "p", "chosen": big}, str(p))]


def test_malformed_csv_names_the_data_row_it_failed_in(tmp_path, monkeypatch):
    import csv

    import alignlab.data.sources as sources

    # Keep a small cell limit so that the csv module fails on the second data row.
    monkeypatch.setattr(sources, "_allow_large_csv_cells", lambda: None, raising=False)
    old_limit = csv.field_size_limit(10)
    try:
        p = tmp_path / "d.csv"
        p.write_text("a,b\n1,2\n\n3," + "y" * 50 + "\n", encoding="utf-8")
        with pytest.raises(UserError, match=r"malformed CSV in data row 2 \(line 4\)") as e:
            rows(p)
        assert str(p) in str(e.value)
    finally:
        csv.field_size_limit(old_limit)


def test_csv_cells_that_are_json_lists_but_not_conversations_stay_text(tmp_path):
    import csv

    p = tmp_path / "d.csv"
    cells = ["[]", '[{"a": 1}]', '[{"role": "user"}]', '[{"role": "user", "content": "q"}, 3]']
    with p.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["c1", "c2", "c3", "c4", "conv"])
        w.writerow([*cells, '[{"role": "user", "content": "q"}]'])
    assert rows(p)[0][1] == {
        "c1": "[]",
        "c2": '[{"a": 1}]',
        "c3": '[{"role": "user"}]',
        "c4": '[{"role": "user", "content": "q"}, 3]',
        "conv": [{"role": "user", "content": "q"}],
    }


# ---------------------------------------------------------------- Arrow text that is not UTF-8


def bad_utf8_strings() -> pa.Array:
    """A string array whose second value, b"caf\\xe9", is not UTF-8 (Arrow does not check)."""
    offsets = pa.py_buffer(pa.array([0, 2, 6, 8], type=pa.int32()).buffers()[1])
    return pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"okcaf\xe9hi")])


def test_parquet_row_with_bad_utf8_is_a_row_issue_and_reading_goes_on(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"t": bad_utf8_strings(), "n": [1, 2, 3]}), p)
    got = rows(p)
    assert (got[0][:2], got[2][:2]) == ((1, {"t": "ok", "n": 1}), (3, {"t": "hi", "n": 3}))
    issue = got[1][1]
    assert isinstance(issue, RowIssue)
    assert (issue.source, issue.row, issue.field) == (str(p), 2, None)
    assert issue.message == "not valid UTF-8 (in column 't')"


def test_saved_dataset_row_with_bad_utf8_is_a_row_issue(tmp_path):
    import datasets

    datasets.Dataset(pa.table({"t": bad_utf8_strings()})).save_to_disk(tmp_path / "ds")
    got = rows(tmp_path / "ds")
    assert [d for _, d, _ in got][0::2] == [{"t": "ok"}, {"t": "hi"}]
    issue = got[1][1]
    assert isinstance(issue, RowIssue) and (issue.row, issue.field) == (2, None)
    assert "not valid UTF-8" in issue.message


def test_parquet_with_a_damaged_page_is_a_user_error(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"t": [f"row {i} " * 20 for i in range(200)]}), p)
    data = bytearray(p.read_bytes())
    data[100:160] = bytes(b ^ 0xFF for b in data[100:160])  # inside the first data page
    p.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        rows(p)
    assert str(p) in str(e.value)


# ---------------------------------------------------------------- local paths and split tags


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """Run in tmp_path with a Hub loader that records its calls instead of going online."""
    import datasets

    monkeypatch.chdir(tmp_path)
    calls: list[str] = []

    def fake_load_dataset(name, split=None):
        calls.append(name)
        return datasets.Dataset.from_list([{"a": "hub"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


@pytest.mark.parametrize("name", ["mydata/pairs", "notes/train.txt", "owner/data.jsonl"])
def test_mistyped_local_path_is_not_sent_to_the_hub(no_hub, tmp_path, name):
    (tmp_path / "mydata").mkdir()
    with pytest.raises(UserError, match=f"^{name}: no such file or directory$"):
        rows(name)
    assert no_hub == []


def test_names_that_look_like_hub_ids_still_go_to_the_hub(no_hub):
    assert rows("teknium/OpenHermes-2.5") == [(1, {"a": "hub"}, "teknium/OpenHermes-2.5")]
    assert no_hub == ["teknium/OpenHermes-2.5"]


def test_tilde_in_a_data_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_jsonl(tmp_path / "d.jsonl", [{"a": 1}])
    assert rows("~/d.jsonl") == [(1, {"a": 1}, "~/d.jsonl")]


def test_split_name_anywhere_in_the_file_name_keeps_splits_apart(tmp_path):
    write_jsonl(tmp_path / "pairs_train.jsonl", [{"a": 1}])
    write_jsonl(tmp_path / "pairs_eval.jsonl", [{"a": 2}])
    write_jsonl(tmp_path / "sft_train.jsonl", [{"a": 3}])
    write_jsonl(tmp_path / "pairs_test.jsonl", [{"a": 4}])
    write_jsonl(tmp_path / "part.val.jsonl", [{"a": 5}])
    write_jsonl(tmp_path / "notes.jsonl", [{"a": 6}])
    assert [x for _, x, _ in rows(tmp_path)] == [{"a": 1}, {"a": 3}]
    assert rows(tmp_path, split="eval") == [(1, {"a": 2}, str(tmp_path / "pairs_eval.jsonl"))]
    assert [x for _, x, _ in rows(tmp_path, split="test")] == [{"a": 4}]
    assert [x for _, x, _ in rows(tmp_path, split="val")] == [{"a": 5}]


def test_split_folder_names_and_words_that_merely_contain_a_split_name(tmp_path):
    write_jsonl(tmp_path / "contest.jsonl", [{"a": 1}])
    write_jsonl(tmp_path / "trainee-notes.jsonl", [{"a": 2}])
    assert [x for _, x, _ in rows(tmp_path)] == [{"a": 1}, {"a": 2}]  # no split tags: every file
    (tmp_path / "dev").mkdir()
    write_jsonl(tmp_path / "dev" / "0.jsonl", [{"a": 3}])
    assert [x for _, x, _ in rows(tmp_path, split="dev")] == [{"a": 3}]
    with pytest.raises(UserError, match="no data files for split 'train' \\(splits found: dev;"):
        rows(tmp_path)
