"""Best-of-n, soft best-of-n and their KL: picks and numbers that can be worked out by hand."""

from __future__ import annotations

import math

import pytest

from alignlab.decoding import BestOfN, estimate, kl_bound, kl_of_rewards
from alignlab.decoding.best_of_n import quantiles, softmax_pick
from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.rewards.base import Scorer


class Scripted:
    """A generator whose j-th sample of prompt p (in the caller's numbering) is ``texts(p, j)``;
    it records what it was asked."""

    numbers_prompts = True

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def prompt_ids(self, prompt):
        return tuple(range(len(prompt)))

    def generate(self, prompts, n, params, start=0):
        self.calls.append((list(prompts), n, start))
        return [[Sample(self.texts(start + i, j), self.prompt_ids(p), (7,) * len(self.texts(start + i, j)), True)
                 for j in range(n)] for i, p in enumerate(prompts)]

    def update_weights(self, model):
        pass


class Length(Scorer):
    name = "length"

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]


def test_the_pick_is_the_best_of_each_answers_n_candidates_first_among_equals():
    """2 answers of best-of-3 draw 6 candidates; answer j picks among candidates 3j..3j+2. Lengths
    (1, 3, 3 | 2, 1, 2) pick the first 3-letter one and the first 2-letter one."""
    texts = {0: ["a", "bbb", "ccc", "dd", "e", "ff"]}
    gen = Scripted(lambda p, j: texts[0][j])
    bon = BestOfN(gen, Length(), n=3)
    out = bon.generate(["q"], 2, SamplingParams())
    assert [s.text for s in out[0]] == ["bbb", "dd"]
    assert gen.calls == [(["q"], 6, 0)]
    report = bon.last_report
    assert report.picked == [[1, 0]] and report.candidate_rewards == [[[1.0, 3.0, 3.0], [2.0, 1.0, 2.0]]]
    assert report.picked_rewards == [[3.0, 2.0]]
    # forward tokens: each candidate's prompt (1 token) and its generated tokens (its length)
    assert report.forward_tokens == 6 * 1 + (1 + 3 + 3 + 2 + 1 + 2)


def test_best_of_one_is_the_base_sample():
    gen = Scripted(lambda p, j: "xy"[j % 2] * (p + 1))
    out = BestOfN(gen, Length(), n=1).generate(["a", "b"], 2, SamplingParams(), start=5)
    assert [[s.text for s in row] for row in out] == [["xxxxxx", "yyyyyy"], ["xxxxxxx", "yyyyyyy"]]


def test_softmax_pick_by_hand():
    """Rewards (0, ln 3) at temperature 1: probabilities 1/4 and 3/4, so u < 0.25 picks the first;
    at temperature 0 the first of the best; a huge temperature makes them equal (u 0.49 -> 0, 0.51 -> 1)."""
    r = [0.0, math.log(3)]
    assert softmax_pick(r, 1.0, 0.2) == 0 and softmax_pick(r, 1.0, 0.3) == 1
    assert softmax_pick([1.0, 2.0, 2.0], 0.0, 0.99) == 1
    assert softmax_pick(r, 1e9, 0.49) == 0 and softmax_pick(r, 1e9, 0.51) == 1


def test_soft_best_of_n_picks_with_the_softmax_frequencies():
    """Candidates of lengths 1 and 2 (rewards 1 and 2) at τ = 1/ln 3: P(longer) = 3/(1+3) = 0.75.
    Over 4000 prompts the share is within 4 standard deviations (0.027) of 0.75; the picks of a
    prompt do not depend on the batch it is asked in."""
    gen = Scripted(lambda p, j: "a" * (1 + j % 2))
    bon = BestOfN(gen, Length(), n=2, temperature=1 / math.log(3))
    out = bon.generate(["q"] * 4000, 1, SamplingParams(seed=3))
    share = sum(row[0].text == "aa" for row in out) / 4000
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 4000)
    again = bon.generate(["q"] * 10, 1, SamplingParams(seed=3), start=100)
    assert [r[0].text for r in again] == [r[0].text for r in out[100:110]]


def test_calibrated_quantiles_by_hand():
    """Against reference rewards (1, 1, 2, 5): 1 is at or above 2 of 4, 2 at or above 3, 3 too."""
    assert quantiles([1.0, 2.0, 3.0], [1.0, 1.0, 2.0, 5.0]) == [0.5, 0.75, 0.75]


