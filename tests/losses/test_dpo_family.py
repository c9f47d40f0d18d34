"""DPO-family losses (alignlab/losses/dpo_family.py): hand-derived values, properties, gradients, params.

Notation: ρ_c = policy_chosen − ref_chosen, ρ_r = policy_rejected − ref_rejected (summed log-probs),
Δ = ρ_c − ρ_r, h = βΔ, ρ̄ = ρ/|y| (token mean), Δ̄ = ρ̄_c − ρ̄_r, softplus(x) = log(1 + e^x), so
−log σ(h) = softplus(−h). All numbers are float64.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from alignlab.losses import dpo_family as fam
from alignlab.losses.dpo import DPOParams, dpo_loss
from alignlab.losses.params import ParamError
from alignlab.losses.registry import REGISTRY
from alignlab.losses.types import PairLogps

TOL = 1e-9
LOG2 = math.log(2.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def pair(chosen, rejected, ref_chosen, ref_rejected, chosen_len=None, rejected_len=None,
         requires_grad: bool = False, **extra) -> PairLogps:
    n = len(chosen)
    return PairLogps(
        chosen=torch.tensor(chosen, dtype=torch.float64, requires_grad=requires_grad),
        rejected=torch.tensor(rejected, dtype=torch.float64, requires_grad=requires_grad),
        chosen_len=torch.tensor(chosen_len if chosen_len is not None else [5] * n),
        rejected_len=torch.tensor(rejected_len if rejected_len is not None else [5] * n),
        ref_chosen=f64(ref_chosen),
        ref_rejected=f64(ref_rejected),
        **extra,
    )


def loss0(out) -> float:
    return float(out.losses[0])


# ---------------------------------------------------------------------------------------------
# IPO
# ---------------------------------------------------------------------------------------------


def test_ipo_worked_example():
    """τ = 0.1, lengths 5/5, ρ_c = −10 + 11 = 1, ρ_r = −12 + 11 = −1.

    Δ̄ = 1/5 − (−1/5) = 0.4, target 1/(2τ) = 5, loss = (0.4 − 5)² = 21.16.
    No β multiplies Δ̄: the rewards metrics are still β·ρ (0.1, −0.1) as in TRL.
    """
    out = fam.ipo_loss(pair([-10.0], [-12.0], [-11.0], [-11.0]), fam.IPOParams(beta=0.1))
    assert loss0(out) == pytest.approx(21.16, abs=TOL)
    assert float(out.metrics["ipo/mean_margin"][0]) == pytest.approx(0.4, abs=TOL)
    assert float(out.metrics["rewards/margins"][0]) == pytest.approx(0.2, abs=TOL)


def test_ipo_uses_each_response_length():
    """τ = 0.5, |yw| = 4, |yl| = 8, ρ_c = 2, ρ_r = −2: Δ̄ = 2/4 + 2/8 = 0.75, target 1/(2·0.5) = 1,
    loss = (0.75 − 1)² = 0.0625. (Summed log-ratios would give (4 − 1)² = 9.)"""
    out = fam.ipo_loss(pair([-8.0], [-12.0], [-10.0], [-10.0], [4], [8]), fam.IPOParams(beta=0.5))
    assert loss0(out) == pytest.approx(0.0625, abs=TOL)


def test_ipo_beta_moves_only_the_target():
    """Same pair (Δ̄ = 0.4) with τ = 0.25: target 2, loss = (0.4 − 2)² = 2.56, not (0.25·0.4 − 2)²."""
    out = fam.ipo_loss(pair([-10.0], [-12.0], [-11.0], [-11.0]), fam.IPOParams(beta=0.25))
    assert loss0(out) == pytest.approx(2.56, abs=TOL)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_ipo_at_policy_equals_reference(tau):
    """Δ̄ = 0 gives (1/(2τ))² = 1/(4τ²)."""
    out = fam.ipo_loss(pair([-3.0, -9.0], [-7.0, -1.0], [-3.0, -9.0], [-7.0, -1.0]), fam.IPOParams(beta=tau))
    torch.testing.assert_close(out.losses, f64([1 / (4 * tau**2)] * 2), atol=TOL, rtol=0)


def test_ipo_swap_mirrors_the_margin():
    """Swapping gives Δ̄ = −0.4 and loss (−0.4 − 5)² = 29.16."""
    out = fam.ipo_loss(pair([-12.0], [-10.0], [-11.0], [-11.0]), fam.IPOParams(beta=0.1))
    assert loss0(out) == pytest.approx(29.16, abs=TOL)
    assert float(out.metrics["ipo/mean_margin"][0]) == pytest.approx(-0.4, abs=TOL)


def test_ipo_gradient_by_hand():
    """dL/d(policy chosen) = 2(Δ̄ − 1/(2τ))/|yw| = 2(0.4 − 5)/5 = −1.84; rejected gets +1.84."""
    logps = pair([-10.0], [-12.0], [-11.0], [-11.0], requires_grad=True)
    fam.ipo_loss(logps, fam.IPOParams(beta=0.1)).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-1.84, abs=TOL)
    assert float(logps.rejected.grad[0]) == pytest.approx(1.84, abs=TOL)


# ---------------------------------------------------------------------------------------------
# Hinge
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta,pc,pr,rc,rr,expected", [
    (0.1, -10.0, -12.0, -11.0, -11.0, 0.8),   # h = 0.1·2 = 0.2, 1 − 0.2 = 0.8
    (0.1, -15.0, -9.0, -12.0, -10.0, 1.4),    # h = 0.1·(−3 − 1) = −0.4, 1 + 0.4 = 1.4
    (0.5, -20.0, -25.0, -22.0, -24.0, 0.0),   # h = 0.5·(2 + 1) = 1.5 ≥ 1: no loss
    (0.25, -6.0, -6.0, -8.0, -6.0, 0.5),      # h = 0.25·2 = 0.5, 1 − 0.5 = 0.5
])
def test_hinge_hand_values(beta, pc, pr, rc, rr, expected):
    out = fam.hinge_loss(pair([pc], [pr], [rc], [rr]), DPOParams(beta=beta))
    assert loss0(out) == pytest.approx(expected, abs=TOL)


def test_hinge_at_policy_equals_reference_is_one():
    out = fam.hinge_loss(pair([-3.0, -8.0], [-5.0, -1.0], [-3.0, -8.0], [-5.0, -1.0]), DPOParams())
    torch.testing.assert_close(out.losses, f64([1.0, 1.0]), atol=TOL, rtol=0)


def test_hinge_gradient_is_minus_beta_inside_the_margin_and_zero_outside():
    """β = 0.1, h = 0.2 and h = 0.1·(−9 + 12) = 0.3, both < 1: dL/dc = −β = −0.1.
    β = 0.5, h = 1.5 > 1: the pair is past the margin, dL/dc = 0."""
    logps = pair([-10.0, -20.0], [-12.0, -23.0], [-11.0, -11.0], [-11.0, -11.0], requires_grad=True)
    fam.hinge_loss(logps, DPOParams(beta=0.1)).losses.sum().backward()
    assert logps.chosen.grad.tolist() == pytest.approx([-0.1, -0.1], abs=TOL)
    logps = pair([-20.0], [-25.0], [-22.0], [-24.0], requires_grad=True)  # β = 0.5: h = 1.5
    fam.hinge_loss(logps, DPOParams(beta=0.5)).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == 0.0


# ---------------------------------------------------------------------------------------------
# LN-DPO
# ---------------------------------------------------------------------------------------------


def test_ln_dpo_hand_values():
    """β = 5.
    Pair 1: lengths 5/5, ρ_c = 1, ρ_r = −1: Δ̄ = 0.4, h = 2, loss = softplus(−2) = 0.126928011043.
    Pair 2: lengths 4/8, ρ_c = 2, ρ_r = −2: Δ̄ = 0.5 + 0.25 = 0.75, h = 3.75, loss = softplus(−3.75)
    = 0.023245464372.
    """
    logps = pair([-10.0, -8.0], [-12.0, -12.0], [-11.0, -10.0], [-11.0, -10.0], [5, 4], [5, 8])
    out = fam.ln_dpo_loss(logps, fam.LNDPOParams(beta=5.0))
    assert out.losses.tolist() == pytest.approx([0.126928011043, 0.023245464372], abs=1e-11)
    assert out.metrics["rewards/margins"].tolist() == pytest.approx([2.0, 3.75], abs=TOL)


def test_ln_dpo_with_equal_lengths_is_dpo_with_beta_over_length():
    """All lengths L = 5: Δ̄ = Δ/5, so LN-DPO with β = 5 equals DPO with β = 1."""
    logps = pair([-10.0, -15.0, -7.0], [-12.0, -9.0, -4.0], [-11.0, -12.0, -6.0], [-11.0, -10.0, -6.0])
    ln = fam.ln_dpo_loss(logps, fam.LNDPOParams(beta=5.0))
    plain = dpo_loss(logps, DPOParams(beta=1.0))
    torch.testing.assert_close(ln.losses, plain.losses, atol=TOL, rtol=0)


def test_ln_dpo_default_beta_is_per_token_scale():
    assert fam.LNDPOParams().beta == 5.0


# ---------------------------------------------------------------------------------------------
# RPO
# ---------------------------------------------------------------------------------------------


def test_rpo_worked_example_with_defaults():
    """β = 0.01, η = 0.005. ρ_c = 1, ρ_r = −1, Δ = 2, h = 0.02; chosen −10 over 5 tokens: NLL = 2.

    loss = softplus(−0.02) + 0.005·2 = 0.683197179727 + 0.01 = 0.693197179727.
    """
    params = fam.RPOParams()
    assert (params.beta, params.eta, params.eta_times_beta) == (0.01, 0.005, False)
    out = fam.rpo_loss(pair([-10.0], [-12.0], [-11.0], [-11.0]), params)
    assert loss0(out) == pytest.approx(0.693197179727, abs=1e-11)
    assert float(out.metrics["rpo/nll"][0]) == pytest.approx(2.0, abs=TOL)


def test_rpo_eta_times_beta_switch():
    """With the weight η·β = 0.005·0.01 = 5e−5: loss = 0.683197179727 + 5e−5·2 = 0.683297179727."""
    out = fam.rpo_loss(pair([-10.0], [-12.0], [-11.0], [-11.0]), fam.RPOParams(eta_times_beta=True))
    assert loss0(out) == pytest.approx(0.683297179727, abs=1e-11)


def test_rpo_with_eta_zero_is_dpo():
    logps = pair([-10.0, -15.0], [-12.0, -9.0], [-11.0, -12.0], [-11.0, -10.0])
    out = fam.rpo_loss(logps, fam.RPOParams(beta=0.3, eta=0.0))
    torch.testing.assert_close(out.losses, dpo_loss(logps, DPOParams(beta=0.3)).losses, atol=TOL, rtol=0)


def test_rpo_gradient_by_hand():
    """dL/dc = −β·σ(−h) − η/|yw| = −0.01·σ(−0.02) − 0.005/5 = −0.0059500016666."""
    logps = pair([-10.0], [-12.0], [-11.0], [-11.0], requires_grad=True)
    fam.rpo_loss(logps, fam.RPOParams()).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.01 * sigmoid(-0.02) - 0.001, abs=1e-12)
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.0059500016666, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# DPOP
# ---------------------------------------------------------------------------------------------


def test_dpop_penalty_active():
    """Chosen −12 below its reference −11: penalty = max(0, −11 + 12) = 1.
    ρ_c = −1, ρ_r = −14 + 11 = −3, Δ = 2. β = 0.1, λ = 50: h = 0.1·(2 − 50·1) = −4.8,
    loss = softplus(4.8) = 4.808196067338.
    """
    out = fam.dpop_loss(pair([-12.0], [-14.0], [-11.0], [-11.0]), fam.DPOPParams())
    assert loss0(out) == pytest.approx(4.808196067338, abs=1e-11)
    assert float(out.metrics["dpop/penalty"][0]) == pytest.approx(1.0, abs=TOL)


def test_dpop_equals_dpo_when_chosen_is_above_its_reference_or_lambda_is_zero():
    """Chosen −10 ≥ reference −11: the penalty is 0 and DPOP is DPO: softplus(−0.2) = 0.598138869382."""
    logps = pair([-10.0], [-12.0], [-11.0], [-11.0])
    assert loss0(fam.dpop_loss(logps, fam.DPOPParams())) == pytest.approx(0.598138869382, abs=1e-11)
    below = pair([-12.0, -30.0], [-14.0, -29.0], [-11.0, -20.0], [-11.0, -25.0])
    torch.testing.assert_close(fam.dpop_loss(below, fam.DPOPParams(lam=0.0)).losses,
                               dpo_loss(below, DPOParams()).losses, atol=TOL, rtol=0)


def test_dpop_gradient_pushes_chosen_up_harder_when_penalised():
    """Penalty active: dL/dc = −β(1 + λ)·σ(−h) with h = −4.8: −0.1·51·σ(4.8)."""
    logps = pair([-12.0], [-14.0], [-11.0], [-11.0], requires_grad=True)
    fam.dpop_loss(logps, fam.DPOPParams()).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.1 * 51 * sigmoid(4.8), abs=TOL)


# ---------------------------------------------------------------------------------------------
# γ-DPO
# ---------------------------------------------------------------------------------------------


def test_gamma_dpo_hand_values():
    """Policy chosen −10, rejected −12 (difference 2); reference −11, −13 (difference 2). β = 0.1.
    γ = 1: h = 0.1·(2 − 2) = 0, loss log 2. γ = 0.5: h = 0.1·(2 − 1) = 0.1, loss softplus(−0.1)
    = 0.644396660074. γ = 0: h = 0.2, loss softplus(−0.2) = 0.598138869382.
    """
    logps = pair([-10.0], [-12.0], [-11.0], [-13.0])
    for gamma, expected in [(1.0, LOG2), (0.5, 0.644396660074), (0.0, 0.598138869382)]:
        out = fam.gamma_dpo_loss(logps, fam.GammaDPOParams(gamma=gamma))
        assert loss0(out) == pytest.approx(expected, abs=1e-11), gamma


def test_gamma_dpo_with_gamma_one_is_dpo():
    logps = pair([-10.0, -15.0, -7.0], [-12.0, -9.0, -4.0], [-11.0, -12.0, -6.0], [-11.0, -10.0, -6.0])
    out = fam.gamma_dpo_loss(logps, fam.GammaDPOParams(beta=0.3, gamma=1.0))
    ref = dpo_loss(logps, DPOParams(beta=0.3))
    torch.testing.assert_close(out.losses, ref.losses, atol=TOL, rtol=0)
    margins, ref_margins = out.metrics["rewards/margins"], ref.metrics["rewards/margins"]
    torch.testing.assert_close(margins, ref_margins, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# f-DPO
# ---------------------------------------------------------------------------------------------

# ρ_c = −8 + 10 = 2, ρ_r = −10 + 10 = 0, β = 0.1 for all hand values below.
F_PAIR = ([-8.0], [-10.0], [-10.0], [-10.0])


def test_f_dpo_reverse_kl_is_dpo():
    logps = pair([-10.0, -15.0, -7.0], [-12.0, -9.0, -4.0], [-11.0, -12.0, -6.0], [-11.0, -10.0, -6.0])
    out = fam.f_dpo_reverse_kl_loss(logps, DPOParams(beta=0.3))
    torch.testing.assert_close(out.losses, dpo_loss(logps, DPOParams(beta=0.3)).losses, atol=TOL, rtol=0)


def test_f_dpo_forward_kl_hand_value():
    """s(ρ) = −e^{−ρ}: s(2) − s(0) = 1 − e^{−2} = 0.864664716763, h = 0.0864664716763,
    loss = softplus(−h) = 0.650848210075."""
    out = fam.f_dpo_forward_kl_loss(pair(*F_PAIR), DPOParams())
    assert loss0(out) == pytest.approx(0.650848210075, abs=1e-11)
    assert float(out.metrics["rewards/margins"][0]) == pytest.approx(0.0864664716763, abs=1e-12)


def test_f_dpo_js_hand_value():
    """s(ρ) = log σ(ρ): s(2) − s(0) = log(2σ(2)) = 0.566219169517, h = 0.0566219169517,
    loss = softplus(−h) = 0.665236923746."""
    out = fam.f_dpo_js_loss(pair(*F_PAIR), DPOParams())
    assert loss0(out) == pytest.approx(0.665236923746, abs=1e-11)


def test_f_dpo_alpha_hand_value():
    """α = 0.5: s(ρ) = (1 − e^{−ρ/2})/0.5; s(2) − s(0) = 2(1 − e^{−1}) = 1.264241117657, h = 0.1264241117657,
    loss = softplus(−h) = 0.631931677587."""
    out = fam.f_dpo_alpha_loss(pair(*F_PAIR), fam.FDPOAlphaParams())
    assert loss0(out) == pytest.approx(0.631931677587, abs=1e-11)


def test_f_dpo_alpha_limits():
    """α → 0 gives s(ρ) → ρ (DPO); α → 1 gives 1 − e^{−ρ}, the forward-KL score up to a constant."""
    logps = pair([-10.0, -15.0, -7.0], [-12.0, -9.0, -4.0], [-11.0, -12.0, -6.0], [-11.0, -10.0, -6.0])
    near_zero = fam.f_dpo_alpha_loss(logps, fam.FDPOAlphaParams(alpha=1e-9))
    torch.testing.assert_close(near_zero.losses, dpo_loss(logps, DPOParams()).losses, atol=1e-7, rtol=0)
    near_one = fam.f_dpo_alpha_loss(logps, fam.FDPOAlphaParams(alpha=1 - 1e-9))
    forward = fam.f_dpo_forward_kl_loss(logps, DPOParams())
    torch.testing.assert_close(near_one.losses, forward.losses, atol=1e-7, rtol=0)


@pytest.mark.parametrize("fn,params", [
    (fam.f_dpo_reverse_kl_loss, DPOParams()),
    (fam.f_dpo_forward_kl_loss, DPOParams()),
    (fam.f_dpo_js_loss, DPOParams()),
    (fam.f_dpo_alpha_loss, fam.FDPOAlphaParams(alpha=0.3)),
])
def test_f_dpo_at_policy_equals_reference_is_log_2_and_swap_mirrors(fn, params):
    """ρ = 0 on both sides gives equal scores, h = 0, loss log 2. Swapping chosen and rejected maps h
    to −h, so loss(swapped) − loss = h for every score function."""
    same = fn(pair([-3.0, -40.0], [-7.0, -1.0], [-3.0, -40.0], [-7.0, -1.0]), params)
    torch.testing.assert_close(same.losses, f64([LOG2, LOG2]), atol=TOL, rtol=0)
    pc, pr, rc, rr = [-10.0, -15.0], [-12.0, -9.0], [-11.0, -12.0], [-11.0, -10.0]
    out, swapped = fn(pair(pc, pr, rc, rr), params), fn(pair(pr, pc, rr, rc), params)
    margins = out.metrics["rewards/margins"]
    torch.testing.assert_close(swapped.metrics["rewards/margins"], -margins, atol=TOL, rtol=0)
    torch.testing.assert_close(swapped.losses - out.losses, margins, atol=TOL, rtol=0)


def test_f_dpo_exponent_is_clamped_to_stay_finite():
    """ρ_c = −1000: the α-score exponent −αρ = 500 is clamped to 80, so s = (1 − e^{80})/0.5 and the
    loss is finite: h = 0.1·(s − 0) = −0.2·(e^{80} − 1), loss = −h (softplus(−h) = −h at that size)."""
    logps = pair([-1010.0], [-10.0], [-10.0], [-10.0])
    out = fam.f_dpo_alpha_loss(logps, fam.FDPOAlphaParams(alpha=0.5))
    assert math.isfinite(loss0(out))
    assert loss0(out) == pytest.approx(0.2 * (math.exp(80.0) - 1.0), rel=1e-12)
    assert math.isfinite(loss0(fam.f_dpo_forward_kl_loss(logps, DPOParams())))


# ---------------------------------------------------------------------------------------------
# LD-DPO
# ---------------------------------------------------------------------------------------------


def ld_pair(**kw) -> PairLogps:
    """Chosen 2 tokens, rejected 4 tokens, so l_p = 2 and only the rejected response has a tail.

    policy chosen   [−1, −2]              sum −3
    policy rejected [−0.5, −1, −3, −2]    sum −6.5 (prefix −1.5, tail −5)
    ref chosen      [−1.5, −1.5]          sum −3
    ref rejected    [−1, −1, −1, −1]      sum −4   (prefix −2, tail −2)
    Per-token tensors are (1, 4), zero past each row's length.
    """
    tok = {
        "chosen_tokens": f64([[-1.0, -2.0, 0.0, 0.0]]),
        "rejected_tokens": f64([[-0.5, -1.0, -3.0, -2.0]]),
        "ref_chosen_tokens": f64([[-1.5, -1.5, 0.0, 0.0]]),
        "ref_rejected_tokens": f64([[-1.0, -1.0, -1.0, -1.0]]),
    }
    return pair([-3.0], [-6.5], [-3.0], [-4.0], [2], [4], **{**tok, **kw})


def test_ld_dpo_worked_example():
    """The default (policy and reference desensitized alike, TRL >= 0.29), α = 0.5, β = 0.1.
    Chosen: ℓ' = −3, ℓ'ref = −3, ρ'_c = 0.
    Rejected: ℓ' = −1.5 + 0.5·(−5) = −4, ℓ'ref = −2 + 0.5·(−2) = −3, ρ'_r = −1.
    h = 0.1·(0 + 1) = 0.1, loss = softplus(−0.1) = 0.644396660074.
    (Plain DPO: ρ_r = −6.5 + 4 = −2.5, h = 0.25, loss 0.575939419879.)
    """
    assert fam.LDDPOParams().desensitize_reference is True
    out = fam.ld_dpo_loss(ld_pair(), fam.LDDPOParams(alpha=0.5))
    assert loss0(out) == pytest.approx(0.644396660074, abs=1e-11)
    assert float(out.metrics["rewards/rejected"][0]) == pytest.approx(-0.1, abs=TOL)
    assert float(out.metrics["rewards/chosen"][0]) == pytest.approx(0.0, abs=TOL)


def test_ld_dpo_policy_only_option():
    """desensitize_reference=False (TRL 0.18-0.28): the reference keeps its plain sums. α = 0.5, β = 0.1.
    Chosen: ℓ' = −3, ℓref = −3, ρ'_c = 0. Rejected: ℓ' = −1.5 + 0.5·(−5) = −4, ℓref = −4, ρ'_r = 0.
    h = 0, loss = log 2 = 0.693147180560 here (plain DPO's h is 0.25)."""
    params = fam.LDDPOParams(alpha=0.5, desensitize_reference=False)
    out = fam.ld_dpo_loss(ld_pair(), params)
    assert loss0(out) == pytest.approx(math.log(2), abs=1e-12)
    # without reference per-token values it still runs: they are not needed
    out = fam.ld_dpo_loss(ld_pair(ref_chosen_tokens=None, ref_rejected_tokens=None), params)
    assert loss0(out) == pytest.approx(math.log(2), abs=1e-12)
    with pytest.raises(ValueError, match="per-token"):
        fam.ld_dpo_loss(ld_pair(ref_chosen_tokens=None), fam.LDDPOParams())


def same_tokens_pair() -> PairLogps:
    """ld_pair's policy tokens as both policy and reference: chosen [−1, −2] (sum −3), rejected
    [−0.5, −1, −3, −2] (sum −6.5; prefix −1.5, tail past l_p = 2: −5)."""
    chosen_t, rejected_t = f64([[-1.0, -2.0, 0.0, 0.0]]), f64([[-0.5, -1.0, -3.0, -2.0]])
    return pair([-3.0], [-6.5], [-3.0], [-6.5], [2], [4], chosen_tokens=chosen_t, rejected_tokens=rejected_t,
                ref_chosen_tokens=chosen_t.clone(), ref_rejected_tokens=rejected_t.clone())


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_ld_dpo_default_at_policy_equals_reference_is_log_2(alpha):
    """Default: ℓ' = ℓ'ref for both responses, so ρ'_c = ρ'_r = 0, h = 0 and the loss is log 2 for every α."""
    out = fam.ld_dpo_loss(same_tokens_pair(), fam.LDDPOParams(alpha=alpha))
    assert loss0(out) == pytest.approx(math.log(2), abs=1e-12)
    assert float(out.metrics["rewards/margins"][0]) == 0.0


def test_ld_dpo_policy_only_at_policy_equals_reference_favours_the_longer_response():
    """desensitize_reference=False, α = 0.5, β = 0.1, policy = reference:
    rejected ℓ' = −1.5 + 0.5·(−5) = −4 against ℓref = −6.5, so ρ'_r = 2.5 = −(1 − α)·(tail −5); ρ'_c = 0.
    h = 0.1·(0 − 2.5) = −0.25, loss = softplus(0.25) = 0.575939419879 + 0.25 = 0.825939419879 > log 2.
    α = 0.2: ρ'_r = 0.8·5 = 4, h = −0.4, loss = softplus(0.4) = 0.913015252400."""
    out = fam.ld_dpo_loss(same_tokens_pair(), fam.LDDPOParams(alpha=0.5, desensitize_reference=False))
    assert loss0(out) == pytest.approx(0.825939419879, abs=1e-11)
    assert float(out.metrics["rewards/rejected"][0]) == pytest.approx(0.25, abs=TOL)
    out = fam.ld_dpo_loss(same_tokens_pair(), fam.LDDPOParams(alpha=0.2, desensitize_reference=False))
    assert loss0(out) == pytest.approx(0.913015252400, abs=1e-11)


def test_ld_dpo_alpha_zero_drops_the_tail():
    """α = 0: rejected ℓ' = −1.5, ℓ'ref = −2, ρ'_r = 0.5, h = 0.1·(0 − 0.5) = −0.05,
    loss = softplus(0.05) = 0.718459648013."""
    out = fam.ld_dpo_loss(ld_pair(), fam.LDDPOParams(alpha=0.0))
    assert loss0(out) == pytest.approx(0.718459648013, abs=1e-11)


def test_ld_dpo_alpha_one_is_dpo():
    """α = 1 keeps every token: h = 0.1·(0 + 2.5) = 0.25, loss = softplus(−0.25) = 0.575939419879."""
    logps = ld_pair()
    out = fam.ld_dpo_loss(logps, fam.LDDPOParams(alpha=1.0))
    assert loss0(out) == pytest.approx(0.575939419879, abs=1e-11)
    assert loss0(out) == pytest.approx(loss0(dpo_loss(logps, DPOParams())), abs=TOL)


def test_ld_dpo_batch_tail_follows_the_longer_response_of_each_pair():
    """Row 0 is ld_pair (rejected longer). Row 1 has the longer *chosen*: chosen [−1, −1, −4] (3 tokens),
    rejected [−2] (1 token), ref chosen [−1, −1, −1], ref rejected [−1]; l_p = 1.
    α = 0.5: ℓ'_c = −1 + 0.5·(−5) = −3.5, ℓ'ref_c = −1 + 0.5·(−2) = −2, ρ'_c = −1.5; ρ'_r = −2 + 1 = −1.
    h = 0.1·(−1.5 + 1) = −0.05, loss = softplus(0.05) = 0.718459648013.
    """
    row0 = ld_pair()
    chosen_t = torch.cat([row0.chosen_tokens, f64([[-1.0, -1.0, -4.0, 0.0]])])
    rejected_t = torch.cat([row0.rejected_tokens, f64([[-2.0, 0.0, 0.0, 0.0]])])
    ref_chosen_t = torch.cat([row0.ref_chosen_tokens, f64([[-1.0, -1.0, -1.0, 0.0]])])
    ref_rejected_t = torch.cat([row0.ref_rejected_tokens, f64([[-1.0, 0.0, 0.0, 0.0]])])
    logps = pair([-3.0, -6.0], [-6.5, -2.0], [-3.0, -3.0], [-4.0, -1.0], [2, 3], [4, 1],
                 chosen_tokens=chosen_t, rejected_tokens=rejected_t,
                 ref_chosen_tokens=ref_chosen_t, ref_rejected_tokens=ref_rejected_t)
    out = fam.ld_dpo_loss(logps, fam.LDDPOParams(alpha=0.5))
    assert out.losses.tolist() == pytest.approx([0.644396660074, 0.718459648013], abs=1e-11)


def test_ld_dpo_equal_lengths_ignore_alpha():
    """|yw| = |yl| means no tail: every α gives plain DPO."""
    tokens = dict(chosen_tokens=f64([[-1.0, -2.0]]), rejected_tokens=f64([[-3.0, -1.0]]),
                  ref_chosen_tokens=f64([[-1.5, -2.5]]), ref_rejected_tokens=f64([[-1.0, -1.0]]))
    logps = pair([-3.0], [-4.0], [-4.0], [-2.0], [2], [2], **tokens)
    for alpha in (0.0, 0.3, 1.0):
        assert loss0(fam.ld_dpo_loss(logps, fam.LDDPOParams(alpha=alpha))) == pytest.approx(
            loss0(dpo_loss(logps, DPOParams())), abs=TOL)


def test_ld_dpo_gradient_scales_tail_tokens_by_alpha():
    """dL/d(rejected token t) = +β·σ(−h) for prefix tokens and α·β·σ(−h) for tail tokens (h = 0.1)."""
    logps = ld_pair(rejected_tokens=torch.tensor([[-0.5, -1.0, -3.0, -2.0]], dtype=torch.float64,
                                                 requires_grad=True))
    fam.ld_dpo_loss(logps, fam.LDDPOParams(alpha=0.5)).losses.sum().backward()
    g = 0.1 * sigmoid(-0.1)
    assert logps.rejected_tokens.grad[0].tolist() == pytest.approx([g, g, 0.5 * g, 0.5 * g], abs=TOL)


def test_ld_dpo_without_tokens_raises():
    with pytest.raises(ValueError, match="tokens"):
        fam.ld_dpo_loss(pair([-3.0], [-6.5], [-3.0], [-4.0]), fam.LDDPOParams())


# ---------------------------------------------------------------------------------------------
# WPO
# ---------------------------------------------------------------------------------------------


def test_wpo_weight_below_one():
    """Chosen −10 over 5 tokens, Σ log Σπ² = −8: m_c = (−10 + 8)/5 = −0.4.
    Rejected −12 over 4 tokens, Σ log Σπ² = −10: m_r = (−12 + 10)/4 = −0.5.
    w = exp(−0.9) = 0.406569659741; DPO part: ρ_c = 1, ρ_r = −1, h = 0.2, softplus(−0.2) = 0.598138869382.
    loss = 0.406569659741·0.598138869382 = 0.243185116602.
    """
    logps = pair([-10.0], [-12.0], [-11.0], [-11.0], [5], [4], chosen_sqmass=f64([-8.0]),
                 rejected_sqmass=f64([-10.0]))
    out = fam.wpo_loss(logps, fam.WPOParams())
    assert float(out.metrics["wpo/weight"][0]) == pytest.approx(0.406569659741, abs=1e-11)
    assert loss0(out) == pytest.approx(0.243185116602, abs=1e-11)


def test_wpo_weight_is_capped_at_one_unless_switched_off():
    """Σ log Σπ² = −15 for chosen: m_c = (−10 + 15)/5 = 1, m_r = −0.5, e^{0.5} = 1.648721270700.
    Capped: w = 1 and the loss is DPO's 0.598138869382; uncapped: 1.648721270700·0.598138869382 =
    0.986164276782."""
    logps = pair([-10.0], [-12.0], [-11.0], [-11.0], [5], [4], chosen_sqmass=f64([-15.0]),
                 rejected_sqmass=f64([-10.0]))
    assert loss0(fam.wpo_loss(logps, fam.WPOParams())) == pytest.approx(0.598138869382, abs=1e-11)
    uncapped = fam.wpo_loss(logps, fam.WPOParams(clamp_weight=False))
    assert float(uncapped.metrics["wpo/weight"][0]) == pytest.approx(1.648721270700, abs=1e-11)
    assert loss0(uncapped) == pytest.approx(0.986164276782, abs=1e-11)


def test_wpo_weight_carries_no_gradient():
    """The weight is detached: dL/dc = w·(−β·σ(−h)) = −0.406569659741·0.1·σ(−0.2)."""
    logps = pair([-10.0], [-12.0], [-11.0], [-11.0], [5], [4], requires_grad=True,
                 chosen_sqmass=f64([-8.0]), rejected_sqmass=f64([-10.0]))
    fam.wpo_loss(logps, fam.WPOParams()).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-math.exp(-0.9) * 0.1 * sigmoid(-0.2), abs=1e-12)


