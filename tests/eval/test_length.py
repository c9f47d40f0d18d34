"""Length exploitation (eval/length.py): bins and the length-controlled win rate on data whose
answer is known by construction. Expected values are derived in each docstring, not taken from
the code under test."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from alignlab.eval.length import (
    bootstrap_win_rates,
    diff_bins,
    fit_length_glm,
    length_bins,
    pair_summary,
    text_length,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_length_bins_by_hand():
    """8 lengths, 2 bins: about 4 each, but the three 3s stay together. Walking up: after 1 (2
    items), 2 (3), 3 (6 >= 4) the first bin closes as [1, 3] with 6 items, mean length 13/6 and
    mean value (1+0+1+0+1+1)/6 = 2/3; the rest, [4, 5], has values 0 and 0."""
    bins = length_bins([3, 1, 2, 1, 3, 3, 5, 4], [0, 1, 1, 0, 1, 1, 0, 0], 2)
    assert [(b["low"], b["high"], b["count"]) for b in bins] == [(1, 3, 6), (4, 5, 2)]
    assert bins[0]["mean_length"] == pytest.approx(13 / 6)
    assert bins[0]["mean"] == pytest.approx(4 / 6)
    assert bins[1]["mean"] == 0.0


def test_length_bins_with_few_distinct_lengths_give_one_bin_each():
    """Lengths 2, 2, 5 in 5 bins: n/bins = 0.6, so each distinct length closes a bin."""
    bins = length_bins([2, 2, 5], [1.0, 0.0, 0.5], 5)
    assert [(b["low"], b["high"], b["count"], b["mean"]) for b in bins] == [(2, 2, 2, 0.5), (5, 5, 1, 0.5)]


def test_diff_bins_keep_equal_lengths_apart():
    """Differences −2, −1 (values 0, 0), 0, 0 (1, 0), 1, 3 (1, 1); 2 bins give one bin per side
    (⌈2/2⌉ = 1) and the zero bin between: means 0, 1/2, 1."""
    bins = diff_bins([-2, -1, 0, 0, 1, 3], [0, 0, 1, 0, 1, 1], 2)
    assert [(b["low"], b["high"], b["mean"]) for b in bins] == [(-2, -1, 0.0), (0, 0, 0.5), (1, 3, 1.0)]


def test_text_length_units():
    assert text_length("95 ok!", "chars") == 6
    assert text_length("  95   ok! ", "words") == 2


DIFFS = [1, 1, 1, 2, 2, 3, 4, -1, 0, 1, 2, -2]  # A mostly longer


def test_a_preference_that_depends_only_on_length_is_controlled_to_one_half():
    """Preferences made exactly by the model with θ = 0, φ = 2: y_i = σ(2·tanh(d_i/s)), s the
    sample standard deviation of d. The maximum-likelihood fit (no ridge) of a correctly
    specified model on its own expected values is the truth, so the length-controlled win rate is
    σ(0) = 1/2, while the raw win rate, the mean of y, is well above it because A is mostly longer."""
    s = statistics.stdev(DIFFS)
    prefs = [sigmoid(2 * math.tanh(d / s)) for d in DIFFS]
    glm = fit_length_glm(DIFFS, prefs, ridge=0.0)
    assert glm.lc_win_rate == pytest.approx(0.5, abs=1e-9)
    assert glm.slope == pytest.approx(2.0, abs=1e-8)
    assert glm.scale == pytest.approx(s)
    raw = sum(prefs) / len(prefs)  # 0.68: the gap the control removes
    assert raw > 0.65
    # the default ridge (0.01) moves the fit by about ridge·φ/(n·p(1−p)) ≈ 0.02/(12·0.2) ≈ 0.008 on the
    # logit scale, a quarter of that on the win rate: far less than the gap to the raw win rate
    assert fit_length_glm(DIFFS, prefs).lc_win_rate == pytest.approx(0.5, abs=0.005)


def test_quality_and_length_separate():
    """y_i = σ(θ + 1.5·tanh(d_i/s)) with θ = logit(0.6): the length-controlled win rate is 0.6."""
    s = statistics.stdev(DIFFS)
    theta = math.log(0.6 / 0.4)
    prefs = [sigmoid(theta + 1.5 * math.tanh(d / s)) for d in DIFFS]
    glm = fit_length_glm(DIFFS, prefs, ridge=0.0)
    assert glm.lc_win_rate == pytest.approx(0.6, abs=1e-9)
    assert glm.intercept == pytest.approx(theta, abs=1e-8)


def test_a_length_independent_preference_keeps_the_raw_win_rate():
    """Every pair has y = 0.7 whatever its length difference: φ = 0 and θ = logit(0.7) fit it
    exactly, so the length-controlled win rate equals the raw one, 0.7."""
    glm = fit_length_glm(DIFFS, [0.7] * len(DIFFS), ridge=0.0)
    assert glm.lc_win_rate == pytest.approx(0.7, abs=1e-9)
    assert glm.slope == pytest.approx(0.0, abs=1e-9)


def test_random_length_independent_wins_agree_with_the_raw_win_rate():
    """4,000 pairs, A longer in 80% of them, hard wins drawn with probability 0.65 independently of
    length: the fitted φ is near 0 and the length-controlled win rate is within sampling error
    (a few 1/√4000 ≈ 0.016) of the raw one."""
    rng = random.Random(0)
    diffs = [rng.randint(1, 30) if rng.random() < 0.8 else -rng.randint(1, 30) for _ in range(4000)]
    prefs = [1.0 if rng.random() < 0.65 else 0.0 for _ in diffs]
    glm = fit_length_glm(diffs, prefs)
    raw = sum(prefs) / len(prefs)
    assert abs(glm.lc_win_rate - raw) < 0.02
    assert abs(glm.slope) < 0.2


def test_equal_lengths_leave_only_the_intercept():
    """Every d is 2: the scale is 0, the feature 0, and σ(θ) is the mean preference 3/4."""
    glm = fit_length_glm([2, 2, 2, 2], [1, 0, 1, 1], ridge=0.0)
    assert glm.scale == 0.0
    assert glm.lc_win_rate == pytest.approx(0.75, abs=1e-9)


def test_preferences_separable_by_length_stay_finite():
    """A wins exactly when it is longer: no finite (θ, φ) fits that, so without a penalty the
    likelihood has no maximum; the ridge keeps the fit finite and the prediction inside (0, 1)."""
    diffs = [1, 2, 3, -1, -2, 4, 5]
    glm = fit_length_glm(diffs, [1.0 if d > 0 else 0.0 for d in diffs])
    assert glm.iterations < 100
    assert 0 < glm.lc_win_rate < 1 and math.isfinite(glm.slope) and glm.slope > 0


def test_bad_preferences_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_length_glm([1, 2], [0.5, 1.5])
    with pytest.raises(ValueError, match="no pairs"):
        fit_length_glm([], [])


def test_bootstrap_of_a_constant_preference_is_a_point():
    """Every resample of pairs that all have y = 0.7 has raw and length-controlled win rate 0.7."""
    out = bootstrap_win_rates(DIFFS, [0.7] * len(DIFFS), resamples=50, seed=3, ridge=0.0)
    assert out["win_rate"] == pytest.approx([0.7, 0.7])
    assert out["lc_win_rate"] == pytest.approx([0.7, 0.7], abs=1e-9)


def test_pair_summary_by_hand():
    """Lengths A = 3, 5, 2, 4 against B = 2, 5, 4, 1: d = 1, 0, −2, 3, so A is longer in 2 of 4
    pairs and shorter in 1; preferences 1, 1/2, 0, 1 give the raw win rate 2.5/4; mean lengths 14/4
    and 12/4."""
    out = pair_summary([3, 5, 2, 4], [2, 5, 4, 1], [1, 0.5, 0, 1], bins=2, resamples=20)
    assert out["pairs"] == 4
    assert out["win_rate"] == 0.625
    assert (out["a_longer"], out["a_shorter"]) == (0.5, 0.25)
    assert (out["mean_length_a"], out["mean_length_b"]) == (3.5, 3.0)
    assert [b["mean"] for b in out["win_rate_by_length_diff"]] == [0.0, 0.5, 1.0]
    low, high = out["intervals"]["win_rate"]
    assert 0 <= low <= high <= 1
