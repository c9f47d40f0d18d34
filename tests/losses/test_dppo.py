"""DPPO's trust-region surrogates (arXiv 2602.04879; verl's dppo_tv and dppo_kl): values and
gradients worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.online import DPPOParams
from alignlab.losses.policy_gradient import PolicyGradientInputs, policy_gradient_loss
from alignlab.losses.surrogates import dppo_surrogate

F64 = torch.float64


def _tokens(p_new, advantages):
    """One completion per token, p̂ = 0.5 for all; returns (ℓ with gradient, ℓold, A (B, 1))."""
    logps = torch.tensor(p_new, dtype=F64).log().view(-1, 1).requires_grad_()
    old = torch.full_like(logps, math.log(0.5)).detach()
    return logps, old, torch.tensor(advantages, dtype=F64).view(-1, 1)


def test_total_variation_keeps_the_tokens_inside_the_region():
    """p̂ = 0.5, ε = 0.15. A = +1: p = 0.6 moved +0.1 (inside: loss −1.2·ln 0.6, gradient −c = −1.2);
    p = 0.7 moved +0.2 (outside: 0); p = 0.2 moved down, against its advantage (inside: −0.4·ln 0.2,
    gradient −0.4). A = −1: p = 0.4 moved −0.1 (inside: +0.8·ln 0.4, gradient +0.8); p = 0.3
    moved −0.2 (outside: 0)."""
    logps, old, adv = _tokens([0.6, 0.7, 0.2, 0.4, 0.3], [1, 1, 1, -1, -1])
    loss, inside = dppo_surrogate(logps, old, adv, "tv", 0.15, 0.15, cap=1e4)
    assert inside.view(-1).tolist() == [1, 0, 1, 1, 0]
    want = [-1.2 * math.log(0.6), 0.0, -0.4 * math.log(0.2), 0.8 * math.log(0.4), 0.0]
    assert loss.view(-1).tolist() == pytest.approx(want, abs=1e-14)
    loss.sum().backward()
    assert logps.grad.view(-1).tolist() == pytest.approx([-1.2, 0.0, -0.4, 0.8, 0.0], abs=1e-14)


def test_binary_kl_bounds_the_move_in_the_advantages_direction_only():
    """p̂ = 0.5, ε = 0.05. KL_b(0.6) = 0.5·ln(0.5/0.6) + 0.5·ln((0.5 + 1e-8)/(0.4 + 1e-8)) ≈ 0.0204
    (inside); KL_b(0.7) ≈ 0.0872 > 0.05: outside for A = +1 (it rose), inside for A = −1 (a rise
    is the direction A < 0 pushes against, so the bound does not apply); KL_b(0.3) ≈ 0.0872: outside
    for A = −1, inside for A = +1."""
    def kl(p):
        return 0.5 * math.log(0.5 / p) + 0.5 * math.log((0.5 + 1e-8) / (1 - p + 1e-8))

    assert kl(0.6) == pytest.approx(0.0204, abs=1e-4) and kl(0.7) == pytest.approx(0.0872, abs=1e-4)
    logps, old, adv = _tokens([0.6, 0.7, 0.7, 0.3, 0.3], [1, 1, -1, -1, 1])
    loss, inside = dppo_surrogate(logps, old, adv, "kl", 0.05, 0.05, cap=1e4)
    assert inside.view(-1).tolist() == [1, 0, 1, 0, 1]
    want = [-1.2 * math.log(0.6), 0.0, 1.4 * math.log(0.7), 0.0, -0.6 * math.log(0.3)]
    assert loss.view(-1).tolist() == pytest.approx(want, abs=1e-14)


def test_the_ratio_weight_is_capped_and_carries_no_gradient():
    """p̂ = 0.1, p = 0.3 (c = 3) with cap 2, inside a TV region of 0.5: loss −A·2·ln 0.3, gradient −2A."""
    logps = torch.tensor([[math.log(0.3)]], dtype=F64, requires_grad=True)
    old = torch.tensor([[math.log(0.1)]], dtype=F64)
    loss, _ = dppo_surrogate(logps, old, torch.tensor([[1.5]], dtype=F64), "tv", 0.5, 0.5, cap=2.0)
    assert loss.item() == pytest.approx(-1.5 * 2 * math.log(0.3), abs=1e-14)
    loss.backward()
    assert logps.grad.item() == pytest.approx(-3.0, abs=1e-14)


def test_the_method_sums_each_sequence_over_the_length_limit_and_counts_what_left_the_region():
    """``dppo``'s defaults: TV 0.15, ``constant`` aggregation. Two completions of 2 tokens, p̂ = 0.5
    everywhere, A = +1 and −1; the first's tokens at p = 0.6 (inside) and 0.9 (outside), the
    second's at 0.45 (inside) and 0.5 (inside). Per example: (−1.2·ln 0.6 + 0)/L and
    (0.9·ln 0.45 + 1.0·ln 0.5)/L with L = 4; clip/high = 1 of 4 tokens."""
    logps = torch.tensor([[0.6, 0.9], [0.45, 0.5]], dtype=F64).log().requires_grad_()
    old = torch.full((2, 2), math.log(0.5), dtype=F64)
    out = policy_gradient_loss(PolicyGradientInputs(logps, torch.ones(2, 2), torch.tensor([1.0, -1.0], dtype=F64),
                                                    old_logps=old), DPPOParams(max_completion_length=4))
    want = [-1.2 * math.log(0.6) / 4, (0.9 * math.log(0.45) + math.log(0.5)) / 4]
    assert out.losses.tolist() == pytest.approx(want, abs=1e-14)
    assert out.metrics["clip/high"].sum().item() == pytest.approx(0.5, abs=1e-14)  # per example: 1/2 and 0
    assert out.metrics["clip/low"].sum().item() == 0.0


def test_bad_dppo_settings_are_refused():
    with pytest.raises(Exception, match="ratio_level"):
        DPPOParams(ratio_level="sequence")
    with pytest.raises(Exception, match="dppo_ratio_cap"):
        DPPOParams(dppo_ratio_cap=0.0)
