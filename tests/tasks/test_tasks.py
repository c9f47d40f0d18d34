"""Properties every task has: the registry, determinism, a fixed held-out eval set, total rewards."""

from __future__ import annotations

import math

import pytest

from alignlab.errors import UserError
from alignlab.tasks import (
    TASKS,
    ArithmeticTask,
    ChainSumTask,
    ConstraintsTask,
    SentimentTask,
    Task,
    get_task,
    task_names,
    task_options,
)
from alignlab.tasks.chainsum import parse_prompt as parse_chainsum
from alignlab.tasks.chainsum import solution as chainsum_solution

NAMES = ["arithmetic", "chainsum", "constraints", "sentiment"]
# (lowest, highest) value each reward can take, from the module docstrings.
GOLD_RANGE = {"arithmetic": (0.0, 1.0), "sentiment": (-1.0, 1.0), "constraints": (0.0, 1.0), "chainsum": (0.0, 1.0)}
PROXY_RANGE = {"arithmetic": (0.0, 1.5), "sentiment": (-1.0, 1.5), "constraints": (0.0, 3.0), "chainsum": (0.0, 1.0)}
# Two responses with the same gold, the second longer; the proxy must prefer it.
SAME_GOLD = {
    "arithmetic": ("7", "7 ok!"),
    "sentiment": (" was great.", " was great and we told our friends about it."),
    "constraints": ("Nothing.", "Nothing at all, really."),  # no keyword, within every limit (>= 5 words)
    # per prompt: the bare right answer, and the same answer worked out (the proxy reads the steps)
    "chainsum": lambda prompt: (str(sum(parse_chainsum(prompt))), chainsum_solution(parse_chainsum(prompt))),
}
ODD_RESPONSES = [
    "", " ", "\n\n", "\t", "\x00", "９５", "95", " 95\n", "🙂🎉", "café naïve", "stone", "not bad",
    "line one\nline two", "\u202e\u200b", "\ud800", "a" * 200_000, "9" * 50_000, "🙂" * 10_000,
]


@pytest.fixture(scope="module", params=NAMES)
def task(request) -> Task:
    return get_task(request.param)


def test_registry():
    assert task_names() == NAMES
    assert {n: c.name for n, c in TASKS.items()} == {n: n for n in NAMES}
    assert isinstance(get_task("arithmetic"), ArithmeticTask)
    assert isinstance(get_task("sentiment"), SentimentTask)
    assert isinstance(get_task("constraints"), ConstraintsTask)
    assert isinstance(get_task("chainsum"), ChainSumTask)
    assert task_options("arithmetic") == {"max_operand": 49, "partial_credit": False, "num_eval": 200,
                                            "sloppy_rate": 0.4}


def test_attributes(task):
    assert task.max_new_tokens == {"arithmetic": 6, "sentiment": 64, "constraints": 80, "chainsum": 48}[task.name]
    assert task.description and "\n" not in task.description
    assert repr(task).startswith(type(task).__name__ + "(")


@pytest.mark.parametrize("typo,suggestion", [("arithmetik", "arithmetic"), ("Sentiment", "sentiment"),
                                             ("constraint", "constraints"), ("chainsums", "chainsum")])
def test_unknown_task_lists_names_and_suggests(typo, suggestion):
    with pytest.raises(UserError, match=f"did you mean '{suggestion}'") as info:
        get_task(typo)
    assert "known: arithmetic, chainsum, constraints, sentiment" in str(info.value)


def test_unknown_task_without_close_match():
    with pytest.raises(UserError) as info:
        get_task("zzz")
    assert "did you mean" not in str(info.value)
    assert "known: arithmetic, chainsum, constraints, sentiment" in str(info.value)


def test_options_pass_through():
    task = get_task("arithmetic", partial_credit=True, max_operand=50, num_eval=100)
    assert task.options() == {"max_operand": 50, "partial_credit": True, "sloppy_rate": 0.4, "num_eval": 100}
    assert task.gold("37+58=", "94") == 0.5
    assert len(get_task("sentiment", num_eval=50).eval_prompts()) == 50


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="unknown option 'partial'.*options: max_operand, partial_credit"):
        get_task("arithmetic", partial=True)
    with pytest.raises(UserError, match="task 'sentiment': num_eval must be at least 1"):
        get_task("sentiment", num_eval=0)


