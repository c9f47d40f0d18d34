"""Rows of the joint, unpaired, scored, ranked and negatives shapes, and pair scores: accepted
rows, and every way a row can be bad (each issue names the source, the row and the column)."""

from __future__ import annotations

import math

import pytest

from alignlab.data.records import (
    JointRecord,
    Message,
    NegativeRecord,
    PairRecord,
    RankedRecord,
    ScoredRecord,
    UnpairedRecord,
)
from alignlab.data.rows.formats import check_columns, to_record
from alignlab.errors import UserError

SRC = "feedback.jsonl"


def convert(data, kind, columns=None, strict_order=False):
    return to_record(data, kind, source=SRC, row=7, columns=columns, strict_order=strict_order)


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def conv(*pairs: tuple[str, str]) -> tuple[Message, ...]:
    return tuple(Message(r, c) for r, c in pairs)


# ---------------------------------------------------------------- accepted rows


def test_ranked_scores_sorted_best_first():
    rec = convert({"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 3, 2]}, "ranked")
    assert rec == RankedRecord("p", ("b", "c", "a"), (3.0, 2.0, 1.0), SRC, 7)


def test_ranked_ranks_become_negative_scores():
    rec = convert({"prompt": "p", "completions": ["a", "b", "c"], "ranks": [2, 3, 1]}, "ranked")
    assert rec == RankedRecord("p", ("c", "a", "b"), (-1.0, -2.0, -3.0), SRC, 7)


def test_ranked_ties_keep_the_data_order():
    rec = convert({"prompt": "p", "completions": ["a", "b", "c", "d"], "scores": [1, 5, 1, 5]}, "ranked")
    assert rec.completions == ("b", "d", "a", "c")
    assert rec.scores == (5.0, 5.0, 1.0, 1.0)


def test_ranked_with_scores_and_agreeing_competition_ranks_keeps_scores():
    # The testbed's layout: equal scores share the lower rank (1, 2, 2, 4).
    row = {"prompt": "p", "completions": ["a", "b", "c", "d"], "scores": [0.9, 0.5, 0.5, 0.1],
           "ranks": [1, 2, 2, 4]}
    rec = convert(row, "ranked")
    assert rec.scores == (0.9, 0.5, 0.5, 0.1)
    assert rec.completions == ("a", "b", "c", "d")


def test_ranked_strict_order_accepts_distinct_scores():
    rec = convert({"prompt": "p", "completions": ["a", "b"], "scores": [0, 1]}, "ranked", strict_order=True)
    assert rec.completions == ("b", "a")


def test_ranked_conversations_and_csv_style_json_lists():
    row = {"prompt": [msg("user", "q")], "completions": [[msg("assistant", "x")], [msg("assistant", "y")]],
           "scores": [0.5, 1.5]}
    rec = convert(row, "ranked")
    assert rec.prompt == conv(("user", "q"))
    assert rec.completions == (conv(("assistant", "y")), conv(("assistant", "x")))
    csv_row = {"prompt": "p", "completions": '["a", "b"]', "scores": "[2, \"3.5\"]"}
    assert convert(csv_row, "ranked").scores == (3.5, 2.0)


def test_ranked_empty_string_prompt_fits_conversations():
    row = {"prompt": "", "completions": [[msg("assistant", "x")], [msg("assistant", "y")]], "ranks": [1, 2]}
    assert convert(row, "ranked").prompt == ()


def test_unpaired_labels():
    for label, expected in [(True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False),
                            ("1", True), ("0", False)]:
        rec = convert({"prompt": "p", "completion": "c", "label": label}, "unpaired")
        assert rec == UnpairedRecord("p", "c", expected, SRC, 7)


def test_scored_numbers_and_numeric_strings():
    assert convert({"prompt": "p", "completion": "c", "score": 3}, "scored") == ScoredRecord("p", "c", 3.0, SRC, 7)
    assert convert({"prompt": "p", "completion": "c", "score": " -0.25 "}, "scored").score == -0.25


def test_negatives():
    rec = convert({"prompt": "p", "rejected": "bad", "extra": 1}, "negatives")
    assert rec == NegativeRecord("p", "bad", SRC, 7)


def test_joint_with_a_prompt_each():
    row = {"prompt_chosen": "q1", "chosen": "a", "prompt_rejected": "q2", "rejected": "a"}
    assert convert(row, "joint") == JointRecord("q1", "a", "q2", "a", SRC, 7)


def test_joint_with_a_shared_prompt_reads_pair_rows():
    row = {"prompt": [msg("user", "q")], "chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")]}
    rec = convert(row, "joint")
    assert rec.prompt_chosen == rec.prompt_rejected == conv(("user", "q"))
    assert (rec.chosen, rec.rejected) == (conv(("assistant", "a")), conv(("assistant", "b")))


