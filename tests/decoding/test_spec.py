"""A decoding method in one string (``task_eval_decoding``): the same flags, defaults and checks as
`alignlab decode`, and a one-line error naming the field for anything wrong."""

from __future__ import annotations

import pytest

from alignlab.config import make_config
from alignlab.decoding.spec import parse_method
from alignlab.errors import UserError


def test_a_method_and_its_flags_read_as_the_command_reads_them():
    args = parse_method("best-of-n --n 8 --scorer 'task:arithmetic:proxy' --pick-temperature 0.5 --calibrate")
    assert (args.method, args.n, args.scorer, args.pick_temperature, args.calibrate) == (
        "best-of-n", 8, "task:arithmetic:proxy", 0.5, True)
    q = parse_method("qalign --scorer task:sentiment --steps 3 --beta 0.25 --vote --burn-in 1")
    assert (q.method, q.steps, q.beta, q.vote, q.burn_in, q.n) == ("qalign", 3, 0.25, True, 1, 4)  # n: its default


@pytest.mark.parametrize(("text", "message"), [
    ("", "start with the method's name"),
    ("--n 4 best-of-n", "start with the method's name"),
    ("best-of-three --scorer task:arithmetic", "unknown decoding method 'best-of-three'"),
    ("best-of-n --n 4", "best-of-n needs a scorer"),
    ("best-of-n --scorer task:arithmetic --n 0", "--n must be >= 1, got 0"),
    ("best-of-n --scorer task:arithmetic --n four", "argument --n: invalid int value: 'four'"),
    ("best-of-n --scorer task:arithmetic --width 3", "unrecognized arguments: --width 3"),
    ("qalign --scorer task:arithmetic --beta 0", "--beta > 0"),
    ("reward-guided --scorer task:arithmetic --prefix p.txt", "--prefix: an in-context prefix is for urial"),
    ("best-of-n --scorer 'task:arithmetic", "cannot read"),
    ("best-of-n --scorer task:arithmetik", "--scorer: task: unknown task 'arithmetik'"),
    ("best-of-n --scorer task:arithmetic:silver", "--scorer: task reward: kind must be gold or proxy"),
    ("best-of-n --scorer bogus", "--scorer: scorer 'bogus': unknown kind 'bogus'"),
    ("best-of-n --scorer fn:no_such_module_here:f", "--scorer: reward function 'no_such_module_here:f': cannot import"),
    ("best-of-n --scorer length:coef=lots", "--scorer: scorer 'length:coef=lots': coef must be a number"),
    ("nudging --aligned /no/such/model", "--aligned: model directory '/no/such/model' does not exist"),
    ("transfer-q --aligned a --reference ./no-such-model", "--reference: model directory './no-such-model' does not"),
])
def test_what_cannot_work_is_one_line_naming_the_field(text, message):
    with pytest.raises(UserError) as e:
        parse_method(text)
    assert str(e.value).startswith("task_eval_decoding: ") and message in str(e.value) and "\n" not in str(e.value)


def test_the_config_field_is_checked_when_the_config_is_made():
    base = {"method": "dpo", "model": "m", "data": "d.jsonl"}
    with pytest.raises(UserError, match="task_eval_decoding: evaluates on a task's held-out prompts: give task too"):
        make_config({**base, "task_eval_decoding": "best-of-n --scorer task:arithmetic"})
    with pytest.raises(UserError, match="task_eval_decoding: --scorer: best-of-n needs a scorer"):
        make_config({**base, "task": "arithmetic", "task_eval_decoding": "best-of-n"})
    cfg = make_config({**base, "task": "arithmetic", "task_eval_decoding": "best-of-n --n 2 --scorer task:arithmetic"})
    assert cfg.eval.task_eval_decoding == "best-of-n --n 2 --scorer task:arithmetic"


@pytest.mark.parametrize(("text", "flag", "owner"), [
    ("qalign --scorer task:arithmetic --n 8", "--n", "best-of-n"),
    ("best-of-n --scorer task:arithmetic --steps 3", "--steps", "qalign"),
    ("best-of-n --scorer task:arithmetic --threshold 0.4", "--threshold", "nudging"),
    ("urial --candidates 5", "--candidates", "reward-guided and transfer-q"),
    ("reward-guided --scorer task:arithmetic --calibrate", "--calibrate", "best-of-n"),
    ("best-of-n --scorer task:arithmetic --vote", "--vote", "qalign"),
])
def test_a_flag_the_method_does_not_read_is_refused_not_ignored(text, flag, owner):
    """Each of these flags has a default; were it filled in before the check, the other method would
    silently ignore it."""
    with pytest.raises(UserError, match=f"{flag}: .* does not read it \\(it is for {owner}\\)"):
        parse_method(text)


def test_each_flag_gets_its_default_once_the_method_is_known(tiny_model_dir):
    b = parse_method("best-of-n --scorer task:arithmetic")
    assert (b.n, b.pick_temperature, b.calibrate, b.calibration_samples) == (4, 0.0, False, 16)
    n = parse_method(f"nudging --aligned {tiny_model_dir}")
    assert (n.threshold, n.lookahead, n.steps) == (0.3, 0, 16)
    t = parse_method(f"transfer-q --aligned {tiny_model_dir} --reference {tiny_model_dir}")
    assert (t.lookahead, t.implicit_beta, t.candidates, t.guide_weight) == (20, 0.1, 10, 1.0)
