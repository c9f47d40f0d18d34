"""Noise-robust pairwise losses (alignlab/losses/robust.py): cDPO, rDPO, soft preference, LCPO.

Notation: ρ_c = policy_chosen − ref_chosen, ρ_r = policy_rejected − ref_rejected, h = β(ρ_c − ρ_r),
softplus(x) = log(1 + e^x), so −log σ(h) = softplus(−h) and −log σ(−h) = softplus(h) = softplus(−h) + h.
All numbers are float64.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from alignlab.losses import robust
from alignlab.losses.dpo import DPOParams, dpo_loss
from alignlab.losses.dpo_family import IPOParams, ipo_loss
from alignlab.losses.params import ParamError
from alignlab.losses.registry import REGISTRY
from alignlab.losses.types import PairLogps

TOL = 1e-9
LOG2 = math.log(2.0)
SP_M02 = math.log1p(math.exp(-0.2))  # softplus(−0.2) = 0.598138869382 (DPO at h = 0.2)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def pair(chosen, rejected, ref_chosen, ref_rejected, requires_grad: bool = False, **extra) -> PairLogps:
    n = len(chosen)
    return PairLogps(
        chosen=torch.tensor(chosen, dtype=torch.float64, requires_grad=requires_grad),
        rejected=torch.tensor(rejected, dtype=torch.float64, requires_grad=requires_grad),
        chosen_len=torch.full((n,), 5),
        rejected_len=torch.full((n,), 5),
        ref_chosen=f64(ref_chosen),
        ref_rejected=f64(ref_rejected),
        **extra,
    )


# The h = 0.2 pair (β = 0.1): ρ_c = −10 + 11 = 1, ρ_r = −12 + 11 = −1.
H02 = ([-10.0], [-12.0], [-11.0], [-11.0])
# Four pairs for properties: Δ = [2, −4, −3, 0.75], so with β = 0.3, h = [0.6, −1.2, −0.9, 0.225].
MANY = ([-10.0, -15.0, -7.0, -3.0], [-12.0, -9.0, -4.0, -3.5],
        [-11.0, -12.0, -6.0, -3.25], [-11.0, -10.0, -6.0, -3.0])


# ---------------------------------------------------------------------------------------------
# cDPO
# ---------------------------------------------------------------------------------------------


def test_cdpo_worked_example():
    """ε = 0.1, h = 0.2: 0.9·softplus(−0.2) + 0.1·softplus(0.2) = softplus(−0.2) + 0.1·0.2
    = 0.598138869382 + 0.02 = 0.618138869382."""
    out = robust.cdpo_loss(pair(*H02), robust.CDPOParams(epsilon=0.1))
    assert float(out.losses[0]) == pytest.approx(0.618138869382, abs=1e-11)
    assert float(out.metrics["rewards/margins"][0]) == pytest.approx(0.2, abs=TOL)


def test_cdpo_default_epsilon_is_0_1_and_zero_is_dpo():
    assert robust.CDPOParams().epsilon == 0.1
    logps = pair(*MANY)
    out = robust.cdpo_loss(logps, robust.CDPOParams(beta=0.3, epsilon=0.0))
    torch.testing.assert_close(out.losses, dpo_loss(logps, DPOParams(beta=0.3)).losses, atol=TOL, rtol=0)


def test_cdpo_gradient_by_hand():
    """dL/dh = −(1 − ε)σ(−h) + εσ(h); dL/dc = β·dL/dh = 0.1·(−0.9σ(−0.2) + 0.1σ(0.2)) = −0.0350166002688."""
    logps = pair(*H02, requires_grad=True)
    robust.cdpo_loss(logps, robust.CDPOParams(epsilon=0.1)).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.0350166002688, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# rDPO
# ---------------------------------------------------------------------------------------------


def test_rdpo_worked_example():
    """ε = 0.1, h = 0.2: [0.9·softplus(−0.2) − 0.1·softplus(0.2)]/0.8 = [0.8·softplus(−0.2) − 0.1·0.2]/0.8
    = softplus(−0.2) − 0.025 = 0.573138869382."""
    out = robust.rdpo_loss(pair(*H02), robust.RDPOParams(epsilon=0.1))
    assert float(out.losses[0]) == pytest.approx(0.573138869382, abs=1e-11)


def test_rdpo_can_be_negative():
    """β = 1, h = 5, ε = 0.4: [0.6·softplus(−5) − 0.4·softplus(5)]/0.2 = −9.993284651511 < 0."""
    out = robust.rdpo_loss(pair([-5.0], [-10.0], [-10.0], [-10.0]), robust.RDPOParams(beta=1.0, epsilon=0.4))
    assert float(out.losses[0]) == pytest.approx(-9.993284651511, abs=1e-11)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.25, 0.45])
def test_rdpo_is_unbiased_under_label_flips(epsilon):
    """(1 − ε)·L_rdpo(pair) + ε·L_rdpo(swapped pair) = L_dpo(pair): the −(1−ε)² and ε² terms of log σ(h)
    leave −(1 − 2ε)·log σ(h), the cross terms in log σ(−h) cancel, and dividing by 1 − 2ε gives DPO."""
    pc, pr, rc, rr = MANY
    params = robust.RDPOParams(beta=0.3, epsilon=epsilon)
    clean = robust.rdpo_loss(pair(pc, pr, rc, rr), params).losses
    flipped = robust.rdpo_loss(pair(pr, pc, rr, rc), params).losses
    expected = dpo_loss(pair(pc, pr, rc, rr), DPOParams(beta=0.3)).losses
    torch.testing.assert_close((1 - epsilon) * clean + epsilon * flipped, expected, atol=1e-12, rtol=0)


def test_rdpo_at_epsilon_zero_is_dpo():
    logps = pair(*MANY)
    out = robust.rdpo_loss(logps, robust.RDPOParams(beta=0.3, epsilon=0.0))
    torch.testing.assert_close(out.losses, dpo_loss(logps, DPOParams(beta=0.3)).losses, atol=TOL, rtol=0)


def test_rdpo_gradient_always_raises_chosen():
    """dL/dh = −[(1 − ε)σ(−h) + εσ(h)]/(1 − 2ε) < 0 for any h: at h = 0.2, ε = 0.1,
    dL/dc = 0.1·(−(0.9σ(−0.2) + 0.1σ(0.2))/0.8)."""
    logps = pair(*H02, requires_grad=True)
    robust.rdpo_loss(logps, robust.RDPOParams(epsilon=0.1)).losses.sum().backward()
    expected = 0.1 * -(0.9 * sigmoid(-0.2) + 0.1 * sigmoid(0.2)) / 0.8
    assert float(logps.chosen.grad[0]) == pytest.approx(expected, abs=1e-12)
    assert float(logps.chosen.grad[0]) < 0


@pytest.mark.parametrize("fn,params", [
    (robust.cdpo_loss, robust.CDPOParams(epsilon=0.3)),
    (robust.rdpo_loss, robust.RDPOParams(epsilon=0.3)),
])
def test_cdpo_and_rdpo_equal_log_2_when_policy_equals_reference(fn, params):
    """h = 0: cDPO (1 − ε + ε)·log 2; rDPO ((1 − ε) − ε)·log 2/(1 − 2ε); both log 2."""
    out = fn(pair([-3.0, -40.0], [-7.0, -1.0], [-3.0, -40.0], [-7.0, -1.0]), params)
    torch.testing.assert_close(out.losses, f64([LOG2, LOG2]), atol=TOL, rtol=0)


@pytest.mark.parametrize("cls", [robust.CDPOParams, robust.RDPOParams])
@pytest.mark.parametrize("epsilon", [-0.01, 0.5, 0.7, float("nan")])
def test_flip_rate_must_be_in_zero_to_half(cls, epsilon):
    with pytest.raises(ParamError, match="^epsilon"):
        cls(epsilon=epsilon)


@pytest.mark.parametrize("cls", [robust.CDPOParams, robust.RDPOParams, robust.SoftPreferenceParams])
@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_beta_must_be_positive(cls, beta):
    with pytest.raises(ParamError, match="^beta"):
        cls(beta=beta)


# ---------------------------------------------------------------------------------------------
# Soft preference (OSP)
# ---------------------------------------------------------------------------------------------


def test_soft_preference_worked_example():
    """p = 0.8, h = 0.2: 0.8·softplus(−0.2) + 0.2·softplus(0.2) = softplus(−0.2) + 0.2·0.2
    = 0.638138869382."""
    out = robust.soft_preference_loss(pair(*H02, strength=f64([0.8])), robust.SoftPreferenceParams())
    assert float(out.losses[0]) == pytest.approx(0.638138869382, abs=1e-11)
    assert float(out.metrics["soft/strength"][0]) == pytest.approx(0.8, abs=TOL)


def test_soft_preference_with_p_one_is_dpo():
    logps = pair(*MANY, strength=f64([1.0] * 4))
    out = robust.soft_preference_loss(logps, robust.SoftPreferenceParams(beta=0.3))
    torch.testing.assert_close(out.losses, dpo_loss(logps, DPOParams(beta=0.3)).losses, atol=TOL, rtol=0)


@pytest.mark.parametrize("epsilon", [0.05, 0.2, 0.4])
def test_soft_preference_with_constant_p_is_cdpo(epsilon):
    logps = pair(*MANY, strength=f64([1.0 - epsilon] * 4))
    out = robust.soft_preference_loss(logps, robust.SoftPreferenceParams(beta=0.3))
    cdpo = robust.cdpo_loss(logps, robust.CDPOParams(beta=0.3, epsilon=epsilon))
    torch.testing.assert_close(out.losses, cdpo.losses, atol=TOL, rtol=0)


def test_soft_preference_per_pair_strengths_and_swap():
    """Strength p on (chosen, rejected) and 1 − p on the swapped pair give the same loss (the data say
    the same thing both ways): PairLogps.swapped() flips p to 1 − p."""
    logps = pair(*MANY, strength=f64([0.5, 0.7, 0.9, 1.0]))
    params = robust.SoftPreferenceParams(beta=0.3)
    out = robust.soft_preference_loss(logps, params)
    swapped = robust.soft_preference_loss(logps.swapped(), params)
    torch.testing.assert_close(out.losses, swapped.losses, atol=TOL, rtol=0)
    # p = 0.5 makes the two log σ terms equal-weighted: loss = softplus(−h) + h/2 with h = 0.6.
    assert float(out.losses[0]) == pytest.approx(math.log1p(math.exp(-0.6)) + 0.3, abs=TOL)


@pytest.mark.parametrize("strength", [None, [1.2], [-0.1], [float("nan")]])
def test_soft_preference_rejects_missing_or_invalid_strength(strength):
    logps = pair(*H02, strength=None if strength is None else f64(strength))
    with pytest.raises(ValueError, match="strength"):
        robust.soft_preference_loss(logps, robust.SoftPreferenceParams())


# ---------------------------------------------------------------------------------------------
# LCPO
# ---------------------------------------------------------------------------------------------


def lcpo():
    return REGISTRY["lcpo"]


def test_lcpo_e_step_by_hand():
    """DPO base, β = 0.1, h = 0.2, ε = 0.1.
    ℓ(h) = softplus(−0.2), ℓ(−h) = softplus(0.2), so P = σ(ℓ(−h) − ℓ(h)) = σ(0.2) = 0.549833997312.
    w = 0.9·P / (0.9·P + 0.1·(1 − P)) = 0.494850597581 / 0.539867197851 = 0.916615418666.
    loss = w·softplus(−0.2) + (1 − w)·softplus(0.2) = softplus(−0.2) + (1 − w)·0.2 = 0.614815785648.
    stats: noise_sum = 1 − w = 0.083384581334, count = 1.
    """
    spec = lcpo()
    out = spec.fn(pair(*H02, state={"noise": 0.1}), spec.params())
    assert float(out.metrics["lcpo/weight"][0]) == pytest.approx(0.916615418666, abs=1e-11)
    assert float(out.losses[0]) == pytest.approx(0.614815785648, abs=1e-11)
    assert float(out.stats["noise_sum"]) == pytest.approx(0.083384581334, abs=1e-11)
    assert float(out.stats["count"]) == 1.0


def test_lcpo_weights_formula_matches_bayes_rule():
    """lcpo_weights(ℓ, ℓ_swapped, ε) = (1 − ε)P / ((1 − ε)P + ε(1 − P)) with P = σ(ℓ_swapped − ℓ)."""
    fwd, sw = f64([0.3, 2.0, 0.1]), f64([1.5, 0.2, 0.1])
    for eps in (0.05, 0.3, 0.49):
        w = robust.lcpo_weights(fwd, sw, eps)
        for i in range(3):
            p = sigmoid(float(sw[i] - fwd[i]))
            assert float(w[i]) == pytest.approx((1 - eps) * p / ((1 - eps) * p + eps * (1 - p)), abs=1e-12)
    assert robust.lcpo_weights(fwd, sw, 0.0).tolist() == [1.0, 1.0, 1.0]
    assert robust.lcpo_weights(fwd, sw, 1.0).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name,base_fn,base_params", [
    ("lcpo", dpo_loss, DPOParams(beta=0.3)),
    ("lcpo-ipo", ipo_loss, IPOParams(beta=0.3)),
])
def test_lcpo_with_zero_noise_is_the_base_loss(name, base_fn, base_params):
    spec = REGISTRY[name]
    logps = pair(*MANY, state={"noise": 0.0})
    out = spec.fn(logps, spec.params(beta=0.3))
    assert out.metrics["lcpo/weight"].tolist() == [1.0] * 4
    torch.testing.assert_close(out.losses, base_fn(logps, base_params).losses, atol=TOL, rtol=0)
    assert float(out.stats["noise_sum"]) == 0.0
    assert float(out.stats["count"]) == 4.0


def test_lcpo_around_ipo_by_hand():
    """IPO base, τ = 0.1, lengths 5, ρ_c = 1, ρ_r = −1: Δ̄ = 0.4, ℓ(h) = (0.4 − 5)² = 21.16 and on the
    swapped pair ℓ(−h) = (−0.4 − 5)² = 29.16. P = σ(29.16 − 21.16) = σ(8) (= σ(2Δ̄/τ)).
    ε = 0.1: w = σ(8 + log 9), 1 − w = 1/(9e^8 + 1) = 3.72722360511e−5.
    loss = 21.16 + (1 − w)·8 = 21.160298177888.
    """
    spec = REGISTRY["lcpo-ipo"]
    out = spec.fn(pair(*H02, state={"noise": 0.1}), spec.params())
    assert float(out.metrics["lcpo/weight"][0]) == pytest.approx(1 - 1 / (9 * math.exp(8) + 1), abs=1e-13)
    assert float(out.losses[0]) == pytest.approx(21.160298177888, abs=1e-10)
    assert spec.reduction == "mean"


def test_lcpo_distrusts_a_label_the_model_strongly_disagrees_with():
    """β = 1, h = −6 (the model prefers the 'rejected' response by far), ε = 0.2:
    P = σ(−6), w = 0.8P / (0.8P + 0.2(1 − P)) = 4/(4 + e^6) = 0.009817666458 < 1/2.
    The M-step loss w·softplus(−h) + (1 − w)·softplus(h) is a cross-entropy with soft target w, so its
    pull stops at σ(h) = w: dL/dc = β·(−w·σ(6) + (1 − w)·σ(−6)) = −0.007345043302, against DPO's
    −σ(6) = −0.997527376843.
    """
    spec = lcpo()
    logps = pair([-16.0], [-10.0], [-10.0], [-10.0], requires_grad=True, state={"noise": 0.2})
    out = spec.fn(logps, spec.params(beta=1.0))
    assert float(out.metrics["lcpo/weight"][0]) == pytest.approx(0.009817666458, abs=1e-12)
    out.losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.007345043302, abs=1e-12)
    assert float(logps.rejected.grad[0]) == pytest.approx(0.007345043302, abs=1e-12)


def test_lcpo_m_step_is_stationary_where_sigma_h_equals_the_weight():
    """At h = logit(w) the M-step gradient −w·σ(−h) + (1 − w)·σ(h) = −w(1 − w) + (1 − w)w = 0.
    With ε = 0.2 and DPO, w = σ(h + log 4) depends on h itself, so pick h = 0: w = σ(log 4) = 0.8, and
    the gradient at h = 0 is −0.8·0.5 + 0.2·0.5 = −0.3 (β = 1): still pushing toward the label."""
    spec = lcpo()
    logps = pair([-10.0], [-10.0], [-10.0], [-10.0], requires_grad=True, state={"noise": 0.2})
    out = spec.fn(logps, spec.params(beta=1.0))
    assert float(out.metrics["lcpo/weight"][0]) == pytest.approx(0.8, abs=1e-12)
    out.losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.3, abs=1e-12)


def test_lcpo_state_init_and_update():
    """update: ε = clamp(noise_sum / count, noise_min, noise_max).
    0.3/4 = 0.075; 3/4 = 0.75 → clamped to 0.49; 0/4 = 0 with noise_min 0.05 → 0.05; count 0 keeps ε."""
    spec = lcpo()
    params = spec.params()
    assert spec.init_state(params) == {"noise": 0.1}
    assert spec.init_state(spec.params(noise_init=0.2)) == {"noise": 0.2}
    update = spec.update_state
    new = update({"noise": 0.1}, {"noise_sum": f64(0.3), "count": f64(4.0)}, params)
    assert new["noise"] == pytest.approx(0.075, abs=1e-15)
    assert update({"noise": 0.1}, {"noise_sum": f64(3.0), "count": f64(4.0)}, params)["noise"] == 0.49
    floor = spec.params(noise_min=0.05)
    assert update({"noise": 0.1}, {"noise_sum": f64(0.0), "count": f64(4.0)}, floor)["noise"] == 0.05
    assert update({"noise": 0.1}, {"noise_sum": 0.0, "count": 0.0}, params) == {"noise": 0.1}


def test_lcpo_one_em_round_feeds_the_next_batch():
    """The E-step stats of a batch, summed and passed to update_state, set the ε the next batch sees.

    DPO base, β = 0.3, MANY: h = [0.6, −1.2, −0.9, 0.225]. For DPO ℓ(−h) − ℓ(h) = softplus(h) −
    softplus(−h) = h, so w = σ(h + log((1 − ε)/ε)).
    Round 1, ε = 0.1 (noise_init): w = σ(h + log 9) = [0.942525661097, 0.730512547603, 0.785367513403,
    0.918506414550]; ε ← mean(1 − w) = 0.155771965837.
    Round 2: w = σ(h + log((1 − ε)/ε)) = [0.908047909949, 0.620113372431, 0.687837656262, 0.871583127943].
    The same numbers are recomputed below in plain float math from h alone.
    """
    h = [0.3 * d for d in (2.0, -4.0, -3.0, 0.75)]

    def weights(eps: float) -> list[float]:
        return [sigmoid(x + math.log((1 - eps) / eps)) for x in h]

    first = weights(0.1)
    eps1 = sum(1 - w for w in first) / len(h)
    assert first == pytest.approx([0.942525661097, 0.730512547603, 0.785367513403, 0.918506414550], abs=1e-12)
    assert eps1 == pytest.approx(0.155771965837, abs=1e-12)
    assert weights(eps1) == pytest.approx([0.908047909949, 0.620113372431, 0.687837656262, 0.871583127943],
                                          abs=1e-12)

    spec = lcpo()
    params = spec.params(beta=0.3)
    state = spec.init_state(params)
    out = spec.fn(pair(*MANY, state=dict(state)), params)
    assert out.metrics["lcpo/weight"].tolist() == pytest.approx(first, abs=1e-12)
    state = spec.update_state(state, out.stats, params)
    assert state["noise"] == pytest.approx(eps1, abs=1e-12)
    again = spec.fn(pair(*MANY, state=dict(state)), params)
    assert again.metrics["lcpo/weight"].tolist() == pytest.approx(weights(eps1), abs=1e-12)


def test_lcpo_missing_noise_uses_noise_init_and_bad_noise_raises():
    spec = lcpo()
    a = spec.fn(pair(*H02), spec.params(noise_init=0.1))
    b = spec.fn(pair(*H02, state={"noise": 0.1}), spec.params())
    torch.testing.assert_close(a.losses, b.losses, atol=0, rtol=0)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="noise"):
            spec.fn(pair(*H02, state={"noise": bad}), spec.params())


def test_lcpo_metrics_detached_and_loss_has_gradient():
    spec = lcpo()
    out = spec.fn(pair(*MANY, requires_grad=True, state={"noise": 0.2}), spec.params())
    assert out.losses.shape == (4,) and out.losses.requires_grad
    for key, value in out.metrics.items():
        assert value.shape == (4,) and not value.requires_grad, key
    for key, value in out.stats.items():
        assert value.dim() == 0 and not value.requires_grad, key


def test_lcpo_registry_entries_and_params():
    for name, reduction in [("lcpo", "sum"), ("lcpo-ipo", "mean")]:
        spec = REGISTRY[name]
        assert spec.shape == "pair" and spec.needs_reference is True and spec.reduction == reduction
        assert spec.defaults() == {"beta": 0.1, "noise_init": 0.1, "noise_min": 0.0, "noise_max": 0.49,
                                   "estimate_noise": True}
        assert spec.init_state is not None and spec.update_state is not None
        for f in dataclasses.fields(spec.params):
            assert f.metadata.get("help"), f"{name}.{f.name}"
    assert issubclass(REGISTRY["lcpo"].params, DPOParams)
    assert issubclass(REGISTRY["lcpo-ipo"].params, IPOParams)


@pytest.mark.parametrize("kwargs,name", [
    ({"beta": 0.0}, "beta"),
    ({"noise_init": 0.6}, "noise_init"),
    ({"noise_init": float("nan")}, "noise_init"),
    ({"noise_max": 0.5}, "noise_max"),
    ({"noise_min": -0.1}, "noise_min"),
    ({"noise_min": 0.3, "noise_max": 0.2, "noise_init": 0.25}, "noise_min"),
    ({"noise_min": 0.2, "noise_init": 0.1}, "noise_init"),
])
def test_lcpo_params_validation(kwargs, name):
    with pytest.raises(ParamError, match=f"^{name}"):
        REGISTRY["lcpo"].params(**kwargs)


def test_lcpo_spec_wraps_other_pairwise_losses():
    """Any pairwise spec can be wrapped (here hinge, unregistered under a test name); ε = 0 gives the base."""
    hinge = REGISTRY["hinge"]
    spec = robust.lcpo_spec(hinge, "test-lcpo-hinge")
    assert "test-lcpo-hinge" not in REGISTRY
    logps = pair(*MANY, state={"noise": 0.0})
    params = spec.params(beta=0.3)
    torch.testing.assert_close(spec.fn(logps, params).losses, hinge.fn(logps, DPOParams(beta=0.3)).losses,
                               atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="pairwise"):
        robust.lcpo_spec(REGISTRY["sft"], "test-lcpo-sft")


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,needs,defaults", [
    ("cdpo", set(), {"beta": 0.1, "epsilon": 0.1}),
    ("rdpo", set(), {"beta": 0.1, "epsilon": 0.1}),
    ("soft-preference", {"strength"}, {"beta": 0.1}),
])
def test_registry_entries(name, needs, defaults):
    spec = REGISTRY[name]
    assert spec.shape == "pair" and spec.needs_reference is True and spec.reduction == "sum"
    assert set(spec.needs) == needs
    assert spec.defaults() == defaults
    assert spec.paper and spec.summary


def test_lcpo_with_a_known_noise_rate_keeps_it():
    """estimate_noise=False: the M-step leaves ε at noise_init whatever the weights say
    (Σ(1 − w) = 0.4 over 4 pairs would set ε = 0.1 otherwise)."""
    spec = REGISTRY["lcpo"]
    params = spec.params(noise_init=0.3, estimate_noise=False)
    stats = {"noise_sum": torch.tensor(0.4), "count": torch.tensor(4.0)}
    assert spec.update_state(spec.init_state(params), stats, params) == {"noise": 0.3}
    estimating = spec.params(noise_init=0.3)
    assert spec.update_state(spec.init_state(estimating), stats, estimating)["noise"] == pytest.approx(0.1)
