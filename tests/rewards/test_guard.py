"""A scorer that fails (raises, or gives no finite number) is one line naming the answer at fault,
in every command that scores: eval length, judge-bias, rm and decode (sample has its own test)."""

from __future__ import annotations

import json

import pytest

from alignlab.cli import main
from alignlab.errors import UserError
from alignlab.rewards import load_scorer
from alignlab.rewards.base import Scorer
from alignlab.rewards.guard import guard
from alignlab.testbed.shipped import task_model

BOOM = ("def boom(prompt, response):\n"
        "    if response == 'bad':\n"
        "        raise RuntimeError('kaboom')\n"
        "    return 1.0\n")


@pytest.fixture
def myr(tmp_path, monkeypatch):
    (tmp_path / "myr.py").write_text(BOOM)
    monkeypatch.syspath_prepend(str(tmp_path))


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_guard_names_the_answer_and_its_row(myr):
    """Of three answers the second ('bad', to prompt p2 of a.jsonl row 2) raises: found alone."""
    scorer = guard(load_scorer("fn:myr:boom"), "--scorer fn:myr:boom", {"p2": "a.jsonl, row 2"}.get)
    assert scorer.score(["p1", "p2"], ["ok", "ok"]) == [1.0, 1.0]
    with pytest.raises(UserError) as e:
        scorer.score(["p1", "p2", "p3"], ["ok", "bad", "ok"])
    assert str(e.value) == "--scorer fn:myr:boom failed on the answer 'bad' to prompt (a.jsonl, row 2): raised RuntimeError: kaboom"
    with pytest.raises(UserError, match="the pair of answers 'bad' and 'ok' to prompt 'p3': raised RuntimeError: kaboom"):
        scorer.compare(["p1", "p3"], ["ok", "bad"], ["ok", "ok"])
    with pytest.raises(UserError, match="the pair of answers 'ok' and 'bad' to prompt 'p3': raised RuntimeError: kaboom"):
        scorer.compare(["p1", "p3"], ["ok", "ok"], ["ok", "bad"])  # the second answer at fault is named too


class _Gives(Scorer):
    """Scores every answer with ``value``, except answers equal to ``odd``, which get ``odd_value``."""

    name = "gives"

    def __init__(self, odd: str, odd_value):
        self.odd, self.odd_value = odd, odd_value

    def score(self, prompts, responses):
        return [self.odd_value if r == self.odd else 1.0 for r in responses]


@pytest.mark.parametrize(("value", "problem"), [
    ("1.5", "returned '1.5', not a number"),       # the text of a number is a bug in the scorer, as in training
    (b"2", "returned b'2', not a number"),
    (float("nan"), "returned nan, not a finite number"),
    (None, "returned None, not a number"),
])
def test_the_commands_read_a_score_as_training_does(value, problem):
    """The commands' guard and online training's rewards judge a score by one rule
    (``finite_number``): the answer at fault is named with what it returned."""
    from alignlab.training.rollout import RewardError, RewardTerm, score_samples

    scorer = guard(_Gives("odd", value), "--scorer s")
    with pytest.raises(UserError) as e:
        scorer.score(["p1", "p2"], ["ok", "odd"])
    assert str(e.value) == f"--scorer s failed on the answer 'odd' to prompt 'p2': {problem}"
    with pytest.raises(RewardError) as e:
        score_samples([RewardTerm("s", _Gives("odd", value))], ["p1", "p2"], ["ok", "odd"],
                      ["prompt row 1, sample 1", "prompt row 2, sample 1"], [1, 1])
    assert str(e.value) == f"reward 's': prompt row 2, sample 1: {problem}"


def test_a_true_or_false_verdict_is_one_or_zero_everywhere():
    from alignlab.training.rollout import RewardTerm, score_samples

    assert guard(_Gives("odd", False), "--scorer s").score(["p", "p"], ["ok", "odd"]) == [1.0, 0.0]
    total, _ = score_samples([RewardTerm("s", _Gives("odd", False))], ["p", "p"], ["ok", "odd"], ["a", "b"], [1, 1])
    assert total.tolist() == [1.0, 0.0]


def sample(text):
    return {"text": text, "num_tokens": 2, "finished": True}


@pytest.mark.parametrize("command", [
    ["eval", "length", "--answers", "{a}", "--against", "{b}", "--scorer", "fn:myr:boom"],
    ["eval", "judge-bias", "--judge", "fn:myr:boom", "--answers", "{a}"],
    ["eval", "judge-bias", "--judge", "fn:myr:boom", "--pairs", "{pairs}"],
    ["eval", "rm", "--data", "{pairs}", "--scorer", "fn:myr:boom"],
])
def test_a_failing_scorer_is_one_line_in_eval(tmp_path, myr, capsys, command):
    a = write_rows(tmp_path / "a.jsonl", [{"prompt": "p1", "samples": [sample("ok"), sample("ok")]},
                                          {"prompt": "p2", "samples": [sample("bad"), sample("ok")]}])
    b = write_rows(tmp_path / "b.jsonl", [{"prompt": "p1", "samples": [sample("ok"), sample("ok")]},
                                          {"prompt": "p2", "samples": [sample("ok"), sample("ok")]}])
    # judge-bias shows the pair of an even row rejected first: 'bad' is the first answer either way
    pairs = write_rows(tmp_path / "pairs.jsonl", [{"prompt": "p1", "chosen": "ok", "rejected": "no"},
                                                  {"prompt": "p2", "chosen": "ok", "rejected": "bad"}])
    tokens = [t.format(a=a, b=b, pairs=pairs) for t in command]
    code = main(tokens)
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    answer = "the pair of answers 'bad' and 'ok'" if "judge-bias" in tokens else "the answer 'bad'"
    assert f"fn:myr:boom failed on {answer} to prompt" in err and "RuntimeError: kaboom" in err
    # the prompt named by its file and row, not its text
    assert f"to prompt ({pairs if {'rm', '--pairs'} & set(tokens) else a}, row 2)" in err


