"""Reward-model losses (losses/reward.py) against hand-derived numbers, and their properties."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.config import make_config
from alignlab.errors import ConfigError
from alignlab.losses import get_loss
from alignlab.losses.reward import (
    RewardModelParams,
    RewardPairs,
    bradley_terry_loss,
    gpm_loss,
    gpm_score,
    reward_model_loss,
)

T = torch.float64


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=T)


def test_bradley_terry_by_hand():
    """r_w = 2, r_l = 0.5: −log σ(1.5) = log(1 + e^−1.5) = 0.2014132779827524.
    With margin m = 0.5: −log σ(1.0) = log(1 + e^−1) = 0.31326168751822286.
    With centering c = 0.01 as well: + 0.01·(2 + 0.5)² = 0.0625, total 0.37576168751822286."""
    w, lose = t(2.0), t(0.5)
    assert bradley_terry_loss(w, lose).item() == pytest.approx(0.2014132779827524, abs=1e-15)
    assert bradley_terry_loss(w, lose, t(0.5)).item() == pytest.approx(0.31326168751822286, abs=1e-15)
    assert bradley_terry_loss(w, lose, t(0.5), 0.01).item() == pytest.approx(0.37576168751822286, abs=1e-15)


def test_bradley_terry_properties():
    """Equal rewards give log 2; swapping the responses changes the loss by exactly the reward gap
    (−log σ(−x) − (−log σ(x)) = x); a shift of both rewards changes nothing without centering."""
    r = torch.randn(16, dtype=T)
    assert torch.allclose(bradley_terry_loss(r, r), torch.full_like(r, math.log(2)), atol=1e-15)
    w, lose = torch.randn(16, dtype=T), torch.randn(16, dtype=T)
    assert torch.allclose(bradley_terry_loss(lose, w) - bradley_terry_loss(w, lose), w - lose, atol=1e-12)
    assert torch.allclose(bradley_terry_loss(w + 3, lose + 3), bradley_terry_loss(w, lose), atol=1e-12)


def test_gpm_score_by_hand():
    """v_i = (1, 2, 3, 4), v_j = (5, 6, 7, 8): block 1 is 1·6 − 2·5 = −4, block 2 is 3·8 − 4·7 = −4,
    so s = −8 with λ = 1, and with λ = (2, 0.5): 2·(−4) + 0.5·(−4) = −10."""
    a, b = t(1, 2, 3, 4).unsqueeze(0), t(5, 6, 7, 8).unsqueeze(0)
    assert gpm_score(a, b).item() == -8.0
    assert gpm_score(a, b, t(2.0, 0.5).unsqueeze(0)).item() == -10.0


def test_gpm_loss_by_hand():
    """v_w = (0.6, 0.8), v_l = (1, 0): s = 0.6·0 − 0.8·1 = −0.8; with τ = 0.1 the loss is
    −log σ(−8) = 8 + log(1 + e^−8) = 8.000335406372896; with margin 0.2: −log σ(−10) =
    10 + log(1 + e^−10) = 10.000045398899218."""
    w, lose = t(0.6, 0.8).unsqueeze(0), t(1.0, 0.0).unsqueeze(0)
    assert gpm_loss(w, lose, 0.1).item() == pytest.approx(8.000335406372896, abs=1e-12)
    assert gpm_loss(w, lose, 0.1, margin=t(0.2)).item() == pytest.approx(10.000045398899218, abs=1e-12)


def test_gpm_score_is_antisymmetric_and_reduces_to_bradley_terry():
    """s(i, j) = −s(j, i), s(i, i) = 0, so P(i ≻ j) + P(j ≻ i) = 1; with v = (r, 1) the score is
    r_i·1 − 1·r_j = r_i − r_j, Bradley-Terry's logit."""
    a, b = torch.randn(32, 6, dtype=T), torch.randn(32, 6, dtype=T)
    lam = torch.rand(32, 3, dtype=T) * 3
    assert torch.allclose(gpm_score(a, b, lam), -gpm_score(b, a, lam), atol=0)
    assert torch.equal(gpm_score(a, a, lam), torch.zeros(32, dtype=T))
    p = torch.sigmoid(gpm_score(a, b, lam) / 0.1) + torch.sigmoid(gpm_score(b, a, lam) / 0.1)
    assert torch.allclose(p, torch.ones(32, dtype=T), atol=1e-15)
    r = torch.randn(2, 32, dtype=T)
    va, vb = torch.stack([r[0], torch.ones(32, dtype=T)], -1), torch.stack([r[1], torch.ones(32, dtype=T)], -1)
    assert torch.allclose(gpm_score(va, vb), r[0] - r[1], atol=1e-15)


