"""Online DPO (``losses/online_pref.py``): labels, per-row losses, units and metrics derived by hand.

Notation: ℓ = summed completion log-prob, ρ = ℓ − ℓref, Δ = ρ_w − ρ_l, h = βΔ; sigmoid loss
−log σ(h) = log(1 + e^−h); IPO (Δ̄ − 1/(2β))² with Δ̄ the difference of token-mean ρ.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.online import needs_reference
from alignlab.losses.online_pref import OnlineDPOParams, online_dpo_loss, pair_labels, pair_units
from alignlab.losses.params import ParamError
from alignlab.losses.policy_gradient import PolicyGradientInputs
from alignlab.losses.registry import REGISTRY

F64 = torch.float64
TOL = 1e-12


def t(rows, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64, requires_grad=grad)


def test_labels_rank_each_pair_and_ties_get_zero():
    """Rewards (1, 0): +1/−1; (0.2, 0.7): −1/+1; (3, 3): a tie, 0/0. Units: the chosen rows."""
    labels = pair_labels(t([[1.0, 0.0], [0.2, 0.7], [3.0, 3.0]]), OnlineDPOParams())
    assert labels.tolist() == [[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]
    assert pair_units(labels.reshape(-1), OnlineDPOParams()).tolist() == [1, 0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="two answers per prompt"):
        pair_labels(t([[1.0, 0.0, 2.0]]), OnlineDPOParams())


# Three pairs (six rows, two prompts' answers each), per-token log-probs with padding:
#   pair 0 (rows 0, 1), row 0 chosen: row 0 tokens (−1, −2) → ℓ = −3, ref (−2, −2) → −4, ρ = 1, |y| = 2
#                                      row 1 tokens (−1, −1, −2) → ℓ = −4, ref (−1, −1, −1) → −3, ρ = −1, |y| = 3
#   pair 1 (rows 2, 3), row 3 chosen: row 2 tokens (−3) → ℓ = −3, ref (−2) → −2, ρ = −1, |y| = 1
#                                      row 3 tokens (−0.5, −0.5) → ℓ = −1, ref (−1, −1) → −2, ρ = 1, |y| = 2
#   pair 2 (rows 4, 5), a tie:         row 4 tokens (−1) → ℓ = −1, ref (−5) → ρ = 4; row 5 (−2), ref (−2) → ρ = 0
PAD = 99.0  # padding holds junk: it must never count
LOGPS = [[-1.0, -2.0, PAD], [-1.0, -1.0, -2.0], [-3.0, PAD, PAD], [-0.5, -0.5, PAD], [-1.0, PAD, PAD],
         [-2.0, PAD, PAD]]
REF = [[-2.0, -2.0, PAD], [-1.0, -1.0, -1.0], [-2.0, PAD, PAD], [-1.0, -1.0, PAD], [-5.0, PAD, PAD],
       [-2.0, PAD, PAD]]
LENGTHS = [2, 3, 1, 2, 1, 1]
LABELS = [1.0, -1.0, -1.0, 1.0, 0.0, 0.0]


def inputs(grad: bool = False) -> PolicyGradientInputs:
    mask = torch.arange(3).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    advantages = t([[a] * 3 for a in LABELS])  # a sequence advantage, broadcast to the tokens
    return PolicyGradientInputs(logps=t(LOGPS, grad), mask=mask, advantages=advantages, ref_logps=t(REF))


def test_sigmoid_loss_on_the_chosen_rows_of_decisive_pairs():
    """β = 0.5. Pair 0: Δ = 1 − (−1) = 2, h = 1, loss log(1 + e^−1) = 0.313261687518...
    Pair 1: chosen row 3 (ρ = 1), rejected row 2 (ρ = −1): Δ = 2, the same loss.
    Pair 2 ties: no loss. Per-row losses (0.3133, 0, 0, 0.3133, 0, 0); units (1, 0, 0, 1, 0, 0),
    so the step's loss is 2·0.3133/2 = 0.3133.
    rewards/chosen = β·ρ_w = 0.5 on both decisive pairs, rewards/rejected = −0.5, margins 1,
    accuracies 1; logps/chosen = −3 (pair 0) and −1 (pair 1); pairs/tied 1 on rows 4 and 5;
    kl/sequence = ρ of each row: (1, −1, −1, 1, 4, 0)."""
    out = online_dpo_loss(inputs(), OnlineDPOParams(beta=0.5, loss_type="sigmoid"))
    loss = math.log1p(math.exp(-1.0))
    assert loss == pytest.approx(0.313261687518, abs=1e-12)
    assert torch.allclose(out.losses, t([loss, 0, 0, loss, 0, 0]), rtol=0, atol=TOL)
    m = out.metrics
    on = [1.0, 0, 0, 1.0, 0, 0]
    assert m["_count/rewards/chosen"].tolist() == on and m["_count/rewards/margins"].tolist() == on
    assert torch.allclose(m["rewards/chosen"], t([0.5, 0, 0, 0.5, 0, 0]), rtol=0, atol=TOL)
    assert torch.allclose(m["rewards/rejected"], t([-0.5, 0, 0, -0.5, 0, 0]), rtol=0, atol=TOL)
    assert torch.allclose(m["rewards/margins"], t([1.0, 0, 0, 1.0, 0, 0]), rtol=0, atol=TOL)
    assert m["rewards/accuracies"].tolist() == on
    assert m["logps/chosen"].tolist() == [-3.0, 0, 0, -1.0, 0, 0]
    assert m["logps/rejected"].tolist() == [-4.0, 0, 0, -3.0, 0, 0]
    assert m["pairs/tied"].tolist() == [0, 0, 0, 0, 1.0, 1.0]
    assert m["kl/sequence"].tolist() == [1.0, -1.0, -1.0, 1.0, 4.0, 0.0]  # ρ of every row, ties too


def test_the_gradient_reaches_both_answers_of_a_decisive_pair_and_neither_of_a_tie():
    """d/dℓ_w of −log σ(β(ℓ_w − ℓ_l − c)) = −β·σ(−h); at h = 1, β = 0.5: −0.5·σ(−1) = −0.134470711...
    on every token of the chosen answer, +0.134470711 on the rejected's, 0 on padding and on the
    tied pair's rows."""
    x = inputs(grad=True)
    online_dpo_loss(x, OnlineDPOParams(beta=0.5)).losses.sum().backward()
    g = 0.5 / (1.0 + math.e)
    assert g == pytest.approx(0.134470711, abs=1e-9)
    expected = t([[-g, -g, 0], [g, g, g], [g, 0, 0], [-g, -g, 0], [0, 0, 0], [0, 0, 0]])
    assert torch.allclose(x.logps.grad, expected, rtol=0, atol=TOL)


