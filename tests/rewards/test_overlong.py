"""DAPO's soft overlong punishment (``overlong:cache=N[,max=M,penalty=P]``): values at the
boundaries worked out by hand, parity with TRL 1.16's ``get_soft_overlong_punishment``, the
sampled token count (not the text's) as the length, and bad specs refused in one line."""

from __future__ import annotations

import math
import random

import pytest

from alignlab.decoding import BestOfN
from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.rewards import OverlongPunishment, load_scorer
from alignlab.rewards.overlong import soft_overlong
from alignlab.training.rollout import load_reward_terms, score_samples
from tests.decoding.test_best_of_n import Scripted


def test_the_boundaries_by_hand():
    """L_max 8, L_cache 3, so the punishment starts after 8 − 3 = 5 tokens:
    |y| = 5 → 0 (the last length without punishment); 6 → (5 − 6)/3 = −1/3; 7 → −2/3;
    8 → (5 − 8)/3 = −1 (at L_max, also a completion cut at max_new_tokens = 8 without EOS);
    9 → −1 (beyond L_max: the floor, not (5 − 9)/3 = −4/3); 0 → 0.
    With penalty 0.5 each is halved: 6 → −1/6, 8 → −0.5, 9 → −0.5."""
    scorer = load_scorer("overlong:cache=3,max=8", sampled=True)
    lengths = [5, 6, 7, 8, 9, 0]
    got = scorer.score_sampled(["p"] * 6, ["answer"] * 6, lengths)
    assert got == pytest.approx([0.0, -1 / 3, -2 / 3, -1.0, -1.0, 0.0], abs=1e-15)
    halved = load_scorer("overlong:cache=3,max=8,penalty=0.5", sampled=True)
    assert halved.score_sampled(["p"] * 3, ["a"] * 3, [6, 8, 9]) == pytest.approx([-1 / 6, -0.5, -0.5], abs=1e-15)
    # cache = max: the punishment spans every length, |y|/L_max: 2 of 4 tokens → −0.5
    assert soft_overlong(2, 4, 4) == -0.5 and soft_overlong(0, 4, 4) == 0.0


def test_max_defaults_to_the_runs_max_new_tokens():
    """max_new_tokens 8 stands for max: the same values as max=8 (|y| = 6 → −1/3 with cache 3)."""
    scorer = load_scorer("overlong:cache=3", sampled=True, max_new_tokens=8)
    assert scorer.max_tokens == 8 and scorer.score_sampled(["p"], ["a"], [6]) == pytest.approx([-1 / 3], abs=1e-15)
    given = load_scorer("overlong:cache=3,max=10", sampled=True, max_new_tokens=8)  # an explicit max wins
    assert given.max_tokens == 10 and given.score_sampled(["p"], ["a"], [8]) == pytest.approx([-1 / 3], abs=1e-15)


@pytest.mark.parametrize("max_len,cache", [(8, 3), (16, 16), (20, 1), (7, 5)])
def test_equals_trls_soft_overlong_punishment_on_the_same_token_lists(max_len, cache):
    """TRL 1.16's reward function over ``completion_ids`` (the EOS token in them, as TRL keeps it),
    against ours over the lengths of the same lists: equal to the bit."""
    from trl.rewards import get_soft_overlong_punishment

    rng = random.Random(max_len * 100 + cache)
    ids = [[rng.randrange(100) for _ in range(n)] for n in range(max_len + 4)] \
        + [[1] * rng.randrange(max_len + 4) for _ in range(20)]
    trl = get_soft_overlong_punishment(max_completion_len=max_len, soft_punish_cache=cache)(completion_ids=ids)
    ours = OverlongPunishment(cache, max_len).score_sampled(["p"] * len(ids), ["t"] * len(ids), [len(x) for x in ids])
    assert ours == trl
    assert min(ours) == -1.0 and max(ours) == 0.0