def _fit(loss_fn, params: list[torch.Tensor], steps: int = 500) -> None:
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().sum().backward()
        opt.step()


def test_gpm_represents_a_cycle_that_bradley_terry_cannot():
    """Three responses with the cyclic preference A ≻ B ≻ C ≻ A. Free representations fitted with
    each loss: GPM (v ∈ R², τ = 0.1) fits all three preferences (each probability > 0.99), while
    Bradley-Terry's scalar rewards cannot: its loss Σ −log σ(r_i − r_j) over the cycle is convex
    and, as the three gaps sum to zero, smallest when all gaps are 0, so every probability stays
    at 0.5 (chance) and its loss at 3·log 2."""
    torch.manual_seed(0)
    winners, losers = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])  # A≻B, B≻C, C≻A
    v = torch.randn(3, 2, dtype=T, requires_grad=True)
    _fit(lambda: gpm_loss(v[winners], v[losers], 0.1), [v])
    p_gpm = torch.sigmoid(gpm_score(v[winners], v[losers]) / 0.1)
    assert (p_gpm > 0.99).all(), p_gpm

    r = torch.randn(3, dtype=T, requires_grad=True)
    _fit(lambda: bradley_terry_loss(r[winners], r[losers]), [r], steps=2000)
    p_bt = torch.sigmoid(r[winners] - r[losers])
    assert torch.allclose(p_bt, torch.full((3,), 0.5, dtype=T), atol=1e-3), p_bt
    assert bradley_terry_loss(r[winners], r[losers]).sum().item() == pytest.approx(3 * math.log(2), abs=1e-6)


def test_reward_model_loss_metrics():
    """Bradley-Terry: accuracy 1[r_w > r_l] and the margins; GPM: accuracy 1[s > 0], P = σ(s/τ)."""
    bt = reward_model_loss(RewardPairs(t(1.0, 0.0).unsqueeze(1), t(0.0, 2.0).unsqueeze(1)), RewardModelParams())
    assert bt.metrics["rewards/accuracies"].tolist() == [1.0, 0.0]
    assert bt.metrics["rewards/margins"].tolist() == [1.0, -2.0]
    assert bt.losses[1].item() == pytest.approx(math.log1p(math.exp(2.0)), abs=1e-12)
    params = RewardModelParams(objective="gpm", gpm_dim=2, gpm_tau=0.5)
    gpm = reward_model_loss(RewardPairs(t(0.6, 0.8).unsqueeze(0), t(1.0, 0.0).unsqueeze(0)), params)
    assert gpm.metrics["preference/score"].item() == pytest.approx(-0.8, abs=1e-15)
    assert gpm.metrics["preference/prob"].item() == pytest.approx(1 / (1 + math.exp(1.6)), abs=1e-15)
    assert gpm.metrics["rewards/accuracies"].item() == 0.0


@pytest.mark.parametrize("key,value,message", [
    ("objective", "pairwise", "objective: must be bt or gpm"),
    ("gpm_dim", 3, "gpm_dim: must be even"),
    ("gpm_tau", 0, "gpm_tau: must be a finite number > 0"),
    ("center_coef", -1, "center_coef: must be a finite number >= 0"),
    ("margin_scale", -0.5, "margin_scale: must be a finite number >= 0"),
    ("pool", "max", "pool: must be one of auto, last, mean, cls"),
])
def test_bad_hyperparameters_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config({"method": "reward_model", "model": "m", "data": "d", key: value})


def test_registry_entry_and_no_combination_with_policy_losses():
    spec = get_loss("reward_model")
    assert spec.model == "reward" and spec.shape == "pair" and not spec.needs_reference
    with pytest.raises(ConfigError, match="trains a reward model and cannot be added"):
        make_config({"method": "dpo+reward_model", "model": "m", "data": "d"})
