"""Dataset shapes seen in the wild: ranked answers inside a list of objects (Nectar), one response
per row rated on several attributes (HelpSteer2). Expected values are worked out from the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignlab.data import load_records
from alignlab.data.convert_cli import cmd_convert
from alignlab.data.records import RankedRecord, ScoredRecord
from alignlab.data.rows.formats import check_columns
from alignlab.errors import DataError, UserError, command_line
from tests.data.test_load_shapes import csv_file


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# Nectar: each answer an object with its text, the model that wrote it, and its rank (1 = best).
NECTAR = [
    {"prompt": "\n\nHuman: Say hi.\n\nAssistant:", "turns": 1,
     "answers": [{"answer": "Hello!", "model": "m1", "rank": 2}, {"answer": "Hi there.", "model": "m2", "rank": 1},
                 {"answer": "Go away.", "model": "m3", "rank": 3}]},
    {"prompt": "\n\nHuman: 2+2?\n\nAssistant:", "turns": 1,
     "answers": [{"answer": "5", "model": "m1", "rank": 2}, {"answer": "4", "model": "m2", "rank": 1}]},
]
NECTAR_COLUMNS = {"completions": "answers[].answer", "ranks": "answers[].rank"}


def test_ranks_read_from_a_list_of_answer_objects(tmp_path):
    path = jsonl(tmp_path / "nectar.jsonl", NECTAR)
    result = load_records(path, "ranked", columns=NECTAR_COLUMNS)
    # Ranks r become scores -r; the answers come best (rank 1) first.
    assert result.records == [
        RankedRecord(NECTAR[0]["prompt"], ("Hi there.", "Hello!", "Go away."), (-1.0, -2.0, -3.0), str(path), 1),
        RankedRecord(NECTAR[1]["prompt"], ("4", "5"), (-1.0, -2.0), str(path), 2),
    ]


def test_scores_read_from_a_list_of_answer_objects_higher_is_better(tmp_path):
    path = jsonl(tmp_path / "scored.jsonl", [
        {"prompt": "q", "responses": [{"text": "ok", "score": 7.5}, {"text": "best", "score": 9},
                                      {"text": "bad", "score": 2}]}])
    result = load_records(path, "ranked", columns={"completions": "responses[].text", "scores": "responses[].score"})
    assert result.records == [RankedRecord("q", ("best", "ok", "bad"), (9.0, 7.5, 2.0), str(path), 1)]


def test_a_csv_cell_holding_the_answer_list_as_json(tmp_path):
    answers = json.dumps([{"answer": "x", "rank": 2}, {"answer": "y", "rank": 1}])
    path = csv_file(tmp_path / "n.csv", ["prompt", "answers"], ["q", answers])
    result = load_records(path, "ranked", columns=NECTAR_COLUMNS)
    assert result.records == [RankedRecord("q", ("y", "x"), (-1.0, -2.0), str(path), 1)]


@pytest.mark.parametrize(
    ("answers", "field", "message"),
    [
        ([{"answer": "a", "rank": 1}, {"answer": "b", "model": "m"}], "answers[].rank",
         "item 2 of 'answers' has no 'rank' (it has: answer, model)"),
        ([{"answer": "a", "rank": 1}, "b"], "answers[].answer", "item 2 of 'answers' is not an object (got str)"),
        ("a and b", "answers[].answer", "expected a list of objects, got a string"),
        ([{"answer": "a", "rank": 1}, {"answer": "", "rank": 2}], "answers[].answer", "completion 2: empty response"),
        ([{"answer": "a", "rank": 1}, {"answer": "b", "rank": 1.5}], "answers[].rank",
         "rank 2: expected a whole number, 1 for the best, got 1.5"),
    ],
)
def test_a_bad_answer_list_names_file_row_and_path(tmp_path, answers, field, message):
    path = jsonl(tmp_path / "n.jsonl", [NECTAR[1], {"prompt": "q", "answers": answers}])
    with pytest.raises(DataError) as e:
        load_records(path, "ranked", columns=NECTAR_COLUMNS)
    assert str(e.value).startswith(f"{path}, row 2, field '{field}': {message}")


def test_a_missing_answer_list_is_named_with_its_mapping(tmp_path):
    path = jsonl(tmp_path / "n.jsonl", [{"prompt": "q", "answer": [{"answer": "a", "rank": 1}]}])
    with pytest.raises(DataError) as e:
        load_records(path, "ranked", columns=NECTAR_COLUMNS)
    assert str(e.value).startswith(
        f"{path}, row 1, field 'answers': missing column 'answers' (mapped to 'completions' as answers[].answer) "
        "(found: prompt, answer; did you mean 'answer'?)")


def test_nectar_rows_load_as_ranked_lists_without_a_mapping(tmp_path):
    path = jsonl(tmp_path / "nectar.jsonl", NECTAR)
    result = load_records(path, "ranked")
    assert result.records == load_records(path, "ranked", columns=NECTAR_COLUMNS).records
    assert result.records[0].completions == ("Hi there.", "Hello!", "Go away.")
    assert result.summary() == (f"loaded 2 ranked lists from {path}, reading completions from answers[].answer "
                                "and ranks from answers[].rank")


def test_nectar_as_parquet_lists_of_structs(tmp_path):
    path = tmp_path / "nectar.parquet"
    pq.write_table(pa.Table.from_pylist(NECTAR), path)
    assert load_records(path, "ranked").records[1].completions == ("4", "5")


def test_answer_objects_with_scores_are_found_too(tmp_path):
    path = jsonl(tmp_path / "s.jsonl", [{"prompt": "q", "responses": [{"text": "ok", "score": 7.5},
                                                                     {"text": "best", "score": 9}]}])
    result = load_records(path, "ranked")
    assert result.records == [RankedRecord("q", ("best", "ok"), (9.0, 7.5), str(path), 1)]
    assert result.detected == {"completions": "responses[].text", "scores": "responses[].score"}


def test_a_mapped_prompt_still_finds_the_answer_list(tmp_path):
    path = jsonl(tmp_path / "n.jsonl", [{"question": "q", "answers": [{"answer": "a", "rank": 2},
                                                                     {"answer": "b", "rank": 1}]}])
    result = load_records(path, "ranked", columns={"prompt": "question"})
    assert result.records == [RankedRecord("q", ("b", "a"), (-1.0, -2.0), str(path), 1)]


def test_nectar_converts_to_pairs_in_one_command(tmp_path, capsys):
    path = jsonl(tmp_path / "nectar.jsonl", NECTAR)
    out = tmp_path / "pairs.jsonl"
    assert cmd_convert(["ranked-to-pairs", str(path), str(out)]) == 0
    # best_worst: rank 1 against the last rank of each list.
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prompt": NECTAR[0]["prompt"], "chosen": "Hi there.", "rejected": "Go away.", "score_chosen": -1.0,
         "score_rejected": -3.0},
        {"prompt": NECTAR[1]["prompt"], "chosen": "4", "rejected": "5", "score_chosen": -1.0, "score_rejected": -2.0},
    ]
    assert "reading completions from answers[].answer and ranks from answers[].rank" in capsys.readouterr().out


def test_nectar_given_to_a_pair_method_names_the_converter(tmp_path):
    path = jsonl(tmp_path / "nectar.jsonl", NECTAR)
    with pytest.raises(UserError, match="holds ranked data .*`alignlab convert ranked-to-pairs IN OUT"):
        load_records(path, "pair")


# HelpSteer2: one response per row, rated 0-4 on five attributes.
HELPSTEER = [
    {"prompt": "p1", "response": "a", "helpfulness": 3, "correctness": 3, "coherence": 4, "complexity": 1,
     "verbosity": 1},
    {"prompt": "p1", "response": "b", "helpfulness": 1, "correctness": 2, "coherence": 4, "complexity": 1,
     "verbosity": 2},
]
WEIGHTED = "0.65*helpfulness + 0.8*correctness + 0.45*coherence"


def test_a_score_as_a_weighted_sum_of_attributes(tmp_path):
    path = jsonl(tmp_path / "hs.jsonl", HELPSTEER)
    result = load_records(path, "scored", columns={"completion": "response", "score": WEIGHTED})
    # a: 0.65*3 + 0.8*3 + 0.45*4 = 1.95 + 2.4 + 1.8 = 6.15; b: 0.65*1 + 0.8*2 + 0.45*4 = 0.65 + 1.6 + 1.8 = 4.05
    assert [(r.prompt, r.completion) for r in result.records] == [("p1", "a"), ("p1", "b")]
    assert [r.score for r in result.records] == [pytest.approx(6.15, abs=1e-12), pytest.approx(4.05, abs=1e-12)]


def test_a_weighted_sum_with_a_negative_term_over_csv_text(tmp_path):
    path = csv_file(tmp_path / "hs.csv", ["prompt", "response", "helpfulness", "verbosity"], ["p", "a", "4", "2"])
    result = load_records(path, "scored", columns={"completion": "response", "score": "1*helpfulness - 0.5*verbosity"})
    # 1*4 - 0.5*2 = 3, exactly.
    assert result.records == [ScoredRecord("p", "a", 3.0, str(path), 1)]


def test_a_bad_term_of_a_weighted_sum_names_its_column(tmp_path):
    path = jsonl(tmp_path / "hs.jsonl", [HELPSTEER[0], {**HELPSTEER[1], "correctness": "n/a"}])
    with pytest.raises(DataError) as e:
        load_records(path, "scored", columns={"completion": "response", "score": WEIGHTED})
    assert str(e.value).startswith(
        f"{path}, row 2, field 'correctness': expected a number, got the string 'n/a' (a term of the sum mapped "
        f"to 'score': {WEIGHTED})")


def test_a_misspelt_term_of_a_weighted_sum(tmp_path):
    path = jsonl(tmp_path / "hs.jsonl", HELPSTEER[:1])
    with pytest.raises(DataError) as e:
        load_records(path, "scored", columns={"completion": "response", "score": "1*helpfulness + 1*corectness"})
    assert str(e.value).startswith(
        f"{path}, row 1, field 'corectness': missing column 'corectness' (a term of the sum mapped to 'score': "
        "1*helpfulness + 1*corectness) (found: prompt, response, helpfulness, correctness, coherence, complexity, "
        "verbosity; did you mean 'correctness'?)")


@pytest.mark.parametrize(
    ("kind", "columns", "words"),
    [
        ("ranked", {"prompt": "answers[].answer"}, "columns: 'prompt' is read from one column; a path into a list "
                                                   "like 'answers[].answer' is for completions, scores, ranks"),
        ("ranked", {"ranks": "answers[]"}, "columns: cannot read 'answers[]' (for 'ranks') as a path into a list; "
                                           "write LIST[].KEY, like answers[].rank"),
        ("ranked", {"completions": "a[].b[].c"}, "as a path into a list"),
        ("scored", {"completion": "2*response"}, "columns: 'completion' is read from one column; a weighted sum "
                                                 "like '2*response' is for score"),
        ("scored", {"score": "0.5*helpfulness +"}, "columns: cannot read '0.5*helpfulness +' (for 'score') as a "
                                                   "weighted sum; write WEIGHT*COLUMN terms joined by + or -"),
        ("scored", {"score": "helpfulness*0.5"}, "as a weighted sum"),
        ("scored", {"score": "0.5*helpfulness 0.5*correctness"}, "as a weighted sum"),
        ("scored", {"score": "1*helpfulness + 2*helpfulness"},
         "columns: the sum for 'score' names helpfulness more than once"),
    ],
)
def test_malformed_paths_and_sums_are_refused_before_reading(kind, columns, words):
    with pytest.raises(UserError) as e:
        check_columns(kind, columns)
    assert words in str(e.value)


def test_helpsteer_to_pairs_in_one_command_merging_a_repeated_response(tmp_path, capsys):
    # Response a to p1 is rated twice: 6.15 (as above) and, with helpfulness 4, 0.65*4 + 2.4 + 1.8 = 6.8.
    rows = [*HELPSTEER, {**HELPSTEER[0], "helpfulness": 4}]
    path, out = jsonl(tmp_path / "hs.jsonl", rows), tmp_path / "pairs.jsonl"
    assert cmd_convert(["scored-to-pairs", str(path), str(out), "--columns.completion", "response",
                        "--columns.score", WEIGHTED]) == 0
    (pair,) = [json.loads(line) for line in out.read_text().splitlines()]
    # a's score is the mean (6.15 + 6.8) / 2 = 6.475; b's is 4.05.
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ("p1", "a", "b")
    assert pair["score_chosen"] == pytest.approx(6.475, abs=1e-12)
    assert pair["score_rejected"] == pytest.approx(4.05, abs=1e-12)
    assert capsys.readouterr().out.splitlines() == [
        f"loaded 3 scored responses from {path}", f"wrote 1 pair to {out}",
        "merged 1 repeated response into an earlier one with the same prompt and text (a merged response's score "
        "is the mean of its scores)"]


# ---------------------------------------------------------------- every row bad: no --skip-invalid


@pytest.fixture
def from_command_line():
    """The hints as the command line shows them (flags); a Python caller gets ``columns={...}``."""
    with command_line():
        yield


def test_a_csv_with_other_columns_is_told_the_column_mapping(from_command_line, tmp_path):
    path = csv_file(tmp_path / "qa.csv", ["question", "answer", "good"], ["q1", "a1", "1"], ["q2", "a2", "0"])
    with pytest.raises(DataError) as e:
        load_records(path, "pair")
    assert str(e.value) == (
        f"{path}, row 1, field 'chosen': missing field 'chosen' (found: question, answer, good) (and 1 more bad "
        "row; every row is bad: if the data holds prompt, chosen and rejected under other names, map them with "
        "the columns option, e.g. --columns.prompt NAME --columns.chosen NAME --columns.rejected NAME (in YAML: columns: "
        "{prompt: NAME, chosen: NAME, rejected: NAME}))")
    with pytest.raises(UserError) as e:
        load_records(path, "pair", skip_invalid=True)
    assert "--skip-invalid" not in str(e.value)
    assert str(e.value).endswith("e.g. --columns.prompt NAME --columns.chosen NAME --columns.rejected NAME (in "
                                 "YAML: columns: {prompt: NAME, chosen: NAME, rejected: NAME})")


def test_answer_objects_of_unknown_keys_are_told_the_path_mapping(from_command_line, tmp_path):
    path = jsonl(tmp_path / "r.jsonl", [{"prompt": "q", "outs": [{"content": "a", "rating": 2},
                                                                {"content": "b", "rating": 1}]}] * 2)
    with pytest.raises(DataError) as e:
        load_records(path, "ranked")
    message = str(e.value)
    assert "--skip-invalid" not in message
    assert message.endswith(
        "map them with the columns option, e.g. --columns.completions NAME --columns.scores NAME (in YAML: columns: "
        "{completions: NAME, scores: NAME}); completions and their scores or ranks can be read from a list of "
        "objects, like --columns.completions 'outs[].content' --columns.scores 'outs[].rating' (scores: higher is "
        "better; ranks: 1 is best))")


def test_helpsteer_without_a_mapping_is_told_of_weighted_sums(from_command_line, tmp_path):
    path = jsonl(tmp_path / "hs.jsonl", HELPSTEER)
    with pytest.raises(DataError) as e:
        load_records(path, "scored")
    message = str(e.value)
    assert "--skip-invalid" not in message and "misspelling" not in message
    assert message.endswith(
        "(and 1 more bad row; every row is bad: if the data holds completion and score under other names, map "
        "them with the columns option, e.g. --columns.completion NAME --columns.score NAME (in YAML: columns: {completion: "
        "NAME, score: NAME}); a score can be a weighted sum of number columns, like "
        "--columns.score '0.5*helpfulness + 0.5*correctness')")


def test_every_row_bad_for_another_reason_is_not_offered_skipping(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}] * 2)
    with pytest.raises(DataError) as e:
        load_records(path, "pair")
    assert str(e.value) == (f"{path}, row 1, field 'rejected': chosen and rejected are identical (and 1 more bad "
                            "row; every row is bad: fix the data (skipping bad rows would leave none))")


def test_some_rows_bad_still_offers_skipping(from_command_line, tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                       {"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(DataError, match=r"row 2, .*\(pass --skip-invalid to skip bad rows\)$"):
        load_records(path, "pair")


def test_a_python_caller_is_told_the_mapping_as_a_columns_argument(tmp_path):
    path = csv_file(tmp_path / "qa.csv", ["question", "answer", "good"], ["q1", "a1", "1"], ["q2", "a2", "0"])
    with pytest.raises(DataError) as e:
        load_records(path, "pair")
    assert str(e.value).endswith("map them with the columns option, e.g. columns={'prompt': 'NAME', 'chosen': "
                                 "'NAME', 'rejected': 'NAME'} (in YAML: columns: {prompt: NAME, chosen: NAME, "
                                 "rejected: NAME}))")
    assert "--" not in str(e.value)


@pytest.mark.parametrize(
    ("kind", "flags"),
    [
        ("pair", "--columns.prompt NAME --columns.chosen NAME --columns.rejected NAME"),
        ("sft", "--columns.prompt NAME --columns.completion NAME"),
        ("unpaired", "--columns.prompt NAME --columns.completion NAME --columns.label NAME"),
        ("negatives", "--columns.prompt NAME --columns.rejected NAME"),
        # A joint row takes one prompt per response, so both are named (never 'prompt' beside them).
        ("joint", "--columns.prompt_chosen NAME --columns.chosen NAME --columns.prompt_rejected NAME "
                  "--columns.rejected NAME"),
    ],
)
def test_the_mapping_hint_names_every_field_of_the_kind(from_command_line, tmp_path, kind, flags):
    path = jsonl(tmp_path / "x.jsonl", [{"q": "x", "good": "a", "bad": "b"}])
    with pytest.raises(DataError) as e:
        load_records(path, kind)
    assert f"map them with the columns option, e.g. {flags} (in YAML: columns: {{" in str(e.value)
