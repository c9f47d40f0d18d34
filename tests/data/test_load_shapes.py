"""load_records over the testbed's feedback files and the other shapes' files: records, summaries,
errors naming file, row and field, and files of the wrong shape refused with a converter to use."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.data import load_records
from alignlab.data.records import NegativeRecord, PairRecord, RankedRecord, ScoredRecord, UnpairedRecord
from alignlab.errors import DataError, UserError


def jsonl(path: Path, rows: list[dict]) -> Path:
    # As the testbed writes them (alignlab.data.write.write_rows).
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# Two prompts, three samples each, laid out as alignlab.testbed.feedback writes its files.
SAMPLES = {"1+1=": [("2", 1.0), ("3", 0.0), ("11", 0.0)], "2+2=": [("4", 1.0), ("5", 0.0), ("4 ", 1.0)]}
MEAN = 0.5


def ranks_of(scores: list[float]) -> list[int]:
    return [1 + sum(other > s for other in scores) for s in scores]


def feedback_files(tmp_path: Path) -> dict[str, Path]:
    pairs, ranked, unpaired, scored, negatives = [], [], [], [], []
    for p, samples in SAMPLES.items():
        texts = [t for t, _ in samples]
        scores = [s for _, s in samples]
        pairs.append({"prompt": p, "chosen": texts[0], "rejected": texts[1], "score_chosen": scores[0],
                      "score_rejected": scores[1]})
        ranked.append({"prompt": p, "completions": texts, "scores": scores, "ranks": ranks_of(scores)})
        for t, s in samples:
            unpaired.append({"prompt": p, "completion": t, "label": s > MEAN})
            scored.append({"prompt": p, "completion": t, "score": s})
            if s <= MEAN:
                negatives.append({"prompt": p, "rejected": t})
    rows = {"pairs": pairs, "ranked": ranked, "unpaired": unpaired, "scored": scored, "negatives": negatives}
    return {name: jsonl(tmp_path / f"{name}.jsonl", r) for name, r in rows.items()}


def test_testbed_pairs(tmp_path):
    path = feedback_files(tmp_path)["pairs"]
    result = load_records(path, "pair")
    assert result.records == [
        PairRecord("1+1=", "2", "3", str(path), 1, 1.0, 0.0),
        PairRecord("2+2=", "4", "5", str(path), 2, 1.0, 0.0),
    ]
    assert result.summary() == f"loaded 2 pairs from {path}"


def test_testbed_pairs_load_as_joint_pairs(tmp_path):
    path = feedback_files(tmp_path)["pairs"]
    result = load_records(path, "joint")
    assert [(r.prompt_chosen, r.chosen, r.prompt_rejected, r.rejected) for r in result.records] == [
        ("1+1=", "2", "1+1=", "3"), ("2+2=", "4", "2+2=", "5")]
    assert result.summary() == f"loaded 2 joint pairs from {path}"


def test_testbed_ranked(tmp_path):
    path = feedback_files(tmp_path)["ranked"]
    result = load_records(path, "ranked")
    assert result.records == [
        RankedRecord("1+1=", ("2", "3", "11"), (1.0, 0.0, 0.0), str(path), 1),
        RankedRecord("2+2=", ("4", "4 ", "5"), (1.0, 1.0, 0.0), str(path), 2),
    ]
    assert result.summary() == f"loaded 2 ranked lists from {path}"
    with pytest.raises(DataError) as e:
        load_records(path, "ranked", strict_order=True)
    assert str(e.value).startswith(f"{path}, row 1, field 'scores': completions 2 and 3 tie (score 0)")
    assert "needs a strict order" in str(e.value)
    assert {i.row for i in e.value.issues} == {1, 2}


def test_testbed_unpaired_scored_negatives(tmp_path):
    files = feedback_files(tmp_path)
    unpaired = load_records(files["unpaired"], "unpaired")
    assert [(r.completion, r.label) for r in unpaired.records] == [
        ("2", True), ("3", False), ("11", False), ("4", True), ("5", False), ("4 ", True)]
    assert unpaired.records[0] == UnpairedRecord("1+1=", "2", True, str(files["unpaired"]), 1)
    assert unpaired.summary() == f"loaded 6 labelled responses from {files['unpaired']}"
    scored = load_records(files["scored"], "scored")
    assert scored.records[5] == ScoredRecord("2+2=", "4 ", 1.0, str(files["scored"]), 6)
    assert scored.summary() == f"loaded 6 scored responses from {files['scored']}"
    negatives = load_records(files["negatives"], "negatives")
    assert negatives.records == [NegativeRecord("1+1=", "3", str(files["negatives"]), 1),
                                 NegativeRecord("1+1=", "11", str(files["negatives"]), 2),
                                 NegativeRecord("2+2=", "5", str(files["negatives"]), 3)]
    assert negatives.summary() == f"loaded 3 negatives from {files['negatives']}"


def csv_file(path: Path, header: list[str], *rows: list[str]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_cells_hold_numbers_labels_and_lists_as_text(tmp_path):
    path = csv_file(tmp_path / "r.csv", ["prompt", "completions", "scores"],
                    ["q", json.dumps(["a", "b"]), json.dumps([0.5, 2])])
    assert load_records(path, "ranked").records[0].completions == ("b", "a")
    path = csv_file(tmp_path / "u.csv", ["prompt", "completion", "label"], ["q", "a", "True"], ["q", "b", "0"])
    assert [r.label for r in load_records(path, "unpaired").records] == [True, False]
    path = csv_file(tmp_path / "s.csv", ["prompt", "completion", "score"], ["q", "a", "-1.5"])
    assert load_records(path, "scored").records[0].score == -1.5


def test_parquet_ranked_and_scored(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "completions": ["a", "b", "c"], "ranks": [3, 1, 2]}]), path)
    assert load_records(path, "ranked").records[0].completions == ("b", "c", "a")
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "completion": "a", "score": 7}]), path)
    assert load_records(path, "scored").records[0].score == 7.0


def test_bad_rows_are_reported_with_file_row_and_field(tmp_path):
    path = jsonl(tmp_path / "s.jsonl", [
        {"prompt": "q", "completion": "a", "score": 1},
        {"prompt": "q", "completion": "b", "score": float("nan")},
        {"prompt": "q", "completion": "c", "score": "high"},
    ])
    with pytest.raises(DataError) as e:
        load_records(path, "scored")
    assert str(e.value).startswith(f"{path}, row 2, field 'score': not a number (NaN) (and 1 more bad row")
    assert [(i.row, i.field) for i in e.value.issues] == [(2, "score"), (3, "score")]
    result = load_records(path, "scored", skip_invalid=True)
    assert len(result.records) == 1
    assert result.summary().startswith(f"loaded 1 scored response from {path} (2 invalid rows skipped: ")


def test_unpaired_label_yes_in_a_file(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"prompt": "q", "completion": "a", "label": True},
                                       {"prompt": "q", "completion": "b", "label": "yes"}])
    with pytest.raises(DataError, match=r"u\.jsonl, row 2, field 'label': expected a boolean label"):
        load_records(path, "unpaired")


def test_a_mapped_column_names_the_users_column_in_errors(tmp_path):
    path = jsonl(tmp_path / "r.jsonl", [{"q": "p", "outs": ["a", "b"], "marks": [1]}])
    with pytest.raises(DataError, match=r"row 1, field 'marks': 1 scores for 2 completions"):
        load_records(path, "ranked", columns={"prompt": "q", "completions": "outs", "scores": "marks"})


def test_pair_scores_from_a_file_and_duplicates(tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 2, "score_rejected": 1, "strength": 1},
            {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 2, "score_rejected": 1, "strength": 1}]
    result = load_records(jsonl(tmp_path / "p.jsonl", rows), "pair")
    assert result.records[0].strength == 1.0
    assert result.duplicates == 1


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("ranked", "pair", "holds ranked data (rows of prompt, completions, scores or ranks), not pair data "
                           "(rows of prompt, chosen, rejected); convert it with `alignlab convert ranked-to-pairs"),
        ("scored", "ranked", "convert it with `alignlab convert scored-to-ranked IN OUT`"),
        ("pairs", "unpaired", "`alignlab convert pairs-to-unpaired IN OUT`"),
        ("unpaired", "pair", "no converter makes pair data from unpaired data: a thumbs up or down"),
        ("unpaired", "sft", "holds unpaired data"),
        ("pairs", "negatives", "no converter makes negatives data from pair data"),
        ("scored", "unpaired", "scored-to-pairs IN OUT --rule best_worst`, then `alignlab convert pairs-to-unpaired"),
    ],
)
def test_a_file_of_another_shape_is_refused_with_a_converter(tmp_path, name, kind, words):
    path = feedback_files(tmp_path)[name]
    with pytest.raises(UserError) as e:
        load_records(path, kind)
    assert str(e.value).startswith(str(path))
    assert words in str(e.value)


def test_an_explicit_column_mapping_skips_the_shape_check(tmp_path):
    path = feedback_files(tmp_path)["pairs"]
    result = load_records(path, "negatives", columns={"rejected": "rejected"})
    assert [r.rejected for r in result.records] == ["3", "5"]


def test_unknown_kind(tmp_path):
    with pytest.raises(UserError, match="unknown data kind 'lists'; expected one of: sft, pair, joint"):
        load_records(feedback_files(tmp_path)["ranked"], "lists")  # type: ignore[arg-type]
