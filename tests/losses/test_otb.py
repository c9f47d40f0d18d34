"""The Optimal Token Baseline (OTB, arXiv 2602.07078; verl's adv_estimator=optimal_token_baseline):
values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from alignlab.losses.advantages import OTB_EPS, optimal_token_baseline, otb_energy
from alignlab.losses.online import OTBParams, RoundTokens, otb_token_advantages

EPS = OTB_EPS


def test_the_energy_is_the_squared_norm_of_the_score_function():
    """A 3-token distribution p = (0.5, 0.3, 0.2), token 0 drawn: 1 − 2·0.5 + (0.25 + 0.09 + 0.04)
    = 0.38 = ‖e_0 − p‖² = 0.5² + 0.3² + 0.2²; token 2 drawn: 1 − 0.4 + 0.38 = 0.98 = 0.5² + 0.3² + 0.8²."""
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    sq = (p ** 2).sum()
    e = otb_energy(p.log()[[0, 2]].view(1, 2), sq.expand(1, 2))
    assert e.tolist()[0] == pytest.approx([0.38, 0.98], abs=1e-15)


def _two_completions():
    """Prompt 1: completion a (3 tokens, reward 1), completion b (2 tokens, reward 0);
    energies a = (0.5, 0.2, 0.1), b = (0.3, 0.4) → W_a = (0.5, 0.7, 0.8), W_b = (0.3, 0.7).
    Returns G_a = (1, 1, 1), G_b = (0, 0)."""
    returns = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    energy = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]], dtype=torch.float64)  # 9: padding, unread
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    return returns, energy, mask


def test_the_baseline_weighs_each_return_by_its_accumulated_energy():
    """t = 0: B = (1·0.5 + 0·0.3)/(0.8 + ε); t = 1: B = 0.7/(1.4 + ε); t = 2: only a reaches it,
    B = 0.8/(0.8 + ε), so a's advantage there is 1 − B (about 1e-8) without the zero tail."""
    returns, energy, mask = _two_completions()
    adv = optimal_token_baseline(returns, energy, mask, group=2, zero_tail=False)
    b0, b1, b2 = 0.5 / (0.8 + EPS), 0.7 / (1.4 + EPS), 0.8 / (0.8 + EPS)
    assert adv[0].tolist() == pytest.approx([1 - b0, 1 - b1, 1 - b2], abs=1e-15)
    assert adv[1].tolist() == pytest.approx([-b0, -b1, 0.0], abs=1e-15)


def test_the_zero_tail_gives_the_lone_longest_completion_its_return():
    """a is strictly the longest (3 > 2): past b's length (position 2 on) its baseline is 0, so its
    advantage is its return, 1. Positions 0 and 1 are as before."""
    returns, energy, mask = _two_completions()
    adv = optimal_token_baseline(returns, energy, mask, group=2)
    b0, b1 = 0.5 / (0.8 + EPS), 0.7 / (1.4 + EPS)
    assert adv[0].tolist() == pytest.approx([1 - b0, 1 - b1, 1.0], abs=1e-15)
    assert adv[1].tolist() == pytest.approx([-b0, -b1, 0.0], abs=1e-15)


