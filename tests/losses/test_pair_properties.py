"""Properties shared by the pairwise losses: swapping chosen and rejected mirrors the margin (for every
registered pair/joint loss), the loss identities that swap gives for the DPO-like links, and closed
forms at policy = reference for the losses whose own test files lack them.

Notation: ρ_c = policy_chosen − ref_chosen, ρ_r = policy_rejected − ref_rejected, h = β(ρ_c − ρ_r),
softplus(x) = log(1 + e^x), so −log σ(h) = softplus(−h) and softplus(h) − softplus(−h) = h.
The worked pair: policy −10 / −12, reference −11 / −11, lengths 5 / 5: ρ_c = 1, ρ_r = −1, and at
β = 0.1, h = 0.2: softplus(−0.2) = 0.598138869382, softplus(0.2) = 0.798138869382.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses import REGISTRY, robust
from alignlab.losses import dpo_family as fam
from alignlab.losses.dpo import DPOParams
from alignlab.losses.dpo_alternatives import BCOPairParams, bco_pair_loss
from alignlab.losses.types import PairLogps

TOL = 1e-9
LOG2 = math.log(2.0)
SP_M02, SP_02 = 0.598138869382, 0.798138869382


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def pair(chosen, rejected, ref_chosen, ref_rejected, chosen_len=None, rejected_len=None, **extra) -> PairLogps:
    n = len(chosen)
    return PairLogps(
        chosen=f64(chosen), rejected=f64(rejected),
        chosen_len=torch.tensor(chosen_len if chosen_len is not None else [5] * n),
        rejected_len=torch.tensor(rejected_len if rejected_len is not None else [5] * n),
        ref_chosen=f64(ref_chosen), ref_rejected=f64(ref_rejected), **extra,
    )


WORKED = ([-10.0], [-12.0], [-11.0], [-11.0])


def loss0(out) -> float:
    return float(out.losses[0])


# ------------------------------------------------------------------ every pair loss: the margin


def full_pairs() -> PairLogps:
    """Three pairs carrying every optional field, with per-token log-probs that add up to the sums.

    Chosen tokens (lengths 2, 3, 1) and rejected tokens (lengths 3, 1, 2), zero past each length.
    """
    chosen_t = f64([[-1.0, -2.0, 0.0], [-3.0, -1.0, -2.0], [-0.5, 0.0, 0.0]])
    rejected_t = f64([[-2.0, -2.0, -1.0], [-4.0, 0.0, 0.0], [-1.0, -1.5, 0.0]])
    ref_chosen_t = f64([[-1.5, -1.5, 0.0], [-2.0, -2.0, -2.0], [-1.0, 0.0, 0.0]])
    ref_rejected_t = f64([[-1.0, -1.0, -1.0], [-3.0, 0.0, 0.0], [-2.0, -2.0, 0.0]])
    return PairLogps(
        chosen=chosen_t.sum(1), rejected=rejected_t.sum(1), chosen_len=torch.tensor([2, 3, 1]),
        rejected_len=torch.tensor([3, 1, 2]), ref_chosen=ref_chosen_t.sum(1), ref_rejected=ref_rejected_t.sum(1),
        chosen_tokens=chosen_t, rejected_tokens=rejected_t, ref_chosen_tokens=ref_chosen_t,
        ref_rejected_tokens=ref_rejected_t, chosen_sqmass=f64([-4.0, -6.0, -1.0]),
        rejected_sqmass=f64([-5.0, -2.0, -3.0]), strength=f64([0.9, 0.6, 1.0]), group=f64([1.0, 0.0, 1.0]),
    )


# Policy losses on pairs (a reward model's loss takes its values, not log-probs: tests/losses/test_reward.py).
PAIR_LOSSES = sorted(name for name, spec in REGISTRY.items() if spec.shape in ("pair", "joint") and spec.model == "policy")


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_swapping_chosen_and_rejected_mirrors_the_margin(name):
    """For every registered pairwise loss: rewards/margins of the swapped pairs is minus that of the pairs,
    and the chosen and rejected rewards trade places."""
    spec = REGISTRY[name]
    logps = full_pairs()
    params = spec.params()
    out, swapped = spec.fn(logps, params), spec.fn(logps.swapped(), params)
    m, s = out.metrics, swapped.metrics
    torch.testing.assert_close(s["rewards/margins"], -m["rewards/margins"], atol=1e-12, rtol=0)
    torch.testing.assert_close(s["rewards/chosen"], m["rewards/rejected"], atol=1e-12, rtol=0)
    torch.testing.assert_close(s["rewards/rejected"], m["rewards/chosen"], atol=1e-12, rtol=0)
    assert torch.isfinite(out.losses).all() and torch.isfinite(swapped.losses).all()


# --------------------------------------------------------------- swap identities, by hand


def test_hinge_swap_by_hand():
    """β = 0.1, h = 0.2: L = 1 − 0.2 = 0.8; swapped h = −0.2: L = 1.2. Inside the margin the difference
    is (1 + h) − (1 − h) = 2h = 0.4."""
    out = fam.hinge_loss(pair(*WORKED), DPOParams())
    swapped = fam.hinge_loss(pair(*WORKED).swapped(), DPOParams())
    assert (loss0(out), loss0(swapped)) == (pytest.approx(0.8, abs=TOL), pytest.approx(1.2, abs=TOL))


def test_ln_dpo_swap_by_hand():
    """β = 5: Δ̄ = 1/5 + 1/5 = 0.4, h = 2: L = softplus(−2) = 0.126928011043; swapped softplus(2)
    = 2.126928011043; difference h = 2."""
    out = fam.ln_dpo_loss(pair(*WORKED), fam.LNDPOParams())
    swapped = fam.ln_dpo_loss(pair(*WORKED).swapped(), fam.LNDPOParams())
    assert loss0(out) == pytest.approx(0.126928011043, abs=1e-11)
    assert loss0(swapped) == pytest.approx(2.126928011043, abs=1e-11)


def test_gamma_dpo_swap_by_hand():
    """γ = 0.5, policy −10 / −12 (difference 2), reference −11 / −13 (difference 2):
    h = 0.1·(2 − 0.5·2) = 0.1, L = softplus(−0.1) = 0.644396660074; swapped softplus(0.1) = 0.744396660074."""
    logps = pair([-10.0], [-12.0], [-11.0], [-13.0])
    params = fam.GammaDPOParams(gamma=0.5)
    assert loss0(fam.gamma_dpo_loss(logps, params)) == pytest.approx(0.644396660074, abs=1e-11)
    assert loss0(fam.gamma_dpo_loss(logps.swapped(), params)) == pytest.approx(0.744396660074, abs=1e-11)


def test_rpo_swap_by_hand():
    """Defaults β = 0.01, η = 0.005: h = 0.02, NLL(chosen) = 10/5 = 2, NLL(rejected) = 12/5 = 2.4.
    L_swapped − L = [softplus(0.02) − softplus(−0.02)] + 0.005·(2.4 − 2) = 0.02 + 0.002 = 0.022."""
    out = fam.rpo_loss(pair(*WORKED), fam.RPOParams())
    swapped = fam.rpo_loss(pair(*WORKED).swapped(), fam.RPOParams())
    assert loss0(swapped) - loss0(out) == pytest.approx(0.022, abs=1e-12)


def test_dpop_swap_without_penalty_is_dpo_swap():
    """Both responses at or above their reference: policy −10 / −12, reference −11 / −12.5, so the penalty
    is 0 both ways. ρ_c = 1, ρ_r = 0.5, h = 0.05: L = softplus(−0.05) = 0.668459648013,
    swapped softplus(0.05) = 0.718459648013."""
    logps = pair([-10.0], [-12.0], [-11.0], [-12.5])
    assert loss0(fam.dpop_loss(logps, fam.DPOPParams())) == pytest.approx(0.668459648013, abs=1e-11)
    assert loss0(fam.dpop_loss(logps.swapped(), fam.DPOPParams())) == pytest.approx(0.718459648013, abs=1e-11)


def test_cdpo_swap_by_hand():
    """ε = 0.1, h = 0.2: L = 0.9·softplus(−0.2) + 0.1·softplus(0.2) = 0.618138869382;
    swapped 0.9·softplus(0.2) + 0.1·softplus(−0.2) = 0.778138869382; difference (1 − 2ε)·h = 0.16."""
    out = robust.cdpo_loss(pair(*WORKED), robust.CDPOParams(epsilon=0.1))
    swapped = robust.cdpo_loss(pair(*WORKED).swapped(), robust.CDPOParams(epsilon=0.1))
    assert loss0(out) == pytest.approx(0.618138869382, abs=1e-11)
    assert loss0(swapped) == pytest.approx(0.778138869382, abs=1e-11)


def test_rdpo_swap_by_hand():
    """ε = 0.1, h = 0.2: L = [0.9·softplus(−0.2) − 0.1·softplus(0.2)]/0.8 = 0.573138869382;
    swapped [0.9·softplus(0.2) − 0.1·softplus(−0.2)]/0.8 = 0.823138869382; difference h/(1 − 2ε) = 0.25."""
    out = robust.rdpo_loss(pair(*WORKED), robust.RDPOParams(epsilon=0.1))
    swapped = robust.rdpo_loss(pair(*WORKED).swapped(), robust.RDPOParams(epsilon=0.1))
    assert loss0(out) == pytest.approx(0.573138869382, abs=1e-11)
    assert loss0(swapped) == pytest.approx(0.823138869382, abs=1e-11)


def test_bco_pair_swap_difference_is_h_whatever_delta():
    """δ = 0.3: L = softplus(−(0.1 − 0.3)) + softplus(−0.1 − 0.3) = softplus(0.2) + softplus(−0.4) = 1.311154121782;
    swapped (r_w = −0.1, r_l = 0.1): softplus(0.4) + softplus(−0.2) = 0.913015252400 + 0.598138869382
    = 1.511154121782. In general the difference is (r_w − δ) − (r_l − δ) = h."""
    state = {"delta": 0.3, "count": 4.0}
    out = bco_pair_loss(pair(*WORKED, state=state), BCOPairParams())
    swapped = bco_pair_loss(pair(*WORKED, state=state).swapped(), BCOPairParams())
    assert loss0(out) == pytest.approx(1.311154121782, abs=1e-11)
    assert loss0(swapped) == pytest.approx(1.511154121782, abs=1e-11)


@pytest.mark.parametrize("name,params", [
    ("dove", DPOParams(beta=0.3)),
    ("ln-dpo", fam.LNDPOParams()),
    ("gamma-dpo", fam.GammaDPOParams(gamma=0.4)),
    ("f-dpo-reverse-kl", DPOParams()),
    ("ld-dpo", fam.LDDPOParams(alpha=0.3)),
    ("wpo", fam.WPOParams(clamp_weight=False)),
    ("bvpo", fam.BVPOParams(alpha=0.8)),
    ("bco-pair", BCOPairParams()),
])
def test_logistic_losses_swap_by_their_weighted_margin(name, params):
    """For −w·log σ(h) with a weight w that swapping keeps (1, WPO's e^{m_c + m_r}, BVPO's group weight):
    L_swapped − L = w·(softplus(h) − softplus(−h)) = w·h, with h the logged margin. bco-pair: weight 1."""
    spec = REGISTRY[name]
    logps = full_pairs()
    out, swapped = spec.fn(logps, params), spec.fn(logps.swapped(), params)
    weight = out.metrics.get("wpo/weight", out.metrics.get("bvpo/weight", torch.ones(3, dtype=torch.float64)))
    torch.testing.assert_close(swapped.losses - out.losses, weight * out.metrics["rewards/margins"],
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_cdpo_and_rdpo_swap_identities(epsilon):
    """cDPO: L(−h) − L(h) = (1 − 2ε)·h. rDPO: L(−h) − L(h) = h/(1 − 2ε)."""
    logps = full_pairs()
    cd, cd_s = (robust.cdpo_loss(x, robust.CDPOParams(epsilon=epsilon)) for x in (logps, logps.swapped()))
    rd, rd_s = (robust.rdpo_loss(x, robust.RDPOParams(epsilon=epsilon)) for x in (logps, logps.swapped()))
    h = cd.metrics["rewards/margins"]
    torch.testing.assert_close(cd_s.losses - cd.losses, (1 - 2 * epsilon) * h, atol=1e-12, rtol=0)
    torch.testing.assert_close(rd_s.losses - rd.losses, h / (1 - 2 * epsilon), atol=1e-12, rtol=0)


# --------------------------------------------------------------------- policy = reference


SAME = ([-3.0, -40.5, -0.25], [-7.0, -1.0, -12.0], [-3.0, -40.5, -0.25], [-7.0, -1.0, -12.0])


def test_soft_preference_at_policy_equals_reference_is_log_2_for_any_strength():
    """h = 0: −[p·log ½ + (1 − p)·log ½] = log 2 whatever p."""
    logps = pair(*SAME, strength=f64([0.5, 0.75, 1.0]))
    out = robust.soft_preference_loss(logps, robust.SoftPreferenceParams())
    torch.testing.assert_close(out.losses, f64([LOG2] * 3), atol=TOL, rtol=0)


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_lcpo_at_policy_equals_reference(noise):
    """h = 0: ℓ(h) = ℓ(−h) = log 2, P = ½, so w = (1 − ε)/2 / ((1 − ε)/2 + ε/2) = 1 − ε and the loss is log 2."""
    spec = REGISTRY["lcpo"]
    out = spec.fn(pair(*SAME, state={"noise": noise}), spec.params())
    torch.testing.assert_close(out.losses, f64([LOG2] * 3), atol=TOL, rtol=0)
    torch.testing.assert_close(out.metrics["lcpo/weight"], f64([1 - noise] * 3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_lcpo_ipo_at_policy_equals_reference(tau):
    """Δ̄ = 0: ℓ(h) = ℓ(−h) = (1/(2τ))² = 1/(4τ²): 25 at τ = 0.1, 1 at τ = 0.5; w = 1 − ε = 0.8."""
    spec = REGISTRY["lcpo-ipo"]
    out = spec.fn(pair(*SAME, state={"noise": 0.2}), spec.params(beta=tau))
    torch.testing.assert_close(out.losses, f64([1 / (4 * tau**2)] * 3), atol=TOL, rtol=0)
    torch.testing.assert_close(out.metrics["lcpo/weight"], f64([0.8] * 3), atol=1e-12, rtol=0)


def test_dove_at_policy_equals_reference_is_log_2():
    spec = REGISTRY["dove"]
    out = spec.fn(pair(*SAME), spec.params())
    torch.testing.assert_close(out.losses, f64([LOG2] * 3), atol=TOL, rtol=0)


def test_dove_equals_dpo_on_a_batch():
    """DPO's numbers on full_pairs' three pairs, β = 0.1 (the two prompts of a joint pair change nothing).
    Sums: policy chosen −3, −6, −0.5; rejected −5, −4, −2.5; reference chosen −3, −6, −1; rejected −3, −3, −4.
    ρ_c = 0, 0, 0.5; ρ_r = −2, −1, 1.5; Δ = 2, 1, −1; h = 0.2, 0.1, −0.1.
    Loss softplus(−h) = 0.598138869382, 0.644396660074, 0.744396660074; margins h."""
    out = REGISTRY["dove"].fn(full_pairs(), DPOParams())
    torch.testing.assert_close(out.losses, f64([0.598138869382, 0.644396660074, 0.744396660074]),
                               atol=1e-11, rtol=0)
    torch.testing.assert_close(out.metrics["rewards/margins"], f64([0.2, 0.1, -0.1]), atol=1e-12, rtol=0)