def test_pair_scores_and_strength():
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 8, "score_rejected": 6.5, "strength": 0.75}
    assert convert(row, "pair") == PairRecord("p", "a", "b", SRC, 7, 8.0, 6.5, 0.75)
    plain = convert({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": None,
                     "score_rejected": None}, "pair")
    assert (plain.score_chosen, plain.score_rejected, plain.strength) == (None, None, None)


def test_pair_scores_are_not_taken_for_a_lost_prompt():
    rec = convert({"chosen": "x a", "rejected": "x b", "score_chosen": 1, "score_rejected": 0}, "pair")
    assert (rec.prompt, rec.chosen, rec.score_chosen) == ("x", " a", 1.0)


def test_column_mapping_for_new_fields():
    columns = {"completions": "responses", "scores": "ratings", "prompt": "question"}
    rec = convert({"question": "q", "responses": ["a", "b"], "ratings": [1, 2]}, "ranked", columns=columns)
    assert rec.completions == ("b", "a")
    columns = {"label": "thumbs_up", "completion": "answer"}
    rec = convert({"prompt": "q", "answer": "a", "thumbs_up": False}, "unpaired", columns=columns)
    assert rec.label is False
    rec = convert({"prompt": "q", "chosen": "a", "rejected": "b", "w": 2, "l": 1}, "pair",
                  columns={"score_chosen": "w", "score_rejected": "l"})
    assert (rec.score_chosen, rec.score_rejected) == (2.0, 1.0)


def test_check_columns_knows_the_new_fields():
    assert check_columns("ranked", {"scores": "s", "ranks": "r"}) == {"scores": "s", "ranks": "r"}
    assert check_columns("pair", {"strength": "p"}) == {"strength": "p"}
    with pytest.raises(UserError, match="unknown field 'label' for pair data"):
        check_columns("pair", {"label": "x"})
    with pytest.raises(UserError, match="'prompt' .*or 'prompt_chosen' and 'prompt_rejected', not both"):
        check_columns("joint", {"prompt": "q", "prompt_chosen": "qc"})
    with pytest.raises(UserError, match="unknown data kind 'list'"):
        check_columns("list", None)


# ---------------------------------------------------------------- bad rows


def P(**row):  # noqa: N802 - reads as a row literal in the table below
    return {"prompt": "p", **row}