def test_the_length_is_the_sampled_token_count_not_the_text():
    """In a weighted reward list: each response is "12" (2 characters, 1 or 2 tokens however it is
    tokenized again) but was sampled as 3, 6 and 8 tokens. With cache 4, max 8 (start 4):
    3 → 0, 6 → (4 − 6)/4 = −0.5, 8 → −1. The task's gold (1 for "12" answering "5+7=") and the
    punishment at weight 2 give 1 + 2·(0, −0.5, −1) = (1, 0, −1)."""
    terms = load_reward_terms(["task:arithmetic:gold", "overlong:cache=4,max=8"], [1.0, 2.0])
    total, parts = score_samples(terms, ["5+7="] * 3, ["12"] * 3, ["row 1, sample 1", "row 1, sample 2",
                                                                    "row 1, sample 3"], [3, 6, 8])
    assert parts["overlong:cache=4,max=8"].tolist() == [0.0, -0.5, -1.0]
    assert parts["task:arithmetic:gold"].tolist() == [1.0, 1.0, 1.0]
    assert total.tolist() == [1.0, 0.0, -1.0]


def test_best_of_n_picks_by_the_candidates_sampled_token_counts():
    """Two candidates with the same text "ab", sampled as 7 and 2 tokens (a stub generator), under
    cache 4, max 8 (start 4): 7 → (4 − 7)/4 = −0.75, 2 → 0; best-of-2 picks the second."""
    texts = ["ab", "ab"]
    counts = [7, 2]

    class Counted(Scripted):
        def generate(self, prompts, n, params, start=0):
            return [[Sample(texts[j], (0,), (5,) * counts[j], True) for j in range(n)] for _ in prompts]

    bon = BestOfN(Counted(None), load_scorer("overlong:cache=4,max=8", sampled=True), n=2)
    out = bon.generate(["q"], 1, SamplingParams())
    assert len(out[0][0].token_ids) == 2
    assert bon.last_report.candidate_rewards == [[[-0.75, 0.0]]]


@pytest.mark.parametrize("spec,message", [
    ("overlong:cache=0,max=8", "cache must be a whole number from 1 to max (8), got 0"),
    ("overlong:cache=-2,max=8", "cache must be a whole number from 1 to max (8), got -2"),
    ("overlong:cache=9,max=8", "cache must be a whole number from 1 to max (8), got 9"),
    ("overlong:cache=4", "give max=M, the completion limit (there is no run's max_new_tokens here to take it from)"),
    ("overlong:cache=2,max=8,size=3", "unknown option 'size' (options: cache, max, penalty)"),
    ("overlong", "give cache=N, the last N tokens before max where the punishment grows from 0 to -penalty "
                 "(options: cache, max, penalty)"),
    ("overlong:cache=2.5,max=8", "cache must be a whole number, got '2.5'"),
    ("overlong:cache=2,max=8,penalty=-1", "penalty must be a finite number >= 0, got -1.0"),
    ("overlong:cache=2,max=8,penalty=inf", "penalty must be a finite number >= 0, got inf"),
    ("overlong:cache=2,max=8,cache=3", "option 'cache' is given twice"),
    ("overlong:cache=2, max=8,max =6", "option 'max' is given twice"),
])
def test_bad_specs_are_one_line_errors_at_load_time(spec, message):
    with pytest.raises(UserError) as e:
        load_scorer(spec, sampled=True)
    assert str(e.value) == f"scorer '{spec}': {message}"


def test_where_only_texts_are_scored_it_is_refused():
    """An evaluation of texts (``load_scorer`` without ``sampled``), a decoding method other than
    best-of-n, and a bare ``score`` call all refuse it in one line saying where it works."""
    from alignlab.decoding.spec import check_scorer

    where = ("it works in alignlab train (online methods), alignlab iterate, alignlab sample --scorer and "
             "alignlab decode --method best-of-n")
    with pytest.raises(UserError) as e:
        load_scorer("overlong:cache=2,max=8")
    assert str(e.value) == ("scorer 'overlong:cache=2,max=8': it scores the token counts a generator sampled, and "
                            f"here only texts are scored; {where}")
    with pytest.raises(UserError, match=r"^--scorer: scorer 'overlong:cache=2,max=8': it scores the token counts"):
        check_scorer("overlong:cache=2,max=8", "qalign")
    check_scorer("overlong:cache=2,max=8", "best-of-n")
    with pytest.raises(UserError, match=r"^--scorer: scorer 'overlong:cache=9,max=8': cache must be"):
        check_scorer("overlong:cache=9,max=8", "best-of-n")
    with pytest.raises(UserError) as e:
        OverlongPunishment(2, 8).score(["p"], ["a"])
    assert str(e.value) == f"scorer 'overlong': it scores the token counts a generator sampled, and was given " \
                           f"texts only; {where}"
    # the kind is known to the checks that run before anything is loaded
    from alignlab.rewards import spec_problem

    assert spec_problem("overlong:cache=2") is None