def test_wpo_without_sqmass_raises():
    with pytest.raises(ValueError, match="sqmass"):
        fam.wpo_loss(pair([-10.0], [-12.0], [-11.0], [-11.0]), fam.WPOParams())


# ---------------------------------------------------------------------------------------------
# BVPO
# ---------------------------------------------------------------------------------------------


def test_bvpo_weights_make_the_epoch_mean_the_alpha_mixture():
    """Four pairs, one trace pair (group 1) and three empty-trace pairs: f = 1/4. α = 0.8.
    Weights: trace 0.8/0.25 = 3.2, empty 0.2/0.75 = 0.2666...
    mean(losses) = (3.2·L0 + (0.2/0.75)(L1 + L2 + L3))/4 = 0.8·L0 + 0.2·mean(L1, L2, L3).
    """
    pc, pr, rc, rr = [-10.0, -15.0, -7.0, -3.0], [-12.0, -9.0, -4.0, -3.5], [-11.0, -12.0, -6.0, -3.25], \
        [-11.0, -10.0, -6.0, -3.0]
    logps = pair(pc, pr, rc, rr, group=f64([1.0, 0.0, 0.0, 0.0]), state={"trace_fraction": 0.25})
    out = fam.bvpo_loss(logps, fam.BVPOParams(alpha=0.8))
    plain = dpo_loss(logps, DPOParams()).losses
    assert out.metrics["bvpo/weight"].tolist() == pytest.approx([3.2, 0.2 / 0.75, 0.2 / 0.75, 0.2 / 0.75],
                                                                abs=TOL)
    expected = 0.8 * float(plain[0]) + 0.2 * float(plain[1:].mean())
    assert float(out.losses.mean()) == pytest.approx(expected, abs=TOL)
    # First pair by hand: h = 0.2, 3.2·softplus(−0.2) = 3.2·0.598138869382 = 1.914044382022.
    assert loss0(out) == pytest.approx(1.914044382022, abs=1e-11)