NAN, INF = math.nan, math.inf
# (kind, row, the column at fault, words the message must hold, strict_order)
BAD = {
    # ranked
    "scores-shorter": ("ranked", P(completions=["a", "b", "c"], scores=[1, 2]), "scores", "2 scores for 3 completions"),
    "ranks-longer": ("ranked", P(completions=["a", "b"], ranks=[1, 2, 3]), "ranks", "3 ranks for 2 completions"),
    "score-nan": ("ranked", P(completions=["a", "b"], scores=[1, NAN]), "scores", "score 2: not a number (NaN)"),
    "score-inf": ("ranked", P(completions=["a", "b"], scores=[INF, 1]), "scores", "score 1: not a finite number"),
    "score-string": ("ranked", P(completions=["a", "b"], scores=[1, "high"]), "scores", "got the string 'high'"),
    "score-bool": ("ranked", P(completions=["a", "b"], scores=[True, 0]), "scores", "got a boolean (true)"),
    "score-null": ("ranked", P(completions=["a", "b"], scores=[1, None]), "scores", "score 2: missing value"),
    "score-list": ("ranked", P(completions=["a", "b"], scores=[1, [2]]), "scores", "expected a number, got list"),
    "scores-not-list": ("ranked", P(completions=["a", "b"], scores=3), "scores", "expected a list of scores"),
    "one-completion": ("ranked", P(completions=["a"], scores=[1]), "completions", "at least 2 completions, got 1"),
    "no-completions": ("ranked", P(completions=[], scores=[]), "completions", "at least 2 completions, got 0"),
    "completions-string": ("ranked", P(completions="a", scores=[1]), "completions", "got a string"),
    "completions-one-conversation": ("ranked", P(completions=[msg("assistant", "a"), msg("assistant", "b")],
                                                 scores=[1, 2]), "completions", "got one conversation"),
    "completion-empty": ("ranked", P(completions=["a", "  "], scores=[1, 2]), "completions",
                         "completion 2: empty response"),
    "completion-null": ("ranked", P(completions=["a", None], scores=[1, 2]), "completions",
                        "completion 2: missing value"),
    "completions-mixed": ("ranked", P(completions=["a", [msg("assistant", "b")]], scores=[1, 2]), "completions",
                          "completion 1 is a string but completion 2 is a list of messages"),
    "prompt-kind": ("ranked", {"prompt": "p", "completions": [[msg("assistant", "a")], [msg("assistant", "b")]],
                               "scores": [1, 2]}, "prompt", "mixed kinds"),
    "no-scores-or-ranks": ("ranked", P(completions=["a", "b"], rankings=[1, 2]), "scores",
                           "need 'scores' or 'ranks'"),
    "rank-fraction": ("ranked", P(completions=["a", "b"], ranks=[1, 1.5]), "ranks", "rank 2: expected a whole number"),
    "rank-negative": ("ranked", P(completions=["a", "b"], ranks=[-1, 1]), "ranks", "rank 1: expected a whole number"),
    "scores-ranks-disagree": ("ranked", P(completions=["a", "b", "c"], scores=[3, 2, 1], ranks=[1, 3, 2]), "ranks",
                              "scores and ranks disagree: completions 2 and 3 score 2 and 1 but rank 3 and 2"),
    "scores-tie-ranks-do-not": ("ranked", P(completions=["a", "b"], scores=[1, 1], ranks=[1, 2]), "ranks",
                                "scores and ranks disagree"),
    "strict-tied-scores": ("ranked", P(completions=["a", "b", "c"], scores=[0.5, 1, 0.5]), "scores",
                           "completions 1 and 3 tie (score 0.5); this method needs a strict order", True),
    "strict-duplicate-ranks": ("ranked", P(completions=["a", "b", "c"], ranks=[1, 2, 2]), "ranks",
                               "completions 2 and 3 tie (rank 2); this method needs a strict order", True),
    # unpaired
    "label-yes": ("unpaired", P(completion="c", label="yes"), "label", "expected a boolean label"),
    "label-two": ("unpaired", P(completion="c", label=2), "label", "got 2"),
    "label-half": ("unpaired", P(completion="c", label=0.5), "label", "got 0.5"),
    "label-null": ("unpaired", P(completion="c", label=None), "label", "got null"),
    "label-missing": ("unpaired", P(completion="c", lable=True), "label",
                      "missing field 'label' (found: prompt, completion, lable; 'lable' looks like a misspelling"),
    "unpaired-empty": ("unpaired", P(completion=" ", label=True), "completion", "empty response"),
    "unpaired-no-prompt": ("unpaired", {"completion": "c", "label": True}, "prompt", "missing field 'prompt'"),
    # scored
    "score-nan-scalar": ("scored", P(completion="c", score=NAN), "score", "not a number (NaN)"),
    "score-inf-scalar": ("scored", P(completion="c", score=-INF), "score", "not a finite number (-inf)"),
    "score-true": ("scored", P(completion="c", score=True), "score", "got a boolean (true)"),
    "score-word": ("scored", P(completion="c", score="good"), "score", "got the string 'good'"),
    "score-nan-string": ("scored", P(completion="c", score="nan"), "score", "not a number (NaN)"),
    "score-missing": ("scored", P(completion="c"), "score", "missing field 'score'"),
    "scored-empty": ("scored", P(completion="", score=1), "completion", "empty response"),
    # joint
    "joint-both-prompts": ("joint", P(prompt_chosen="q", chosen="a", prompt_rejected="r", rejected="b"), "prompt",
                           "both 'prompt' and 'prompt_chosen'"),
    "joint-half-split": ("joint", {"prompt_chosen": "q", "chosen": "a", "rejected": "b"}, "prompt_rejected",
                         "missing field 'prompt_rejected'"),
    "joint-no-prompt": ("joint", {"chosen": "a", "rejected": "b"}, "prompt_chosen",
                        "joint rows need 'prompt_chosen' and 'prompt_rejected', or a 'prompt'"),
    "joint-identical": ("joint", {"prompt_chosen": "q", "chosen": "a", "prompt_rejected": "q", "rejected": "a"},
                        "rejected", "identical, and so are their prompts"),
    "joint-mixed": ("joint", {"prompt_chosen": "q", "chosen": [msg("assistant", "a")], "prompt_rejected": "r",
                              "rejected": "b"}, "rejected", "mixed kinds"),
    "joint-empty": ("joint", P(chosen="a", rejected=""), "rejected", "empty response"),
    # pair scores
    "pair-one-score": ("pair", P(chosen="a", rejected="b", score_chosen=1), "score_rejected",
                       "'score_chosen' is given without 'score_rejected'"),
    "pair-score-nan": ("pair", P(chosen="a", rejected="b", score_chosen=NAN, score_rejected=1), "score_chosen",
                       "not a number (NaN)"),
    "pair-score-bool": ("pair", P(chosen="a", rejected="b", score_chosen=1, score_rejected=False),
                        "score_rejected", "got a boolean (false)"),
    "pair-strength-high": ("pair", P(chosen="a", rejected="b", strength=1.5), "strength",
                           "preference strength must be in [0, 1], got 1.5"),
    "pair-strength-negative": ("pair", P(chosen="a", rejected="b", strength=-0.1), "strength", "got -0.1"),
    "pair-strength-nan": ("pair", P(chosen="a", rejected="b", strength=NAN), "strength", "not a number (NaN)"),
    "pair-strength-word": ("pair", P(chosen="a", rejected="b", strength="sure"), "strength", "got the string"),
    # negatives
    "negative-empty": ("negatives", P(rejected="\n"), "rejected", "empty response"),
    "negative-null": ("negatives", P(rejected=None), "rejected", "missing value (null)"),
    "negative-no-prompt": ("negatives", {"rejected": "r"}, "prompt", "missing field 'prompt'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_row(case):
    kind, row, column, words, *strict = BAD[case]
    issues = convert(row, kind, strict_order=bool(strict))
    assert isinstance(issues, list), issues
    assert [(i.source, i.row) for i in issues] == [(SRC, 7)] * len(issues)
    at_fault = [i for i in issues if i.field == column]
    assert at_fault, issues
    assert any(words in i.message for i in at_fault), [str(i) for i in issues]
    assert str(at_fault[0]).startswith(f"{SRC}, row 7, field '{column}': ")


def test_ties_are_fine_without_strict_order():
    assert isinstance(convert(P(completions=["a", "b"], ranks=[1, 1]), "ranked"), RankedRecord)


def test_every_bad_field_of_a_row_is_reported():
    issues = convert({"prompt": 3, "completions": ["a"], "scores": "x"}, "ranked")
    assert {i.field for i in issues} == {"prompt", "completions", "scores"}
    issues = convert({"prompt": "p", "completion": "", "label": "maybe"}, "unpaired")
    assert {i.field for i in issues} == {"completion", "label"}


def test_issues_name_the_users_columns():
    issues = convert({"q": "p", "outs": ["a", "b"], "marks": [1, NAN]}, "ranked",
                     columns={"prompt": "q", "completions": "outs", "scores": "marks"})
    assert [(i.field, i.message) for i in issues] == [("marks", "score 2: not a number (NaN)")]
    issues = convert({"prompt": "p", "chosen": "a", "rejected": "b"}, "pair", columns={"strength": "conf"})
    assert [i.field for i in issues] == ["conf"]
    assert "missing column 'conf' (mapped to 'strength')" in issues[0].message