def test_rounds_and_alignlab_sample_score_the_sampled_counts():
    """Rounds read the sampler's ``num_tokens`` of each non-blank sample: answers "12" (3 tokens),
    a blank one (1 token, not a completion) and "13" (8 tokens) under cache 4, max 8 score 0 and
    −1 (pairing "13" with the blank sample's count would give 0); the mean is −0.5 and "12" ranks
    first. ``alignlab sample``'s scoring of a chunk reads ``len(token_ids)``: 6 tokens → −0.5."""
    from alignlab.data.records import PromptRecord
    from alignlab.rounds import _score
    from alignlab.sample_cli import score_chunk

    spec = "overlong:cache=4,max=8"
    rows = [{"prompt": "5+7=", "completions": ["12", "13"],
             "samples": [{"text": "12", "num_tokens": 3}, {"text": " ", "num_tokens": 1},
                         {"text": "13", "num_tokens": 8}]}]
    ranked, stats = _score(load_reward_terms([spec]), rows, "samples.jsonl")
    assert list(ranked[0].completions) == ["12", "13"] and list(ranked[0].scores) == [0.0, -1.0]
    assert stats[f"reward/{spec}"] == -0.5
    samples = [[Sample("12", (1,), (4,) * 6, True), Sample("", (1,), (2,), True)]]
    scores = score_chunk(load_scorer(spec, sampled=True), spec, [PromptRecord("5+7=", "p.jsonl", 1)], samples, 0, 2,
                         "no row was written")
    assert scores == [[-0.5, None]]


def test_the_combinators_pass_the_sampled_counts_on():
    """cache 4, max 8 (start 4): 3 tokens → 0, 6 → (4 − 6)/4 = −0.5, 8 → −1.
    ``WeightedSum`` of 2·overlong and 1·(length, coef 0.1 per word over 0 words; "a b" is 2 words,
    −0.2): (−0.2, −1.2, −2.2). ``LogSigmoidSum`` of overlong against reference 0:
    log σ(0) = −log 2, log σ(−0.5), log σ(−1). ``Routed`` sends "x" prompts to overlong and the
    others to the length penalty: "x" (6 tokens) → −0.5, "y" → −0.2, "x" (8 tokens) → −1. A
    combinator's ``score`` on texts still refuses overlong in one line."""
    from alignlab.rewards import LengthPenalty, LogSigmoidSum, Routed, WeightedSum

    over = load_scorer("overlong:cache=4,max=8", sampled=True)
    words = LengthPenalty(0.1, 0, "words")
    prompts, texts, counts = ["x", "y", "x"], ["a b"] * 3, [3, 6, 8]
    assert WeightedSum([(2.0, over), (1.0, words)]).score_sampled(prompts, texts, counts) == \
        pytest.approx([-0.2, -1.2, -2.2], abs=1e-15)

    # log σ(x) = x − log(1 + e^x) for x < 0
    assert LogSigmoidSum([(over, 0.0)]).score_sampled(prompts, texts, counts) == \
        pytest.approx([-math.log(2), -0.5 - math.log1p(math.exp(-0.5)), -1.0 - math.log1p(math.exp(-1.0))],
                      abs=1e-15)
    assert Routed([(lambda p: p == "x", over)], default=words).score_sampled(prompts, texts, [6, 3, 8]) == \
        pytest.approx([-0.5, -0.2, -1.0], abs=1e-15)
    with pytest.raises(UserError, match=r"^scorer 'overlong:cache=4,max=8': it scores the token counts"):
        WeightedSum([(1.0, over)]).score(prompts, texts)