def test_bvpo_default_half_and_half_is_dpo():
    """α = 0.5 and no trace_fraction in the state (f = 0.5): every weight is 1."""
    logps = pair([-10.0, -15.0], [-12.0, -9.0], [-11.0, -12.0], [-11.0, -10.0], group=f64([1.0, 0.0]))
    out = fam.bvpo_loss(logps, fam.BVPOParams())
    torch.testing.assert_close(out.losses, dpo_loss(logps, DPOParams()).losses, atol=TOL, rtol=0)


@pytest.mark.parametrize("group,state,match", [
    (None, {}, "group"),
    ([1.0, 0.5], {}, "group"),
    ([1.0, 0.0], {"trace_fraction": 0.0}, "trace_fraction"),
    ([1.0, 0.0], {"trace_fraction": 1.0}, "trace_fraction"),
    ([1.0, 0.0], {"trace_fraction": float("nan")}, "trace_fraction"),
])
def test_bvpo_rejects_bad_groups_and_fractions(group, state, match):
    logps = pair([-10.0, -15.0], [-12.0, -9.0], [-11.0, -12.0], [-11.0, -10.0],
                 group=None if group is None else f64(group), state=state)
    with pytest.raises(ValueError, match=match):
        fam.bvpo_loss(logps, fam.BVPOParams())