@pytest.mark.parametrize("swap", [True, False])
def test_a_failing_pairwise_judge_is_one_line_in_judge_bias(tmp_path, monkeypatch, capsys, swap):
    """A pairwise judge is asked for the position report in both orders, whatever its swap
    setting; its backend raising on a query about the answer 'bad' is one line naming that
    answer and its prompt's file and row, where it was a traceback."""
    import alignlab.rewards
    from alignlab.rewards.judge import PairwiseJudge

    class Failing:
        def complete(self, queries):
            if any("bad" in q for q in queries):
                raise RuntimeError("judge fell over")
            return ["A"] * len(queries)

    real = alignlab.rewards.load_scorer

    def load(spec, **kw):
        return PairwiseJudge(Failing(), swap=swap) if spec == "pairwise" else real(spec, **kw)

    monkeypatch.setattr(alignlab.rewards, "load_scorer", load)
    a = write_rows(tmp_path / "a.jsonl", [{"prompt": "p1", "samples": [sample("ok"), sample("fine")]},
                                          {"prompt": "p2", "samples": [sample("bad"), sample("ok")]}])
    code = main(["eval", "judge-bias", "--judge", "pairwise", "--answers", a])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.endswith(f"--judge pairwise failed on the pair of answers 'bad' and 'ok' to prompt ({a}, row 2): raised RuntimeError: "
                        "judge fell over"), err


def test_a_failing_judge_names_the_file_and_row_of_a_drawn_answers_prompt(tmp_path, tiny_model_dir, monkeypatch,
                                                                           capsys):
    """judge-bias on answers drawn now (--model) to the prompts of a file: a judge that fails on
    every answer to the second prompt names that file and row, not the prompt's text."""
    (tmp_path / "picky_judge.py").write_text("def f(prompt, response):\n"
                                             "    if prompt == 'second':\n"
                                             "        raise RuntimeError('no')\n"
                                             "    return float(len(response))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = write_rows(tmp_path / "q.jsonl", [{"prompt": p} for p in ("first", "second", "third")])
    code = main(["eval", "judge-bias", "--judge", "fn:picky_judge:f", "--model", str(tiny_model_dir), "--prompts",
                 prompts, "--max-new-tokens", "3", "--device", "cpu", "--no-perturbations"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "--judge fn:picky_judge:f failed on the pair of answers" in err, err
    assert f"to prompt ({prompts}, row 2): raised RuntimeError: no" in err, err


def test_a_failing_scorer_is_one_line_in_decode(tmp_path, monkeypatch, capsys):
    """best-of-n scores every candidate; the scorer raises on every answer of the first prompt."""
    (tmp_path / "allboom.py").write_text("def boom(prompt, response):\n    raise RuntimeError('kaboom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["decode", "--method", "best-of-n", "--model", str(task_model("arithmetic", "sft")), "--scorer", "fn:allboom:boom", "--n", "2",
                 "--task", "arithmetic", "--limit", "2", "--max-new-tokens", "4", "--output",
                 str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "--scorer fn:allboom:boom failed on the answer" in err and "RuntimeError: kaboom" in err
    assert "(task arithmetic" in err


def test_a_module_in_the_current_folder_off_the_path_gets_a_hint(tmp_path, monkeypatch):
    """my_rewards.py in the working folder, which is not on sys.path: the one-line error says to
    run with PYTHONPATH=.; a module found nowhere says to add its folder; a module that is found
    but fails to import something of its own gets no path hint (the path is not the problem)."""
    import sys

    (tmp_path / "my_rewards.py").write_text("def f(prompt, response):\n    return 1.0\n")
    (tmp_path / "broken_rewards.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    with pytest.raises(UserError) as e:
        load_scorer("fn:my_rewards:f")
    assert str(e.value).endswith("(my_rewards is in the current folder, which is not on the import path: run with "
                                 "PYTHONPATH=.)") and "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"add the folder that holds it\)$"):
        load_scorer("fn:nowhere_rewards_xyz:f")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as e:
        load_scorer("fn:broken_rewards:f")
    assert "no_such_dependency_xyz" in str(e.value) and "PYTHONPATH" not in str(e.value)
    assert load_scorer("fn:my_rewards:f").score(["p"], ["r"]) == [1.0]


def test_a_prompt_on_several_rows_is_named_by_all_of_them():
    """Pair data holds a prompt on several rows; the answer at fault could be on any: every row of
    its prompt is named (the first five of more), never just the first."""
    from types import SimpleNamespace as Row

    from alignlab.rewards.guard import rows_of

    where = rows_of([Row(source="a.jsonl", row=r, prompt="p1") for r in (1, 3)]
                    + [Row(source="a.jsonl", row=2, prompt="p2")])
    assert (where("p1"), where("p2"), where("p3")) == ("a.jsonl, rows 1 and 3", "a.jsonl, row 2", None)
    assert rows_of([Row(source="a.jsonl", row=r, prompt="p") for r in range(1, 9)])("p") == \
        "a.jsonl, rows 1, 2, 3, 4, 5 … (8 rows)"
    assert rows_of([Row(source="a.jsonl", row=1, prompt="p"), Row(source="b.jsonl", row=4, prompt="p")])("p") == \
        "a.jsonl, row 1; b.jsonl, row 4"
