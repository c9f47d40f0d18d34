"""load_records end to end over every file format, error reporting, skipping, and split_records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.data import LoadResult, Message, PairRecord, SFTRecord, load_records, split_records
from alignlab.errors import DataError, UserError

FORMATS = ["jsonl", "json", "parquet", "csv", "dataset"]


def write(tmp_path: Path, rows: list[dict], fmt: str) -> Path:
    """Write rows in one format; returns the path to load."""
    if fmt == "jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "json":
        p = tmp_path / "d.json"
        p.write_text(json.dumps({"data": rows}), encoding="utf-8")
    elif fmt == "parquet":
        p = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(rows), p)
    elif fmt == "csv":
        p = tmp_path / "d.csv"
        with p.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    else:
        import datasets

        p = tmp_path / "ds"
        datasets.DatasetDict(train=datasets.Dataset.from_list(rows)).save_to_disk(p)
    return p


def m(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def conv(*pairs: tuple[str, str]) -> tuple[Message, ...]:
    return tuple(Message(r, c) for r, c in pairs)


# Each case: kind, rows as stored, expected (prompt, response...) per row.
CASES = {
    "pair-standard": (
        "pair",
        [
            {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
            {"prompt": "", "chosen": "yes", "rejected": "no"},
        ],
        [("2+2=", "4", "5"), ("", "yes", "no")],
    ),
    "pair-conversational": (
        "pair",
        [
            {
                "prompt": [m("user", "hi")],
                "chosen": [m("assistant", "hello")],
                "rejected": [m("assistant", "bye")],
            }
        ],
        [(conv(("user", "hi")), conv(("assistant", "hello")), conv(("assistant", "bye")))],
    ),
    "pair-implicit-conversational": (
        "pair",
        [
            {
                "chosen": [m("user", "q"), m("assistant", "good")],
                "rejected": [m("user", "q"), m("assistant", "bad")],
            }
        ],
        [(conv(("user", "q")), conv(("assistant", "good")), conv(("assistant", "bad")))],
    ),
    "pair-hh": (
        "pair",
        [
            {
                "chosen": "\n\nHuman: Name a color.\n\nAssistant: Blue.",
                "rejected": "\n\nHuman: Name a color.\n\nAssistant: I won't.",
            }
        ],
        [("\n\nHuman: Name a color.\n\nAssistant:", " Blue.", " I won't.")],
    ),
    "pair-implicit-text": (
        "pair",
        [{"chosen": "The sky is blue", "rejected": "The sky is green"}],
        [("The sky is", " blue", " green")],
    ),
    "pair-ultrafeedback": (
        "pair",
        [
            {
                "prompt": "q",
                "chosen": [m("user", "q"), m("assistant", "good")],
                "rejected": [m("user", "q"), m("assistant", "bad")],
            }
        ],
        [(conv(("user", "q")), conv(("assistant", "good")), conv(("assistant", "bad")))],
    ),
    "sft-prompt-completion": (
        "sft",
        [{"prompt": "Q: 1+1?", "completion": " A: 2"}, {"prompt": "Q: 2+2?", "completion": " A: 4"}],
        [("Q: 1+1?", " A: 2"), ("Q: 2+2?", " A: 4")],
    ),
    "sft-text": ("sft", [{"text": "hello world"}], [("", "hello world")]),
    "sft-messages": (
        "sft",
        [{"messages": [m("system", "s"), m("user", "q"), m("assistant", "a")]}],
        [(conv(("system", "s"), ("user", "q")), conv(("assistant", "a")))],
    ),
    "sft-conversational": (
        "sft",
        [
            {
                "prompt": [m("user", "q")],
                "completion": [m("assistant", "a"), m("user", "q2"), m("assistant", "a2")],
            }
        ],
        [(conv(("user", "q")), conv(("assistant", "a"), ("user", "q2"), ("assistant", "a2")))],
    ),
}


def expected_records(kind: str, expected: list[tuple], source: str) -> list:
    cls = PairRecord if kind == "pair" else SFTRecord
    return [cls(*fields, source=source, row=i) for i, fields in enumerate(expected, start=1)]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(CASES))
def test_every_format_loads_exact_records(tmp_path, fmt, case):
    kind, rows, expected = CASES[case]
    path = write(tmp_path, rows, fmt)
    result = load_records(path, kind)
    assert isinstance(result, LoadResult)
    assert result.records == expected_records(kind, expected, str(path))
    assert result.skipped == [] and result.duplicates == 0
    assert result.source == str(path)


def test_csv_with_pandas_style_empty_prompt_and_conversations(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(
        'prompt,chosen,rejected\n,"[{""role"": ""assistant"", ""content"": ""a""}]",'
        '"[{""role"": ""assistant"", ""content"": ""b""}]"\n',
        encoding="utf-8",
    )
    (rec,) = load_records(p, "pair").records
    assert rec == PairRecord((), conv(("assistant", "a")), conv(("assistant", "b")), str(p), 1)


def test_column_mapping(tmp_path):
    path = write(tmp_path, [{"q": "x", "good": "a", "bad": "b"}], "jsonl")
    result = load_records(path, "pair", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert result.records == [PairRecord("x", "a", "b", str(path), 1)]


def test_column_mapping_missing_column_is_reported_per_row(tmp_path):
    path = write(tmp_path, [{"q": "x", "good": "a", "bad": "b"}], "jsonl")
    with pytest.raises(DataError) as e:
        load_records(path, "pair", columns={"chosen": "good", "rejected": "worse"})
    (issue,) = e.value.issues
    assert (issue.source, issue.row, issue.field) == (str(path), 1, "worse")


def bad_file(tmp_path: Path) -> Path:
    p = tmp_path / "prefs.jsonl"
    lines = [
        json.dumps({"prompt": "p1", "chosen": "a", "rejected": "b"}),
        json.dumps({"prompt": "p2", "chosen": "", "rejected": "b"}),  # line 2: empty response
        "{not json",  # line 3
        json.dumps({"prompt": "p4", "chosen": "a", "rejected": "b"}),
        json.dumps({"prompt": "p5", "chosen": "same", "rejected": "same"}),  # line 5
        json.dumps({"prompt": "p6", "choosen": "a", "rejected": "b"}),  # line 6
        json.dumps({"prompt": "p7", "chosen": "c", "rejected": "d"}),
    ]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_default_mode_raises_with_every_issue(tmp_path):
    p = bad_file(tmp_path)
    with pytest.raises(DataError) as e:
        load_records(p, "pair")
    issues = e.value.issues
    assert [(i.source, i.row, i.field) for i in issues] == [
        (str(p), 2, "chosen"),
        (str(p), 3, None),
        (str(p), 5, "rejected"),
        (str(p), 6, "chosen"),
    ]
    text = str(e.value)
    assert text.startswith(f"{p}, row 2, field 'chosen': empty response")
    assert text.endswith("(and 3 more bad rows; pass skip_invalid=True to skip bad rows)")  # the keyword of load_records
    assert "misspelling of 'chosen'" in issues[3].message


def test_an_empty_hint_leaves_no_dangling_separator():
    """A message with no hint (hint="") counts the further bad rows and stops there."""
    from alignlab.errors import RowIssue

    issues = [RowIssue("p.jsonl", row, "prompt", "too long") for row in (1, 2, 3)]
    assert str(DataError(issues, hint="")) == "p.jsonl, row 1, field 'prompt': too long (and 2 more bad rows)"
    assert str(DataError(issues[:1], hint="")) == "p.jsonl, row 1, field 'prompt': too long"


def test_skip_mode_keeps_good_rows_and_counts_the_rest(tmp_path):
    p = bad_file(tmp_path)
    result = load_records(p, "pair", skip_invalid=True)
    assert result.records == [
        PairRecord("p1", "a", "b", str(p), 1),
        PairRecord("p4", "a", "b", str(p), 4),
        PairRecord("p7", "c", "d", str(p), 7),
    ]
    assert [i.row for i in result.skipped] == [2, 3, 5, 6]
    assert result.skipped_rows == 4
    summary = result.summary()
    assert summary.startswith(
        f"loaded 3 pairs from {p} (4 invalid rows skipped: {p}, row 2, field 'chosen': empty response; "
    )
    assert "row 3: malformed JSON" in summary
    assert "row 5, field 'rejected': chosen and rejected are identical" in summary
    assert summary.endswith("; and 1 more row)")


def test_skip_mode_counts_rows_not_issues(tmp_path):
    p = write(tmp_path, [{"text": "ok"}, {"prompt": 1, "completion": 2}], "jsonl")
    result = load_records(p, "sft", skip_invalid=True)
    assert len(result.skipped) == 2 and result.skipped_rows == 1
    assert "1 invalid row skipped" in result.summary()
    assert result.summary().startswith(f"loaded 1 SFT example from {p}")


def test_no_valid_rows_is_a_user_error_even_when_skipping(tmp_path):
    p = write(tmp_path, [{"chosen": "x", "rejected": "x"}, {"chosen": "", "rejected": "y"}], "jsonl")
    with pytest.raises(UserError, match="no valid rows") as e:
        load_records(p, "pair", skip_invalid=True)
    assert not isinstance(e.value, DataError)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    ("name", "content"), [("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "prompt,chosen\n")]
)
def test_empty_source_has_no_rows(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=f"{name}: no rows"):
        load_records(p, "pair", skip_invalid=True)


def test_non_utf8_row_is_skipped_and_reported(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "good"}\n{"text": "caf\xe9"}\n')
    result = load_records(p, "sft", skip_invalid=True)
    assert result.records == [SFTRecord("", "good", str(p), 1)]
    (issue,) = result.skipped
    assert (issue.row, issue.field) == (2, None) and "not valid UTF-8" in issue.message


def test_duplicates_are_kept_and_counted(tmp_path):
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    p = write(tmp_path, [row, row, {"prompt": "q", "chosen": "a", "rejected": "b"}, row], "jsonl")
    result = load_records(p, "pair")
    assert len(result.records) == 4 and result.duplicates == 2
    assert result.summary() == f"loaded 4 pairs from {p}, 2 duplicates kept"


def test_missing_source_and_bad_kind(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_records(tmp_path / "nope.jsonl", "pair")
    with pytest.raises(UserError, match="unknown data kind 'dpo'"):
        load_records(tmp_path / "nope.jsonl", "dpo")  # type: ignore[arg-type]


def test_split_selects_dataset_split(tmp_path):
    import datasets

    p = tmp_path / "dd"
    datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"text": "tr"}]), test=datasets.Dataset.from_list([{"text": "te"}])
    ).save_to_disk(p)
    assert load_records(p, "sft", split="test").records == [SFTRecord("", "te", str(p), 1)]


# ---------------------------------------------------------------- split_records


def test_split_is_deterministic_disjoint_and_sized():
    items = list(range(100))
    train, evals = split_records(items, 0.1, seed=3)
    assert len(evals) == 10 and len(train) == 90
    assert sorted(train + evals) == items
    assert train == sorted(train) and evals == sorted(evals)  # input order is kept
    assert split_records(items, 0.1, seed=3) == (train, evals)
    assert split_records(items, 0.1, seed=4)[1] != evals


def test_split_gives_at_least_one_eval_record():
    assert [len(x) for x in split_records(["a", "b"], 0.01, seed=0)] == [1, 1]
    assert [len(x) for x in split_records(list(range(7)), 0.3, seed=0)] == [5, 2]
    assert [len(x) for x in split_records(list(range(10)), 0.3, seed=0)] == [7, 3]


def test_split_with_zero_fraction_keeps_everything():
    assert split_records([1, 2, 3], 0.0, seed=0) == ([1, 2, 3], [])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(UserError, match="eval_fraction must be in"):
        split_records([1, 2, 3], fraction, seed=0)


def test_split_that_leaves_no_training_data():
    with pytest.raises(UserError, match="leaves no training data"):
        split_records([1], 0.5, seed=0)
    with pytest.raises(UserError, match="leaves no training data"):
        split_records([], 0.5, seed=0)
    assert [len(x) for x in split_records([1, 2], 0.99, seed=0)] == [1, 1]


def test_split_keeps_each_prompt_on_one_side():
    """10 prompts with 4 pairs each, interleaved (row i has prompt i % 10). floor(40 * 0.25) = 10
    records are wanted; prompts come whole, so the third prompt taken brings the eval set to 12."""
    records = [PairRecord(f"p{i % 10}", f"c{i}", f"r{i}", row=i) for i in range(40)]
    for seed in range(5):
        train, evals = split_records(records, 0.25, seed=seed)
        assert len(evals) == 12 and len(train) == 28
        assert not {r.prompt for r in train} & {r.prompt for r in evals}
        assert sorted(r.row for r in train + evals) == list(range(40))
        assert [r.row for r in evals] == sorted(r.row for r in evals)


def test_split_of_distinct_or_missing_prompts_is_the_plain_shuffle():
    """Records that share no prompt (or have none) are held out exactly as plain items would be."""
    plain = split_records(list(range(30)), 0.2, seed=7)
    distinct = [PairRecord(f"p{i}", "c", "r", row=i) for i in range(30)]
    missing = [SFTRecord("", f"text {i}", row=i) for i in range(30)]
    for records in (distinct, missing):
        train, evals = split_records(records, 0.2, seed=7)
        assert ([r.row for r in train], [r.row for r in evals]) == plain


def test_split_of_one_prompt_says_why_nothing_is_left():
    records = [PairRecord("same", f"c{i}", "r", row=i) for i in range(3)]
    with pytest.raises(UserError, match=r"held out together, and these 3 have 1 distinct prompt\)"):
        split_records(records, 0.3, seed=0)


# ---------------------------------------------------------------- prompts that would be lost


def test_rows_without_a_prompt_in_a_file_whose_other_rows_have_one(tmp_path):
    rows = [
        {"prompt": "Sky?", "chosen": "blue", "rejected": "green"},
        {"chosen": "The sky is blue", "rejected": "The sky is green"},
        {"prompt": "Grass?", "chosen": "green", "rejected": "blue"},
    ]
    p = write(tmp_path, rows, "jsonl")
    with pytest.raises(DataError) as e:
        load_records(p, "pair")
    (issue,) = e.value.issues
    assert (issue.source, issue.row, issue.field) == (str(p), 2, "prompt")
    assert issue.message == "missing field 'prompt' (other rows of this file have one)"
    result = load_records(p, "pair", skip_invalid=True)
    assert result.records == [
        PairRecord("Sky?", "blue", "green", str(p), 1),
        PairRecord("Grass?", "green", "blue", str(p), 3),
    ]


def test_prompt_column_is_compared_within_each_file_of_a_directory(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.jsonl").write_text(json.dumps({"prompt": "Sky?", "chosen": "blue", "rejected": "green"}) + "\n")
    (d / "b.jsonl").write_text(json.dumps({"chosen": "The sky is blue", "rejected": "The sky is green"}) + "\n")
    assert load_records(d, "pair").records == [
        PairRecord("Sky?", "blue", "green", str(d / "a.jsonl"), 1),
        PairRecord("The sky is", " blue", " green", str(d / "b.jsonl"), 1),
    ]


def test_prompt_under_another_column_name_is_not_dropped(tmp_path):
    row = {"system": "", "question": "What is 2+2?", "chosen": "The answer is 4.", "rejected": "5"}
    p = write(tmp_path, [row], "jsonl")
    with pytest.raises(DataError) as e:
        load_records(p, "pair")
    (issue,) = e.value.issues
    assert (issue.source, issue.row, issue.field) == (str(p), 1, "prompt")
    assert "unused columns: question, system; map one with columns={'prompt': 'NAME'}" in issue.message
    result = load_records(p, "pair", columns={"prompt": "question"})
    assert result.records == [PairRecord("What is 2+2?", "The answer is 4.", "5", str(p), 1)]


def test_summary_counts_and_shows_rows_not_issues(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": 1, "chosen": None, "rejected": "b"},  # two issues in one row
        {"prompt": "p", "chosen": "", "rejected": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "p", "chosen": "a", "rejected": ""},
        {"prompt": "p", "chosen": "", "rejected": "c"},
    ]
    p = write(tmp_path, rows, "jsonl")
    result = load_records(p, "pair", skip_invalid=True)
    assert len(result.skipped) == 6 and result.skipped_rows == 5
    assert result.summary() == (
        f"loaded 1 pair from {p} (5 invalid rows skipped: {p}, row 2, field 'chosen': missing value (null); "
        f"{p}, row 3, field 'chosen': empty response; "
        f"{p}, row 4, field 'rejected': chosen and rejected are identical; and 2 more rows)"
    )