# ---------------------------------------------------------------------------------------------
# Properties shared by the DPO-like losses
# ---------------------------------------------------------------------------------------------

SAME = ([-3.0, -40.5, -0.25], [-7.0, -1.0, -12.0], [-3.0, -40.5, -0.25], [-7.0, -1.0, -12.0])


@pytest.mark.parametrize("fn,params,extra", [
    (fam.ln_dpo_loss, fam.LNDPOParams(), {}),
    (fam.dpop_loss, fam.DPOPParams(), {}),
    (fam.gamma_dpo_loss, fam.GammaDPOParams(gamma=1.0), {}),
    (fam.wpo_loss, fam.WPOParams(), {"chosen_sqmass": f64([-100.0] * 3),
                                     "rejected_sqmass": f64([-100.0] * 3)}),
    (fam.bvpo_loss, fam.BVPOParams(), {"group": f64([1.0, 0.0, 1.0])}),
])
def test_dpo_like_losses_equal_log_2_when_policy_equals_reference(fn, params, extra):
    """h = 0 gives −log σ(0) = log 2 (WPO: its sqmass makes every weight ≥ 1, capped to 1)."""
    out = fn(pair(*SAME, **extra), params)
    torch.testing.assert_close(out.losses, f64([LOG2] * 3), atol=TOL, rtol=0)