def test_tied_longest_completions_keep_their_baseline_and_a_lone_sample_has_none():
    """Two completions of 2 tokens (a tie: no zero tail), rewards 1 and 0, energies 0.2 on every
    token: W = (0.2, 0.4) for both, B_t = W_t/(2 W_t + ε), A = ±(about 1/2). A group of one: A = G."""
    returns = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    energy = torch.full((2, 2), 0.2, dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    adv = optimal_token_baseline(returns, energy, mask, group=2)
    b = [0.2 / (0.4 + EPS), 0.4 / (0.8 + EPS)]
    assert adv.reshape(-1).tolist() == pytest.approx([1 - b[0], 1 - b[1], -b[0], -b[1]], abs=1e-15)
    alone = optimal_token_baseline(torch.tensor([[3.0, 3.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), group=1)
    assert alone.tolist() == [[3.0, 3.0]]


def test_groups_are_separate():
    """Two prompts of two completions each: each prompt's baseline reads its own group only (the
    second prompt's rewards 5 and 7 with equal energies: B = 6, A = ∓1, to ε)."""
    returns, energy, mask = _two_completions()
    second = torch.tensor([[5.0, 5.0, 5.0], [7.0, 7.0, 7.0]], dtype=torch.float64)
    adv = optimal_token_baseline(torch.cat([returns, second]), torch.cat([energy, torch.ones(2, 3)]),
                                 torch.cat([mask, torch.ones(2, 3)]), group=2)
    assert adv[:2].tolist() == optimal_token_baseline(returns, energy, mask, group=2).tolist()
    assert adv[2:].reshape(-1).tolist() == pytest.approx([-1.0] * 3 + [1.0] * 3, abs=1e-7)


def test_the_token_rule_reads_the_rounds_probabilities_and_importance_weights():
    """``otb_token_advantages``: returns from the scores (1 and 0 on every token of their completion),
    energies 1 − 2π + Σπ² from the round's log-probs, each times ρ̄² with a token-level correction.
    π_a = (0.5, 0.5, 0.5), π_b = (0.4, 0.2), Σπ² = 0.5 everywhere: energies a = (0.5, 0.5, 0.5),
    b = (0.7, 1.1). With the correction, ρ̄_a = 2 at a's first token only (sampler log-prob ln 2
    below the trainer's, under the cap 3): its energy 4·0.5 = 2."""
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    old = torch.tensor([[0.5, 0.5, 0.5], [0.4, 0.2, 1.0]], dtype=torch.float64).log() * mask
    sum_pi_sq = torch.full((2, 3), 0.5, dtype=torch.float64)
    scores = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    r = RoundTokens(scores, mask.bool(), old_logps_BT=old, sum_pi_sq_BT=sum_pi_sq, sampler_logps_BT=old.clone())
    adv, ret = otb_token_advantages(r, OTBParams())
    assert ret.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    w_a, w_b = [0.5, 1.0, 1.5], [0.7, 1.8]
    b = [w_a[t] / (w_a[t] + w_b[t] + EPS) for t in range(2)]
    assert adv.tolist()[0] == pytest.approx([1 - b[0], 1 - b[1], 1.0], abs=1e-12)
    assert adv.tolist()[1] == pytest.approx([-b[0], -b[1], 0.0], abs=1e-12)

    sampler = old.clone()
    sampler[0, 0] -= torch.log(torch.tensor(2.0, dtype=torch.float64))
    r = RoundTokens(scores, mask.bool(), old_logps_BT=old, sum_pi_sq_BT=sum_pi_sq, sampler_logps_BT=sampler)
    adv, _ = otb_token_advantages(r, OTBParams(is_mode="token_truncate"))
    w_a = [2.0, 2.5, 3.0]
    b = [w_a[t] / (w_a[t] + w_b[t] + EPS) for t in range(2)]
    assert adv.tolist()[0] == pytest.approx([1 - b[0], 1 - b[1], 1.0], abs=1e-12)
    with pytest.raises(ValueError, match="otb needs the policy's log-probs and Σπ²"):
        otb_token_advantages(RoundTokens(scores, mask.bool()), OTBParams())


def test_a_group_that_scored_alike_learns_only_its_zero_tail():
    """Both completions score c = 2 (no spread), a with 3 tokens, b with 2, energies as in
    ``_two_completions``: W_a = (0.5, 0.7, 0.8), W_b = (0.3, 0.7). Before position 2 the baseline is
    c·ΣW/(ΣW + ε), so A = c·ε/(ΣW + ε): 2e-8/(0.8 + 1e-8) and 2e-8/(1.4 + 1e-8), near 0, not 0. At
    position 2 (a alone, past b's length) the zero tail gives baseline 0: A = c = 2. Every reward
    shifted by 2 from 0 (A = 0 everywhere, the group's returns being 0) thus changes a's tail by 2.
    The near-zero values come out of 2 − 2·ΣW/(ΣW + ε), a difference of numbers near 2: to a few
    float64 ulps of 2 (1e-15)."""
    _, energy, mask = _two_completions()
    returns = torch.full((2, 3), 2.0, dtype=torch.float64) * mask
    adv = optimal_token_baseline(returns, energy, mask, group=2)
    a0, a1 = 2 * EPS / (0.8 + EPS), 2 * EPS / (1.4 + EPS)
    assert adv[0].tolist() == pytest.approx([a0, a1, 2.0], rel=0, abs=1e-15)
    assert adv[1].tolist() == pytest.approx([a0, a1, 0.0], rel=0, abs=1e-15)
    assert (adv[:, :2] != 0).all()
    assert optimal_token_baseline(returns * 0, energy, mask, group=2).abs().max() == 0
