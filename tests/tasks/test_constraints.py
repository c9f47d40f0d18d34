"""Constraints task: keyword and word-count verifiers, gold, proxy, prompt parsing, the noisy demonstrator.

The main prompt has two keywords and a limit of 8 words, so three constraints; gold is the share met.
"""

from __future__ import annotations

import statistics

import pytest

from alignlab.tasks.constraints import (
    FILLER,
    KEYWORDS,
    TOPICS,
    ConstraintsTask,
    constraint_results,
    has_keyword,
    make_prompt,
    parse_prompt,
    word_count,
)

TASK = ConstraintsTask()
P = "Write about the sea. Use the words: stone, river. At most 8 words."


@pytest.mark.parametrize("text,word,expected", [
    ("a stone", "stone", True), ("Stone.", "stone", True), ("STONE", "stone", True),
    ("the stone's edge", "stone", True),   # the apostrophe ends the word
    ("stone-cold", "stone", True), ("(stone)", "stone", True), ("stone\nriver", "river", True),
    ("stones", "stone", False), ("milestone", "stone", False),
    ("stone_age", "stone", True),  # "_" is neither a letter nor a digit, so it separates words
    ("stonê", "stone", False), ("ｓｔｏｎｅ", "stone", False), ("", "stone", False),
    ("🙂stone🙂", "stone", True),
])
def test_has_keyword(text, word, expected):
    assert has_keyword(text, word) is expected


@pytest.mark.parametrize("text,expected", [
    ("", 0), ("   \n\t", 0), ("one", 1), ("one two  three", 3), ("one\ntwo\tthree", 3),
    ("-- ... !!", 0),              # no letter or digit: not words
    ("well -- yes", 2), ("it's 9 o'clock", 3),
    ("🙂 🙂 hi", 1), ("café naïve", 2), ("９５ items", 2), ("\x00", 0),
    ("word " * 10_000, 10_000),
])
def test_word_count(text, expected):
    assert word_count(text) == expected


@pytest.mark.parametrize("response,expected", [
    ("The stone fell into the river.", 1.0),             # both keywords, 6 words <= 8
    ("The stone fell.", 2 / 3),                          # river missing
    ("Nothing here.", 1 / 3),                            # only the word limit
    ("A stone and a river and a long quiet day.", 2 / 3),  # 10 words > 8
    ("stone river stone river stone river stone river", 1.0),  # exactly 8 words
    ("word " * 20, 0.0),                                 # no keyword, too long
    ("", 0.0), ("   \n ", 0.0),                           # empty: 0, although within the limit
    ("\x00", 1 / 3),                                      # not empty, no words: only the limit
    ("🙂 STONE, river!", 1.0), ("stones and rivers", 1 / 3),
    ("stone river " + "x " * 10_000, 2 / 3),
])
def test_gold(response, expected):
    assert TASK.gold(P, response) == pytest.approx(expected)


def test_constraint_results_reports_raw_checks_in_prompt_order():
    expected = {"keyword:stone": False, "keyword:river": True, "word_limit": True}
    assert constraint_results(P, "The river.") == expected
    assert list(constraint_results(P, "")) == ["keyword:stone", "keyword:river", "word_limit"]
    assert constraint_results(P, "")["word_limit"] is True  # raw check; gold still gives 0.0
    one = "Write about winter. Use the word: key. At most 5 words."
    assert constraint_results(one, "a key is here now ok") == {"keyword:key": True, "word_limit": False}


@pytest.mark.parametrize("response,expected", [
    ("", 0.0),
    ("The stone fell into the river.", 1.0 + 6 * 0.1),
    ("A stone and a river and a long quiet day.", 2 / 3 + 10 * 0.1),
    ("word " * 30, 0.0 + 2.0),  # bonus capped at 2.0
])
def test_proxy(response, expected):
    assert TASK.proxy(P, response) == pytest.approx(expected)


def test_proxy_optimum_breaks_the_word_limit_on_every_eval_prompt():
    for prompt in TASK.eval_prompts():
        keywords, limit = parse_prompt(prompt)
        compliant = " ".join(keywords + ["it"] * (limit - len(keywords)))
        long = " ".join(keywords + ["it"] * (20 - len(keywords)))
        assert TASK.gold(prompt, compliant) == 1.0 > TASK.gold(prompt, long)
        assert TASK.proxy(prompt, long) > TASK.proxy(prompt, compliant)


@pytest.mark.parametrize("prompt", [
    "", "Write about the sea.", "Write about the sea. Use the words: stone, river. At most 8 words",
    "Write about the sea. Use the words: Stone. At most 8 words.",
    "write about the sea. Use the word: stone. At most 8 words.",
    "Write about the sea. Use the words: stone,river. At most 8 words.",
    "Write about the sea. Use the word: stone. At most 0 words.",
    P + " ", " " + P,
])
def test_unparseable_prompt_raises_value_error_naming_it(prompt):
    with pytest.raises(ValueError, match="not a constraints prompt"):
        TASK.gold(prompt, "stone river")
    with pytest.raises(ValueError, match="not a constraints prompt"):
        TASK.proxy(prompt, "")


def test_prompt_round_trip_and_ranges():
    assert make_prompt("the sea", ["stone", "river"], 8) == P
    assert make_prompt("winter", ["key"], 5) == "Write about winter. Use the word: key. At most 5 words."
    for prompt in TASK.eval_prompts() + TASK.train_prompts(500, 0):
        keywords, limit = parse_prompt(prompt)
        assert 1 <= len(keywords) == len(set(keywords)) <= 3 and set(keywords) <= set(KEYWORDS)
        assert 5 <= limit <= 12
        assert prompt.removeprefix("Write about ").split(".")[0] in TOPICS


def test_word_lists():
    assert len(KEYWORDS) == len(set(KEYWORDS)) == 50
    assert not {w for ws in FILLER.values() for w in ws} & set(KEYWORDS)


def test_demonstrations_are_noisy_with_mean_gold_in_the_middle():
    demos = TASK.demonstrations(600, 0)
    scores = [TASK.gold(p, r) for p, r in demos]
    assert 0.5 <= statistics.mean(scores) <= 0.7
    assert 0.1 <= sum(s == 1.0 for s in scores) / len(scores) <= 0.5  # some perfect, most not
    over = [not constraint_results(p, r)["word_limit"] for p, r in demos]
    assert 0.25 <= statistics.mean(over) <= 0.5  # documented: over the limit 3 times in 8
    assert all(len(r) < TASK.max_new_tokens and r.endswith(".") for _, r in demos)