def test_rpo_at_policy_equals_reference_is_log_2_plus_nll():
    """h = 0: loss = log 2 + η·(−chosen/5): chosen −3 gives log 2 + 0.005·0.6 = 0.696147180560."""
    out = fam.rpo_loss(pair([-3.0], [-7.0], [-3.0], [-7.0]), fam.RPOParams())
    assert loss0(out) == pytest.approx(LOG2 + 0.003, abs=TOL)


ALL_FNS = [
    ("ipo", {}), ("hinge", {}), ("ln-dpo", {}), ("rpo", {}), ("dpop", {}), ("gamma-dpo", {}),
    ("f-dpo-reverse-kl", {}), ("f-dpo-forward-kl", {}), ("f-dpo-js", {}), ("f-dpo-alpha", {}),
    ("wpo", {"chosen_sqmass": f64([-9.0, -3.0]), "rejected_sqmass": f64([-9.0, -3.0])}),
    ("bvpo", {"group": f64([1.0, 0.0])}), ("dove", {}),
]


@pytest.mark.parametrize("name,extra", ALL_FNS)
def test_losses_are_per_pair_and_metrics_are_detached(name, extra):
    spec = REGISTRY[name]
    logps = pair([-10.0, -3.0], [-12.0, -1.0], [-11.0, -2.0], [-11.0, -2.0], requires_grad=True, **extra)
    out = spec.fn(logps, spec.params())
    assert out.losses.shape == (2,)
    assert out.losses.requires_grad
    for key, value in out.metrics.items():
        assert value.shape == (2,), key
        assert not value.requires_grad, key
    assert torch.isfinite(out.losses).all()