def test_eval_set_is_fixed_distinct_and_of_the_documented_size(task):
    prompts = task.eval_prompts()
    assert len(prompts) == len(set(prompts)) == 200
    assert get_task(task.name).eval_prompts() == prompts
    prompts.clear()  # callers get a copy
    assert len(task.eval_prompts()) == 200
    assert len(get_task(task.name, num_eval=37).eval_prompts()) == 37


def test_eval_set_pinned():
    """The eval set must not change between versions or machines: a change here invalidates results."""
    assert get_task("arithmetic").eval_prompts()[:3] == ["14+3=", "21+3=", "44+28="]
    assert get_task("sentiment").eval_prompts()[:2] == [
        "The dialogue of this podcast", "The gym at the Park Inn"]
    assert get_task("constraints").eval_prompts()[0] == (
        "Write about the moon. Use the words: ring, bread, orange. At most 5 words.")
    assert get_task("chainsum").eval_prompts()[:3] == ["12+24+18+12=", "3+8+19=", "20+21+12="]


def test_deterministic_in_n_and_seed(task):
    fresh = get_task(task.name)
    for method in ("train_prompts", "demonstrations", "corpus"):
        a, b = getattr(task, method), getattr(fresh, method)
        assert a(50, 1) == b(50, 1)
        assert a(50, 1) != a(50, 2)
        assert len(a(50, 1)) == 50 and a(0, 1) == []


def test_no_eval_prompt_in_anything_used_for_training(task):
    held = set(task.eval_prompts())
    for seed in (0, 1):
        assert not held & set(task.train_prompts(5000, seed))
        assert not held & {p for p, _ in task.demonstrations(1000, seed)}
    for doc in task.corpus(200, 0):
        for line in doc.split("\n"):
            if task.name in ("arithmetic", "chainsum"):  # a line is the problem, "=" and its answer
                assert line.split("=")[0] + "=" not in held
            else:
                assert not [p for p in held if line.startswith(p + " ")], line


def test_corpus_documents_hold_several_lines_within_the_length_range(task):
    docs = task.corpus(100, 0)
    assert all(100 <= len(doc) <= 250 for doc in docs)
    # Constraints examples (instruction and answer) run to about 170 characters, so one or two a document.
    lines_per_doc = 1.5 if task.name == "constraints" else 2
    assert sum(doc.count("\n") + 1 for doc in docs) >= lines_per_doc * len(docs)


def test_demonstration_responses_fit_the_generation_budget(task):
    assert all(len(r) < task.max_new_tokens for _, r in task.demonstrations(500, 0))


def test_rewards_are_total_over_responses(task):
    for prompt in task.eval_prompts()[:3]:
        for response in ODD_RESPONSES:
            gold, proxy = task.gold(prompt, response), task.proxy(prompt, response)
            lo, hi = GOLD_RANGE[task.name]
            assert isinstance(gold, float) and math.isfinite(gold) and lo <= gold <= hi, response[:20]
            lo, hi = PROXY_RANGE[task.name]
            assert isinstance(proxy, float) and math.isfinite(proxy) and lo <= proxy <= hi, response[:20]


def test_unparseable_prompt_raises_value_error_naming_it(task):
    with pytest.raises(ValueError, match="'not a prompt'"):
        task.gold("not a prompt", "x")
    with pytest.raises(ValueError, match="'not a prompt'"):
        task.proxy("not a prompt", "x")


def test_proxy_prefers_the_longer_of_two_responses_with_equal_gold(task):
    pair = SAME_GOLD[task.name]
    for prompt in task.eval_prompts()[:20]:
        short, long = pair(prompt) if callable(pair) else pair
        assert task.gold(prompt, short) == task.gold(prompt, long)
        assert task.proxy(prompt, long) > task.proxy(prompt, short)