def test_ipo_uses_token_means_as_the_offline_ipo():
    """β = τ = 0.25, 1/(2τ) = 2. Pair 0: ρ̄_w = 1/2, ρ̄_l = −1/3, Δ̄ = 5/6, loss (5/6 − 2)² = 49/36.
    Pair 1: ρ̄_w = 1/2 (row 3), ρ̄_l = −1/1 (row 2), Δ̄ = 3/2, loss (3/2 − 2)² = 1/4. Tie: 0.
    ipo/mean_margin = Δ̄ on the chosen rows; rewards are β·ρ summed: 0.25 and −0.25."""
    out = online_dpo_loss(inputs(), OnlineDPOParams(beta=0.25, loss_type="ipo"))
    assert torch.allclose(out.losses, t([49 / 36, 0, 0, 1 / 4, 0, 0]), rtol=0, atol=TOL)
    assert torch.allclose(out.metrics["ipo/mean_margin"], t([5 / 6, 0, 0, 3 / 2, 0, 0]), rtol=0, atol=TOL)
    assert torch.allclose(out.metrics["rewards/chosen"], t([0.25, 0, 0, 0.25, 0, 0]), rtol=0, atol=TOL)


def test_a_step_of_ties_has_no_loss_no_units_and_no_gradient():
    x = PolicyGradientInputs(logps=t([[-1.0], [-2.0]], grad=True), mask=torch.ones(2, 1, dtype=torch.bool),
                             advantages=t([0.0, 0.0]), ref_logps=t([[-3.0], [-1.0]]))
    out = online_dpo_loss(x, OnlineDPOParams())
    out.losses.sum().backward()
    assert out.losses.tolist() == [0.0, 0.0] and x.logps.grad.abs().max() == 0
    assert pair_units(t([0.0, 0.0]), OnlineDPOParams()).sum() == 0
    assert out.metrics["pairs/tied"].tolist() == [1.0, 1.0]


def test_rows_that_are_not_whole_pairs_are_refused():
    mask = torch.ones(3, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="whole pairs"):
        online_dpo_loss(PolicyGradientInputs(t([[-1.0]] * 3), mask, t([1.0, -1.0, 0.0]), ref_logps=t([[-1.0]] * 3)),
                        OnlineDPOParams())
    mask = torch.ones(2, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="labelled"):
        online_dpo_loss(PolicyGradientInputs(t([[-1.0]] * 2), mask, t([1.0, 1.0]), ref_logps=t([[-1.0]] * 2)),
                        OnlineDPOParams())
    with pytest.raises(ValueError, match="ref_logps"):
        online_dpo_loss(PolicyGradientInputs(t([[-1.0]] * 2), mask, t([1.0, -1.0])), OnlineDPOParams())


def test_params_and_registry_entry():
    spec = REGISTRY["online-dpo"]
    assert spec.shape == "online" and spec.num_generations == 2 and spec.needs_reference
    assert spec.defaults() == {"beta": 0.1, "loss_type": "sigmoid"}
    assert needs_reference(spec.params())  # the reference log-probs of the round are always computed
    with pytest.raises(ParamError, match="^beta: "):
        OnlineDPOParams(beta=0.0)
    with pytest.raises(ParamError, match="^loss_type: must be one of"):
        OnlineDPOParams(loss_type="hinge")