@pytest.mark.parametrize("name,extra", ALL_FNS)
def test_gradient_raises_chosen_and_lowers_rejected(name, extra):
    """For a pair the model ranks wrongly, descent must raise the chosen log-prob and lower the rejected."""
    spec = REGISTRY[name]
    logps = pair([-15.0], [-9.0], [-12.0], [-10.0], requires_grad=True,
                 **{k: v[:1] for k, v in extra.items()})
    spec.fn(logps, spec.params()).losses.sum().backward()
    assert float(logps.chosen.grad[0]) < 0
    assert float(logps.rejected.grad[0]) > 0


# ---------------------------------------------------------------------------------------------
# Registry entries and parameter checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,shape,reduction,needs,defaults", [
    ("ipo", "pair", "mean", set(), {"beta": 0.1}),
    ("hinge", "pair", "sum", set(), {"beta": 0.1}),
    ("ln-dpo", "pair", "mean", set(), {"beta": 5.0}),
    ("rpo", "pair", "sum+mean", set(), {"beta": 0.01, "eta": 0.005, "eta_times_beta": False}),
    ("dpop", "pair", "sum", set(), {"beta": 0.1, "lam": 50.0}),
    ("gamma-dpo", "pair", "sum", set(), {"beta": 0.1, "gamma": 1.0}),
    ("f-dpo-reverse-kl", "pair", "sum", set(), {"beta": 0.1}),
    ("f-dpo-forward-kl", "pair", "sum", set(), {"beta": 0.1}),
    ("f-dpo-js", "pair", "sum", set(), {"beta": 0.1}),
    ("f-dpo-alpha", "pair", "sum", set(), {"beta": 0.1, "alpha": 0.5}),
    ("ld-dpo", "pair", "sum", {"tokens"}, {"beta": 0.1, "alpha": 0.5, "desensitize_reference": True}),
    ("wpo", "pair", "sum+mean", {"sqmass"}, {"beta": 0.1, "clamp_weight": True}),
    ("bvpo", "pair", "sum", {"group"}, {"beta": 0.1, "alpha": 0.5}),
    ("dove", "joint", "sum", set(), {"beta": 0.1}),
])
def test_registry_entries(name, shape, reduction, needs, defaults):
    spec = REGISTRY[name]
    assert spec.shape == shape
    assert spec.needs_reference is True
    assert spec.reduction == reduction
    assert set(spec.needs) == needs
    assert spec.defaults() == defaults
    assert spec.paper and spec.summary
    assert spec.init_state is None
    for f in dataclasses.fields(spec.params):
        assert f.metadata.get("help"), f"{name}.{f.name}"


