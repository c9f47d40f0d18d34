"""DPO loss: values and metrics derived by hand, properties, gradient, and parameter checks.

Notation: ρ_c = policy_chosen − ref_chosen, ρ_r = policy_rejected − ref_rejected,
h = β·(ρ_c − ρ_r), loss = −log σ(h) = log(1 + e^−h).
"""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses import DPOParams, PairLogps, ParamError, dpo_loss

TOL = 1e-6


def softplus(x: float) -> float:
    """log(1 + e^x), computed with math."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def pair(chosen, rejected, ref_chosen, ref_rejected, requires_grad: bool = False) -> PairLogps:
    def t(values):
        return torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)

    n = len(chosen)
    return PairLogps(
        chosen=t(chosen),
        rejected=t(rejected),
        chosen_len=torch.full((n,), 5),
        rejected_len=torch.full((n,), 5),
        ref_chosen=torch.tensor(ref_chosen, dtype=torch.float64),
        ref_rejected=torch.tensor(ref_rejected, dtype=torch.float64),
    )


def test_dpo_worked_example_beta_0_1():
    """β = 0.1; policy chosen −10, rejected −12; reference chosen −11, rejected −11.

    ρ_c = −10 + 11 = 1, ρ_r = −12 + 11 = −1.
    rewards/chosen = 0.1·1 = 0.1, rewards/rejected = 0.1·(−1) = −0.1, margin h = 0.2.
    loss = −log σ(0.2) = log(1 + e^−0.2) = 0.598138869381...
    accuracy = 1 (0.1 > −0.1).
    """
    out = dpo_loss(pair([-10.0], [-12.0], [-11.0], [-11.0]), DPOParams(beta=0.1))
    assert out.losses.shape == (1,)
    assert float(out.losses[0]) == pytest.approx(0.598138869381, abs=TOL)
    assert float(out.losses[0]) == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-12)
    m = out.metrics
    assert float(m["rewards/chosen"][0]) == pytest.approx(0.1, abs=TOL)
    assert float(m["rewards/rejected"][0]) == pytest.approx(-0.1, abs=TOL)
    assert float(m["rewards/margins"][0]) == pytest.approx(0.2, abs=TOL)
    assert float(m["rewards/accuracies"][0]) == 1.0
    assert float(m["logps/chosen"][0]) == -10.0
    assert float(m["logps/rejected"][0]) == -12.0


# (β, policy chosen, policy rejected, ref chosen, ref rejected, r_chosen, r_rejected, loss, accuracy)
HAND_CASES = [
    # ρ_c = 1, ρ_r = −1, h = 0.1·2 = 0.2, loss = log(1 + e^−0.2) = 0.598138869381...
    (0.1, -10.0, -12.0, -11.0, -11.0, 0.1, -0.1, softplus(-0.2), 1.0),
    # ρ_c = −15 + 12 = −3, ρ_r = −9 + 10 = 1, h = 0.1·(−4) = −0.4,
    # loss = log(1 + e^0.4) = 0.913015252399...
    (0.1, -15.0, -9.0, -12.0, -10.0, -0.3, 0.1, softplus(0.4), 0.0),
    # ρ_c = −20 + 22 = 2, ρ_r = −25 + 24 = −1, h = 0.5·3 = 1.5,
    # loss = log(1 + e^−1.5) = 0.201413277982...
    (0.5, -20.0, -25.0, -22.0, -24.0, 1.0, -0.5, softplus(-1.5), 1.0),
    # ρ_c = −7 + 6 = −1, ρ_r = −4 + 6 = 2, h = 0.25·(−3) = −0.75,
    # loss = log(1 + e^0.75) = 1.136871006114...
    (0.25, -7.0, -4.0, -6.0, -6.0, -0.25, 0.5, softplus(0.75), 0.0),
    # β = 2: ρ_c = −3 + 3.25 = 0.25, ρ_r = −3.5 + 3 = −0.5, h = 2·0.75 = 1.5, loss = log(1 + e^−1.5)
    (2.0, -3.0, -3.5, -3.25, -3.0, 0.5, -1.0, softplus(-1.5), 1.0),
]


@pytest.mark.parametrize("beta,pc,pr,rc,rr,r_c,r_r,loss,acc", HAND_CASES)
def test_dpo_hand_values(beta, pc, pr, rc, rr, r_c, r_r, loss, acc):
    out = dpo_loss(pair([pc], [pr], [rc], [rr]), DPOParams(beta=beta))
    assert float(out.losses[0]) == pytest.approx(loss, abs=TOL)
    assert float(out.metrics["rewards/chosen"][0]) == pytest.approx(r_c, abs=TOL)
    assert float(out.metrics["rewards/rejected"][0]) == pytest.approx(r_r, abs=TOL)
    assert float(out.metrics["rewards/margins"][0]) == pytest.approx(r_c - r_r, abs=TOL)
    assert float(out.metrics["rewards/accuracies"][0]) == acc


def test_dpo_hand_values_as_one_batch_per_pair():
    """The same four β = 0.1 / hand cases, batched: the loss stays per pair, shape (B,), in order."""
    cases = [c for c in HAND_CASES if c[0] == 0.1]
    logps = pair([c[1] for c in cases], [c[2] for c in cases], [c[3] for c in cases], [c[4] for c in cases])
    out = dpo_loss(logps, DPOParams(beta=0.1))
    assert out.losses.shape == (len(cases),)
    for i, c in enumerate(cases):
        assert float(out.losses[i]) == pytest.approx(c[7], abs=TOL)
        assert float(out.metrics["rewards/accuracies"][i]) == c[8]
    for key, value in out.metrics.items():
        assert value.shape == (len(cases),), key


def test_dpo_is_stable_for_a_large_negative_margin():
    """β = 1, ρ_c = −300 + 100 = −200, ρ_r = 0, h = −200.

    loss = log(1 + e^200) = 200 + log(1 + e^−200) = 200 to double precision (no overflow to inf).
    """
    out = dpo_loss(pair([-300.0], [-100.0], [-100.0], [-100.0]), DPOParams(beta=1.0))
    assert math.isfinite(float(out.losses[0]))
    assert float(out.losses[0]) == pytest.approx(200.0, abs=TOL)


@pytest.mark.parametrize("beta", [0.1, 0.5, 3.0])
def test_dpo_equals_log_2_when_policy_equals_reference(beta):
    """ρ_c = ρ_r = 0 gives h = 0 and loss = −log σ(0) = log 2 for any β and any log-probs.

    The rewards and margins are 0, and accuracy is 0: a tie does not count as ranked correctly.
    """
    chosen = [-3.0, -40.5, -0.25]
    rejected = [-7.0, -1.0, -12.0]
    out = dpo_loss(pair(chosen, rejected, chosen, rejected), DPOParams(beta=beta))
    for i in range(3):
        assert float(out.losses[i]) == pytest.approx(math.log(2.0), abs=TOL)
        assert float(out.metrics["rewards/chosen"][i]) == 0.0
        assert float(out.metrics["rewards/rejected"][i]) == 0.0
        assert float(out.metrics["rewards/margins"][i]) == 0.0
        assert float(out.metrics["rewards/accuracies"][i]) == 0.0


def test_swapping_chosen_and_rejected_flips_the_margin():
    """Swapping both policy and reference chosen/rejected maps h to −h.

    So margins change sign, the two rewards trade places, accuracies flip (no ties here), and
    loss(swapped) − loss = log(1 + e^h) − log(1 + e^−h) = h.
    """
    pc, pr, rc, rr = [-10.0, -15.0, -7.0], [-12.0, -9.0, -4.0], [-11.0, -12.0, -6.0], [-11.0, -10.0, -6.0]
    params = DPOParams(beta=0.3)
    out = dpo_loss(pair(pc, pr, rc, rr), params)
    swapped = dpo_loss(pair(pr, pc, rr, rc), params)
    m, s = out.metrics, swapped.metrics
    torch.testing.assert_close(s["rewards/margins"], -m["rewards/margins"], atol=TOL, rtol=0)
    torch.testing.assert_close(s["rewards/chosen"], m["rewards/rejected"], atol=TOL, rtol=0)
    torch.testing.assert_close(s["rewards/rejected"], m["rewards/chosen"], atol=TOL, rtol=0)
    torch.testing.assert_close(s["rewards/accuracies"], 1.0 - m["rewards/accuracies"], atol=0, rtol=0)
    torch.testing.assert_close(swapped.losses - out.losses, m["rewards/margins"], atol=TOL, rtol=0)
    # Margins by hand: h = 0.3·(ρ_c − ρ_r) = 0.3·[2, −4, −3] = [0.6, −1.2, −0.9].
    assert m["rewards/margins"].tolist() == pytest.approx([0.6, -1.2, -0.9], abs=TOL)


def test_dpo_depends_only_on_log_ratios():
    """Adding the same constant to a policy log-prob and its reference leaves ρ, h and the loss unchanged."""
    base = dpo_loss(pair([-10.0], [-12.0], [-11.0], [-11.0]), DPOParams())
    shifted = dpo_loss(pair([-10.0 - 7.0], [-12.0 + 3.0], [-11.0 - 7.0], [-11.0 + 3.0]), DPOParams())
    assert float(shifted.losses[0]) == pytest.approx(float(base.losses[0]), abs=1e-12)


@pytest.mark.parametrize("beta,pc,pr,rc,rr", [
    (0.1, -10.0, -12.0, -11.0, -11.0),  # h = 0.2
    (0.1, -15.0, -9.0, -12.0, -10.0),  # h = −0.4
    (0.5, -20.0, -25.0, -22.0, -24.0),  # h = 1.5
])
def test_dpo_gradient_by_hand(beta, pc, pr, rc, rr):
    """L = softplus(−h), h = β·((c − rc) − (r − rr)).

    dL/dc = −σ(−h)·β and dL/dr = +σ(−h)·β. For the first case h = 0.2:
    dL/dc = −0.1·σ(−0.2) = −0.0450166002687...
    """
    logps = pair([pc], [pr], [rc], [rr], requires_grad=True)
    out = dpo_loss(logps, DPOParams(beta=beta))
    out.losses.sum().backward()
    h = beta * ((pc - rc) - (pr - rr))
    expected = -beta * sigmoid(-h)
    assert float(logps.chosen.grad[0]) == pytest.approx(expected, abs=TOL)
    assert float(logps.rejected.grad[0]) == pytest.approx(-expected, abs=TOL)


def test_dpo_gradient_first_case_number():
    """β = 0.1, h = 0.2: dL/d(policy chosen) = −0.1·σ(−0.2) = −0.1 / (1 + e^0.2) = −0.04501660026875..."""
    logps = pair([-10.0], [-12.0], [-11.0], [-11.0], requires_grad=True)
    dpo_loss(logps, DPOParams(beta=0.1)).losses.sum().backward()
    assert float(logps.chosen.grad[0]) == pytest.approx(-0.04501660026875, abs=1e-12)


def test_dpo_metrics_carry_no_gradient():
    logps = pair([-10.0, -3.0], [-12.0, -1.0], [-11.0, -2.0], [-11.0, -2.0], requires_grad=True)
    out = dpo_loss(logps, DPOParams())
    assert out.losses.requires_grad
    for key, value in out.metrics.items():
        assert not value.requires_grad, key


def test_dpo_params_default_beta():
    assert DPOParams().beta == 0.1


@pytest.mark.parametrize("beta", [0.0, -0.1, -5.0, float("nan")])
def test_dpo_params_rejects_non_positive_beta(beta):
    with pytest.raises(ParamError, match="beta") as info:
        DPOParams(beta=beta)
    assert isinstance(info.value, ValueError)
    assert "> 0" in str(info.value)
