"""GPG (Chu et al. 2025; verl's ``adv_estimator=gpg`` and ``loss_mode=gpg``): the group mean as
baseline scaled by the batch's share of non-zero rewards, and the plain policy gradient −A·log π."""

from __future__ import annotations

import pytest
import torch

from alignlab.losses.advantages import gpg_advantages, group_advantages
from alignlab.losses.policy_gradient import PolicyGradientInputs, PolicyGradientParams, policy_gradient_loss
from tests.losses.test_policy_gradient import TOL, ratio_batch, t


def test_gpg_advantages_by_hand():
    """Rewards (1, 0, 0, 0), (0, 0, 0, 0), (2, 1, 1, 0): B = 12 samples, 4 of them non-zero, so
    α = 12/4 = 3. Group means 0.25, 0, 1: A = 3·(0.75, −0.25, −0.25, −0.25) = (2.25, −0.75, −0.75,
    −0.75); (0, 0, 0, 0) exactly; 3·(1, 0, 0, −1) = (3, 0, 0, −3). As (B,) rewards with group ids in
    another order the same values come out, sample by sample."""
    r = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [2.0, 1, 1, 0]], dtype=torch.float64)
    want = [[2.25, -0.75, -0.75, -0.75], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, -3.0]]
    got = gpg_advantages(r)
    assert got.tolist() == [pytest.approx(w, abs=1e-15) for w in want]
    assert got[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    order = torch.tensor([5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6])
    flat, ids = r.reshape(-1)[order], torch.arange(3).repeat_interleave(4)[order]
    assert torch.allclose(gpg_advantages(flat, ids), got.reshape(-1)[order], atol=1e-15, rtol=0)


def test_with_every_reward_non_zero_it_is_the_plain_group_baseline():
    """α = 1: A = r − group mean, GRPO's advantage without std scaling (Dr. GRPO's)."""
    r = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    assert torch.allclose(gpg_advantages(r), group_advantages(r, scale="none"), atol=1e-15, rtol=0)
    assert gpg_advantages(torch.zeros(2, 3)).abs().max() == 0


def test_the_plain_policy_gradient_by_hand():
    """L_t = −A·ℓ_t whatever the ratio: ``ratio_batch``'s row with A = +2 (ℓ = ℓold + log c, ℓold =
    −1, −2, −0.5, −3, c = 1.5, 0.5, 1.1, 0.7) sums −2·Σ ℓ_t over its 4 tokens; the gradient is −2 on
    every token, 0 on the (NaN) padding; nothing is clipped."""
    logps, old, mask = ratio_batch([2.0])
    ells = (old + torch.log(t([[1.5, 0.5, 1.1, 0.7, 1.0]])))[0, :4]
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t([2.0]), old_logps=old),
                               PolicyGradientParams(surrogate="pg"))
    assert out.losses.tolist() == pytest.approx([-2.0 * float(ells.sum())], abs=TOL)
    out.losses.sum().backward()
    assert torch.allclose(logps.grad, t([[-2.0] * 4 + [0.0]]), rtol=0, atol=TOL)
    assert out.metrics["clip/high"].tolist() == [0.0] and out.metrics["clip/low"].tolist() == [0.0]
