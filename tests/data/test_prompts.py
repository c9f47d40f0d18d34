"""Prompts alone, read out of rows of every shape that has one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.data.prompts import load_prompts
from alignlab.data.records import Message, PromptRecord
from alignlab.errors import DataError, UserError


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


USER = [{"role": "user", "content": "hi"}]


def test_the_prompt_of_every_shape(tmp_path):
    rows = [
        {"prompt": "alone"},
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        {"prompt": USER, "completion": [{"role": "assistant", "content": "yo"}]},
        {"prompt": "u", "completion": "c", "label": True},
        {"prompt": "s", "completion": "c", "score": 2},
        {"prompt": "r", "completions": ["a", "b"], "scores": [1, 2]},
        {"prompt": "n", "rejected": "bad"},
        {"chosen": "Q: two? A: 2", "rejected": "Q: two? A: 3"},  # implicit prompt, to a word boundary
        {"messages": [*USER, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"}]},
        {"messages": [{"role": "system", "content": "be brief"}, *USER]},  # no answer yet: all prompt
    ]
    path = jsonl(tmp_path / "mixed.jsonl", rows)
    got = load_prompts(path)
    hi = (Message("user", "hi"),)
    assert [p.prompt for p in got] == ["alone", "p", hi, "u", "s", "r", "n", "Q: two? A:", hi,
                                       (Message("system", "be brief"), *hi)]
    assert [p.row for p in got] == list(range(1, 11)) and {p.source for p in got} == {str(path)}


def test_only_the_prompt_is_read(tmp_path):
    """A row whose responses are bad (identical, empty) still gives its prompt."""
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same"},
                                        {"prompt": "q", "completion": "", "score": "not a number"}])
    assert load_prompts(path) == [PromptRecord("p", str(path), 1), PromptRecord("q", str(path), 2)]


def test_a_named_column_and_a_limit(tmp_path):
    path = jsonl(tmp_path / "q.jsonl", [{"question": f"q{i}"} for i in range(5)] + [{"other": 1}])
    assert [p.prompt for p in load_prompts(path, prompt_column="question", limit=2)] == ["q0", "q1"]
    with pytest.raises(DataError, match="row 6, field 'question': missing column 'question'"):
        load_prompts(path, prompt_column="question")


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(UserError, match=r"empty\.jsonl: no rows \(there are no prompts to answer\)"):
        load_prompts(path)


@pytest.mark.parametrize(("row", "words"), [
    ({"prompt": ""}, "row 2, field 'prompt': empty prompt"),
    ({"prompt": "  "}, "row 2, field 'prompt': empty prompt"),
    ({"prompt": []}, "row 2, field 'prompt': empty prompt"),
    ({"prompt": None}, "row 2, field 'prompt': missing value (null)"),
    ({"promt": "x"}, "row 2, field 'prompt': missing field 'prompt'"),
    ({"text": "just text"}, "row 2, field 'prompt': missing field 'prompt'"),
    ({"prompt_chosen": "a", "chosen": "b", "prompt_rejected": "c", "rejected": "d"},
     "row 2: a joint row holds two prompts"),
    ({"messages": [{"role": "assistant", "content": "no prompt"}]}, "row 2, field 'messages': empty prompt"),
    ({"messages": "a string"}, "row 2, field 'messages': expected a list of messages"),
])
def test_a_row_without_a_prompt_is_named(tmp_path, row, words):
    path = jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(DataError) as e:
        load_prompts(path)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert [issue.row for issue in e.value.issues] == [2]


def test_a_misspelt_prompt_column_is_pointed_out(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [{"promt": "x"}, {"promt": "y"}])
    with pytest.raises(DataError) as e:
        load_prompts(path)
    message = str(e.value)
    assert "'promt' looks like a misspelling of 'prompt'" in message
    assert "(and 1 more bad row; name the column that holds the prompts with prompt_column='NAME')" in message
