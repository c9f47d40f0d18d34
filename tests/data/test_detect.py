"""Telling a row's shape from its columns, and the message for a method given the wrong shape."""

from __future__ import annotations

import pytest

from alignlab.data.detect import answer_list, detect_kind, shape_error
from alignlab.data.load import first_row_kind


@pytest.mark.parametrize(
    ("columns", "kind"),
    [
        (["prompt", "completions", "scores", "ranks"], "ranked"),
        (["prompt", "completions", "ranks"], "ranked"),
        (["prompt", "completion", "label"], "unpaired"),
        (["prompt", "completion", "score"], "scored"),
        (["prompt_chosen", "chosen", "prompt_rejected", "rejected"], "joint"),
        (["prompt", "chosen", "rejected", "score_chosen", "score_rejected"], "pair"),
        (["chosen", "rejected"], "pair"),
        (["prompt", "rejected"], "negatives"),
        (["prompt", "completion"], "sft"),
        (["messages"], "sft"),
        (["text", "id"], "sft"),
        (["question", "answer"], None),
        ([], None),
    ],
)
def test_detect_kind(columns, kind):
    assert detect_kind(dict.fromkeys(columns, "x")) == kind


def test_a_list_of_answer_objects_with_ranks_or_scores_is_a_ranked_row():
    nectar = {"prompt": "p", "answers": [{"answer": "a", "model": "m", "rank": 1}, {"answer": "b", "rank": 2}]}
    assert detect_kind(nectar) == "ranked"
    assert answer_list(nectar) == {"completions": "answers[].answer", "ranks": "answers[].rank"}
    # The text key is looked for in order (answer, completion, response, text); rank before score.
    both = {"prompt": "p", "outs": [{"text": "a", "response": "b", "score": 2, "rank": 1}]}
    assert answer_list(both) == {"completions": "outs[].response", "ranks": "outs[].rank"}
    # A CSV cell holds the list as JSON text.
    assert answer_list({"answers": '[{"completion": "a", "score": 1}]'}) == {
        "completions": "answers[].completion", "scores": "answers[].score"}
    # Not answer lists: messages, objects without a rank or score, two candidate lists (which one?).
    assert answer_list({"messages": [{"role": "user", "content": "hi"}]}) is None
    assert detect_kind({"prompt": "p", "answers": [{"answer": "a", "model": "m"}]}) is None
    assert answer_list({"a": [{"text": "x", "score": 1}], "b": [{"text": "y", "score": 2}]}) is None


def test_shape_error_names_the_converter():
    assert shape_error("ranked", "pair", "dpo") == (
        "dpo trains on pair data (rows of prompt, chosen, rejected), but the data holds ranked data (rows of "
        "prompt, completions, scores or ranks); convert it with `alignlab convert ranked-to-pairs IN OUT "
        "--rule best_worst`"
    )
    assert shape_error("pair", "unpaired", "kto").endswith("`alignlab convert pairs-to-unpaired IN OUT`")
    assert "`alignlab convert scored-to-ranked IN OUT`" in shape_error("scored", "ranked", "lipo")
    assert shape_error("ranked", "sft", "sft").endswith("convert it with `alignlab convert ranked-to-sft IN OUT`")
    assert shape_error("scored", "sft", "sft").endswith("convert it with `alignlab convert scored-to-sft IN OUT`")


def test_shape_error_says_when_no_converter_does():
    message = shape_error("unpaired", "pair", "dpo")
    assert message.endswith("no converter makes pair data from unpaired data: a thumbs up or down says nothing "
                            "about which of two responses to a prompt is better")
    assert shape_error("negatives", "ranked", "lipo").endswith("no converter makes ranked data from negatives data")
    assert shape_error(None, "pair", "dpo").endswith("but the data's columns match no known shape")
    assert shape_error("pair", "joint", "dpo").endswith("which loads as it is")


def test_first_row_kind_skips_unreadable_rows(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('not json\n{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2]}\n')
    assert first_row_kind(path) == "ranked"
    path.write_text("not json\n")
    assert first_row_kind(path) is None
