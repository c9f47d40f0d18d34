"""Programmatic rewards, BLEU and combinators, with values derived by hand."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import sacrebleu

from alignlab.errors import UserError
from alignlab.rewards import (
    BleuReward,
    FunctionReward,
    LengthPenalty,
    LogSigmoidSum,
    Routed,
    TaskReward,
    WeightedSum,
    by_task,
    load_scorer,
    reference_rewards,
)
from alignlab.rewards.combine import log_sigmoid

CASES = [
    ("the cat sat on the mat", ["the cat sat on a mat"]),
    ("a quick brown fox jumps", ["the quick brown fox jumps over the dog", "a fast brown fox leaps"]),
    ("Hello, world!", ["hello world"]),
    ("completely unrelated words here", ["the cat sat on the mat"]),
    ("the cat", ["the cat sat on the mat"]),
]


@pytest.mark.parametrize("hyp,refs", CASES)
def test_bleu_equals_sacrebleu_sentence_bleu(hyp, refs):
    reward = BleuReward({"p": refs})
    assert reward.score(["p"], [hyp]) == [sacrebleu.sentence_bleu(hyp, refs).score / 100]


def test_bleu_by_hand():
    """"the cat sat on the mat" against "the cat sat on a mat": matched n-grams 5/6, 3/5, 2/4,
    1/3, equal lengths (no brevity penalty), so BLEU = (5/6 · 3/5 · 2/4 · 1/3)^(1/4) = (1/12)^(1/4)
    = 0.5372849659117709. An exact match is 1; an empty response is 0."""
    reward = BleuReward({"p": ["the cat sat on a mat"], "q": ["exactly this text here"]})
    got = reward.score(["p", "q", "q"], ["the cat sat on the mat", "exactly this text here", "  "])
    assert got[0] == pytest.approx((1 / 12) ** 0.25, abs=1e-12)
    assert got[1] == pytest.approx(1.0, abs=1e-12) and got[2] == 0.0


def test_bleu_references_from_a_file_and_its_errors(tmp_path):
    good = tmp_path / "refs.jsonl"
    good.write_text('{"prompt": "p", "references": ["the cat sat on a mat"]}\n{"prompt": "q", "reference": "x y"}\n')
    reward = BleuReward.from_file(good)
    assert reward.refs_for("q") == ["x y"]
    assert load_scorer(f"bleu:{good}").score(["p"], ["the cat sat on a mat"]) == [pytest.approx(1.0)]
    with pytest.raises(UserError, match="no reference answer for the prompt 'zzz'"):
        reward.score(["zzz"], ["anything"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "references": ["a"]}\n{"prompt": "q", "references": []}\n')
    with pytest.raises(UserError, match=r"bad.jsonl, line 2, field 'references'"):
        BleuReward.from_file(bad)
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"prompt": "p", "references": ["a"]}\n{"prompt": "q", "reference": " "}\n')
    with pytest.raises(UserError) as e:
        BleuReward.from_file(blank)
    assert str(e.value) == (f"{blank}, line 2, field 'references': an empty reference (every answer would score 0 "
                            "against it); give its text or leave it out")


def test_task_reward_is_the_gold_reward_and_refuses_foreign_prompts():
    from alignlab.tasks import get_task

    task = get_task("arithmetic")
    prompt = task.train_prompts(1, 0)[0]  # "45+24="
    a, b = prompt.rstrip("=").split("+")
    right = str(int(a) + int(b))
    reward = TaskReward("arithmetic")
    assert reward.score([prompt, prompt], [right, "nonsense"]) == [1.0, 0.0]
    assert reward.score([prompt], [right]) == [task.gold(prompt, right)]
    assert TaskReward("sentiment", "proxy").score(["The pasta at Marco's"], [" was great."]) == [
        get_task("sentiment").proxy("The pasta at Marco's", " was great.")]
    with pytest.raises(UserError, match="task:arithmetic:gold: item 0: not"):
        reward.score(["The pasta at Marco's"], ["x"])
    assert reward.owns(prompt) and not reward.owns("The pasta at Marco's")


def test_task_reward_of_a_task_already_built_keeps_its_options():
    """A Task instance is scored as it is (here: partial credit, which the default task lacks)."""
    from alignlab.tasks import ArithmeticTask

    task = ArithmeticTask(partial_credit=True)
    prompt = task.train_prompts(1, 0)[0]
    a, b = prompt.rstrip("=").split("+")
    right = str(int(a) + int(b))
    near = right[:-1] + str((int(right[-1]) + 1) % 10)  # "69" -> "60": the tens right, the ones wrong
    assert len(right) == 2
    reward = TaskReward(task)
    assert reward.name == "task:arithmetic:gold" and reward.task is task
    assert reward.score([prompt], [near]) == [0.5]  # one of two digits in place
    assert TaskReward("arithmetic").score([prompt], [near]) == [0.0]
    with pytest.raises(UserError, match="options go with a task name"):
        TaskReward(task, partial_credit=False)


def test_length_penalty_by_hand():
    """coef 0.5, target 2 words: "a b c d" (4 words) → −0.5·2 = −1; "a b" → 0; in characters with
    target 0, "abc" → −1.5."""
    assert LengthPenalty(0.5, 2).score(["p", "p"], ["a b c d", "a b"]) == [-1.0, 0.0]
    assert LengthPenalty(0.5, 0, "chars").score(["p"], ["abc"]) == [-1.5]
    with pytest.raises(UserError, match="length penalty: coef 0 scores every answer 0"):
        LengthPenalty(0.0)
    with pytest.raises(UserError, match="unit must be one of words, chars, tokens"):
        LengthPenalty(unit="lines")


def test_function_reward_by_name_and_its_errors(tmp_path, monkeypatch):
    (tmp_path / "myrewards.py").write_text(textwrap.dedent("""
        def exclaim(prompt, response):
            return response.count("!")

        def broken(prompt, response):
            return float("nan")

        def one_arg(response):
            return 1.0
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myrewards", None)
    assert load_scorer("fn:myrewards:exclaim").score(["p", "p"], ["hi!!", "hi"]) == [2.0, 0.0]
    with pytest.raises(UserError, match="reward function myrewards:broken: returned nan"):
        FunctionReward("myrewards:broken").score(["p"], ["x"])
    with pytest.raises(UserError, match="must take \\(prompt, response\\)"):
        FunctionReward("myrewards:one_arg")
    with pytest.raises(UserError, match="has no 'missing'"):
        FunctionReward("myrewards:missing")
    with pytest.raises(UserError, match="cannot import module 'no_such_module_here'"):
        FunctionReward("no_such_module_here:f")
    with pytest.raises(UserError, match="expected module:function"):
        FunctionReward("justaname")