def test_dove_is_dpo_on_joint_pairs():
    """Joint pairs: the same numbers as DPO (prompts may differ, the formula does not): h = 0.2."""
    spec = REGISTRY["dove"]
    assert spec.fn is dpo_loss and spec.params is DPOParams
    out = spec.fn(pair([-10.0], [-12.0], [-11.0], [-11.0]), spec.params())
    assert loss0(out) == pytest.approx(0.598138869382, abs=1e-11)


BETA_CLASSES = [fam.IPOParams, fam.LNDPOParams, fam.RPOParams, fam.DPOPParams, fam.GammaDPOParams,
                fam.FDPOAlphaParams, fam.LDDPOParams, fam.WPOParams, fam.BVPOParams]


@pytest.mark.parametrize("cls", BETA_CLASSES)
@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_every_params_class_rejects_bad_beta(cls, beta):
    with pytest.raises(ParamError, match="^beta"):
        cls(beta=beta)


@pytest.mark.parametrize("cls,name,value", [
    (fam.RPOParams, "eta", -0.1),
    (fam.RPOParams, "eta", float("nan")),
    (fam.RPOParams, "eta_times_beta", 1),
    (fam.DPOPParams, "lam", -1.0),
    (fam.DPOPParams, "lam", float("inf")),
    (fam.GammaDPOParams, "gamma", -0.5),
    (fam.GammaDPOParams, "gamma", float("nan")),
    (fam.FDPOAlphaParams, "alpha", 0.0),
    (fam.FDPOAlphaParams, "alpha", 1.0),
    (fam.FDPOAlphaParams, "alpha", float("nan")),
    (fam.LDDPOParams, "alpha", -0.1),
    (fam.LDDPOParams, "alpha", 1.5),
    (fam.LDDPOParams, "desensitize_reference", "false"),
    (fam.WPOParams, "clamp_weight", "yes"),
    (fam.BVPOParams, "alpha", -0.01),
    (fam.BVPOParams, "alpha", 1.01),
])
def test_params_reject_out_of_range_values(cls, name, value):
    with pytest.raises(ParamError, match=f"^{name}"):
        cls(**{name: value})


@pytest.mark.parametrize("cls,name,value", [
    (fam.LDDPOParams, "alpha", 0.0), (fam.LDDPOParams, "alpha", 1.0), (fam.BVPOParams, "alpha", 0.0),
    (fam.BVPOParams, "alpha", 1.0), (fam.GammaDPOParams, "gamma", 0.0), (fam.RPOParams, "eta", 0.0),
])
def test_params_accept_the_ends_of_closed_ranges(cls, name, value):
    assert getattr(cls(**{name: value}), name) == value