def test_kl_by_hand():
    """n = 2 over two equally likely rewards: the better one has q = 1 − (1/2)² = 3/4, the worse
    1/4, so KL = 3/4·ln(3/2) + 1/4·ln(1/2) = 0.130812...; the bound is ln 2 − 1/2 = 0.193147...
    A 0/1 reward with P(1) = 1/4 and n = 4: q₁ = 1 − (3/4)⁴ = 0.68359375, q₀ = 0.31640625,
    KL = q₁ ln(q₁/0.25) + q₀ ln(q₀/0.75) = 0.414556..."""
    assert kl_of_rewards([0.0, 1.0], 2) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-15)
    assert kl_of_rewards([0.0, 1.0], 2) == pytest.approx(0.1308121, abs=1e-7)
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    q1, q0 = 1 - 0.75 ** 4, 0.75 ** 4
    assert kl_of_rewards([0, 0, 1, 0], 4) == pytest.approx(q1 * math.log(q1 / 0.25) + q0 * math.log(q0 / 0.75), abs=1e-15)
    assert kl_of_rewards([0, 0, 1, 0], 4) == pytest.approx(0.4145557, abs=1e-7)
    assert kl_of_rewards([5.0] * 7, 16) == 0.0 and kl_of_rewards([1.0, 2.0, 3.0], 1) == pytest.approx(0.0, abs=1e-15)
    # many distinct rewards: the KL tends to the bound from below
    many = [float(i) for i in range(100_000)]
    assert kl_bound(8) - 1e-3 < kl_of_rewards(many, 8) <= kl_bound(8)


def test_the_estimate_is_the_mean_over_prompts_with_an_interval_around_it():
    est = estimate([[0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], 4, resamples=200)
    want = (kl_of_rewards([0.0, 1.0], 4) + kl_of_rewards([0, 0, 1, 0], 4)) / 2
    assert est.kl == pytest.approx(want, abs=1e-15) and est.low <= est.kl <= est.high
    assert est.bound == kl_bound(4)


@pytest.mark.parametrize("kwargs,message", [({"scorer": None}, "needs a scorer"), ({"n": 0}, "n must be a whole number"),
                                            ({"temperature": -1.0}, "temperature must be"),
                                            ({"calibrate": True, "calibration_samples": 0}, "calibration_samples")])
def test_bad_settings_are_one_line_errors(kwargs, message):
    args = {"base": Scripted(lambda p, j: "a"), "scorer": Length(), "n": 2, **kwargs}
    with pytest.raises(UserError, match=message):
        BestOfN(**args)


def test_the_plug_in_with_as_many_samples_as_n_is_low_by_a_known_amount():
    """m = 8 distinct rewards and n = 8: q_k = (k/8)⁸ − ((k−1)/8)⁸ against p = 1/8, so the KL is
    Σ_k q_k ln(8 q_k) = 1.16256 (the docstring's figure), below the exact 1.20444."""
    want = sum(((k / 8) ** 8 - ((k - 1) / 8) ** 8) * math.log(8 * ((k / 8) ** 8 - ((k - 1) / 8) ** 8))
               for k in range(1, 9))
    assert kl_of_rewards([float(k) for k in range(8)], 8) == pytest.approx(want, abs=1e-14)
    assert want == pytest.approx(1.162556, abs=1e-6) and kl_bound(8) == pytest.approx(1.204442, abs=1e-6)


def test_calibration_leaves_best_of_n_as_it_is_and_reports_the_scorers_rewards():
    """Candidates of lengths (1, 2 | 3, 1) against one calibration sample of length 1 have quantiles
    (1, 1 | 1, 1): all tied, so a pick by quantile would take the first of each answer. Best-of-n
    keeps its own picks (lengths 2 and 3), draws no calibration samples and reports the lengths.
    Soft best-of-n at a huge temperature picks by the (tied) quantiles, and also reports lengths."""
    texts = ["a", "bb", "ccc", "d"]
    gen = Scripted(lambda p, j: texts[j] if j < 4 else "e")
    bon = BestOfN(gen, Length(), n=2, calibrate=True, calibration_samples=1)
    out = bon.generate(["q"], 2, SamplingParams())
    assert [s.text for s in out[0]] == ["bb", "ccc"] and gen.calls == [(["q"], 4, 0)]
    assert bon.last_report.candidate_rewards == [[[1.0, 2.0], [3.0, 1.0]]]
    assert bon.last_report.picked_rewards == [[2.0, 3.0]]
    soft = BestOfN(gen, Length(), n=2, temperature=1.0, calibrate=True, calibration_samples=1)
    soft.generate(["q"], 2, SamplingParams())
    assert soft.last_report.candidate_rewards == [[[1.0, 2.0], [3.0, 1.0]]]
    assert gen.calls[-1] == (["q"], 1, 0)  # the calibration sample, drawn for the soft pick