def test_alignlab_decode_takes_max_from_its_max_new_tokens(tmp_path):
    """``alignlab decode --method best-of-n --scorer overlong:cache=3 --max-new-tokens 8``: the
    checks before loading pass, and the scorer has max 8 (6 tokens → (5 − 6)/3 = −1/3); without
    --max-new-tokens, decode's default (SamplingParams' 64) stands for max. A training run's
    task_eval_decoding has no such flag and still asks for max=M."""
    from alignlab.decode_cli import _check, _parser
    from alignlab.decoding.spec import method_scorer, parse_method

    out = str(tmp_path / "o.jsonl")
    args = _parser().parse_args(["--method", "best-of-n", "--scorer", "overlong:cache=3", "--model", "m",
                                 "--task", "arithmetic", "--output", out, "--max-new-tokens", "8"])
    _check(args)
    scorer = method_scorer(args)
    assert scorer.max_tokens == 8 and scorer.score_sampled(["p"], ["a"], [6]) == pytest.approx([-1 / 3], abs=1e-15)
    default = _parser().parse_args(["--method", "best-of-n", "--scorer", "overlong:cache=3", "--model", "m",
                                    "--task", "arithmetic", "--output", out])
    _check(default)
    assert method_scorer(default).max_tokens == SamplingParams().max_new_tokens == 64
    with pytest.raises(UserError, match=r"^task_eval_decoding: --scorer: scorer 'overlong:cache=3': give max=M"):
        parse_method("best-of-n --n 2 --scorer overlong:cache=3")


def test_the_scorer_help_of_sample_and_decode_names_overlong():
    from alignlab.decode_cli import _parser as decode_parser
    from alignlab.sample_cli import _parser as sample_parser

    for parser in (sample_parser(), decode_parser()):
        scorer = next(a for a in parser._actions if "--scorer" in a.option_strings)
        assert "overlong:cache=N" in scorer.help


def test_rounds_refuse_samples_without_their_token_counts_in_one_line():
    """A samples.jsonl row whose samples lack ``num_tokens`` (written by hand or by another tool)
    is a one-line error naming the file and row, not a KeyError."""
    from alignlab.rounds import _score

    rows = [{"prompt": "5+7=", "completions": ["12"], "samples": [{"text": "12", "num_tokens": 3}]},
            {"prompt": "1+1=", "completions": ["2"], "samples": [{"text": "2"}]}]
    with pytest.raises(UserError) as e:
        _score(load_reward_terms(["overlong:cache=4,max=8"]), rows, "round-1/samples.jsonl")
    assert str(e.value) == ("round-1/samples.jsonl row 2: sample 1 has no num_tokens (the tokens sampled, which "
                            "the reward's scorers are given); sample again with alignlab sample")


def test_rounds_check_an_overlong_spec_before_the_first_round_samples():
    """A bad overlong spec in the rounds' rewards (cache 9 above max 8) is refused with the specs'
    checks, before anything is sampled; a good one, its max from max_new_tokens, passes."""
    from alignlab.errors import ConfigError
    from alignlab.rounds import _check_specs

    with pytest.raises(ConfigError) as e:
        _check_specs(["task:arithmetic:gold", "overlong:cache=9,max=8"], 16)
    assert str(e.value) == ("reward: scorer 'overlong:cache=9,max=8': cache must be a whole number from 1 to max "
                            "(8), got 9")
    _check_specs(["task:arithmetic:gold", "overlong:cache=4"], 16)


def test_a_buffer_no_completion_can_reach_is_refused():
    """With max_new_tokens 8 no completion is longer than 8 tokens: max 12, cache 4 puts the start
    of the punishment at 8, so every completion would score 0; max 11 (start 7) is allowed."""
    with pytest.raises(UserError, match=r"max − cache = 8 tokens.*max_new_tokens \(8\)"):
        load_scorer("overlong:cache=4,max=12", sampled=True, max_new_tokens=8)
    assert load_scorer("overlong:cache=4,max=11", sampled=True, max_new_tokens=8).score_sampled(
        ["p"], ["r"], [8]) == [-0.25]