def test_a_module_that_fails_while_importing_is_one_line(tmp_path, monkeypatch):
    """A syntax error names the module, the error and its file and line; an error raised by the
    module's own code at import names its type and message."""
    (tmp_path / "synerr_mod.py").write_text("def f(prompt, response)\n    return 1\n")
    (tmp_path / "raising_mod.py").write_text("raise ValueError('module-level\\nfailure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("synerr_mod", "raising_mod"):
        sys.modules.pop(name, None)
    with pytest.raises(UserError) as e:
        FunctionReward("synerr_mod:f")
    assert str(e.value).startswith("reward function 'synerr_mod:f': importing module 'synerr_mod' raised SyntaxError")
    assert str(e.value).endswith("(synerr_mod.py, line 1)") and "\n" not in str(e.value)
    with pytest.raises(UserError, match="importing module 'raising_mod' raised ValueError: module-level failure$"):
        FunctionReward("raising_mod:f")


def test_weighted_sum_by_hand():
    """2·(words) − 1·(exclamation marks): "a b!" → 2·2 − 1 = 3."""
    words = FunctionReward(lambda p, y: len(y.split()), name="words")
    bangs = FunctionReward(lambda p, y: y.count("!"), name="bangs")
    assert WeightedSum([(2, words), (-1, bangs)]).score(["p"], ["a b!"]) == [3.0]


def test_log_sigmoid_sum_by_hand():
    """Rewards 3 and 0 against reference rewards 1 and 0: log σ(2) + log σ(0) =
    −log(1 + e^−2) − log 2 = −0.12692801104297263 − 0.6931471805599453 = −0.8200751915..."""
    three = FunctionReward(lambda p, y: 3.0, name="three")
    zero = FunctionReward(lambda p, y: 0.0, name="zero")
    got = LogSigmoidSum([(three, 1.0), (zero, {"p": 0.0})]).score(["p"], ["y"])[0]
    assert got == pytest.approx(-math.log1p(math.exp(-2)) - math.log(2), abs=1e-12)
    assert log_sigmoid(-800.0) == -800.0 and log_sigmoid(800.0) == 0.0  # no overflow
    with pytest.raises(UserError, match="no reference reward for the prompt 'q'"):
        LogSigmoidSum([(zero, {"p": 0.0})]).score(["q"], ["y"])


def test_reference_rewards_are_quantiles_of_sample_rewards():
    """Samples of lengths 1, 2, 3, 4 words: median (linear) 2.5, 0.25-quantile 1.75."""
    words = FunctionReward(lambda p, y: len(y.split()))
    samples = [["a", "a b", "a b c", "a b c d"]]
    assert reference_rewards(words, ["p"], samples) == {"p": 2.5}
    assert reference_rewards(words, ["p"], samples, quantile=0.25) == {"p": 1.75}


def test_routing_by_task_sends_each_prompt_to_its_scorer():
    from alignlab.tasks import get_task

    arith = get_task("arithmetic").train_prompts(2, 0)
    senti = get_task("sentiment").train_prompts(2, 0)
    one = FunctionReward(lambda p, y: 1.0, name="one")
    two = FunctionReward(lambda p, y: 2.0, name="two")
    routed = Routed(by_task({"arithmetic": one, "sentiment": two}))
    prompts = [senti[0], arith[0], arith[1], senti[1]]
    assert routed.score(prompts, ["x"] * 4) == [2.0, 1.0, 1.0, 2.0]
    assert routed.compare(prompts, ["x"] * 4, ["y"] * 4) == [0.5] * 4
    with pytest.raises(UserError, match="no scorer accepts the prompt"):
        routed.score(["not a task prompt"], ["x"])
    assert Routed(by_task({"arithmetic": one}), default=two).score(["free text"], ["x"]) == [2.0]
