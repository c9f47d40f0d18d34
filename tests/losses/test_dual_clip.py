"""``delta`` (INTELLECT-2's two-sided clipping, TRL's ``delta``) is dual-clip PPO (Ye et al. 2020,
"Mastering Complex Control in MOBA Games with Deep Reinforcement Learning"), verl's ``clip_ratio_c``
(3 by default in its vanilla policy loss), whenever δ ≥ 1 + ε_high:

    dual clip:  L = min(−A·C, max(−A·c, −A·clip(c)))  where A < 0;  max(−A·c, −A·clip(c)) otherwise
    delta:      L = −min(min(c, δ)·A, clip(c)·A)

For A < 0 and c > C both are |A|·C (δ = C ≥ 1 + ε_high ≥ clip(c)); for c ≤ C both are
max(|A|c, |A|clip(c)); for A ≥ 0, min(c, δ)·A only differs from c·A where c > δ ≥ 1 + ε_high, where
clip(c)·A = (1 + ε_high)·A is the smaller term either way."""

from __future__ import annotations

import torch

from alignlab.losses.policy_gradient import PolicyGradientInputs, PolicyGradientParams, policy_gradient_loss


def _dual_clip(logps, old, adv, mask, eps_low, eps_high, c):
    """verl's vanilla policy loss with dual clip, per token, written out (token-mean weights 1)."""
    ratio = torch.exp(logps - old)
    first = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps_low, 1 + eps_high))
    second = torch.minimum(-adv * c, first)
    return torch.where(mask, torch.where(adv < 0, second, first), torch.zeros_like(first)).sum(-1)


def test_delta_equals_dual_clip_in_value_and_gradient():
    """Random ratios e^{±1.5} (many beyond 3 and below 0.8), per-token advantages of both signs, ε
    0.2/0.28, C = δ = 3, float64: the same per-example losses and gradients."""
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(6, 9, dtype=torch.float64, generator=gen) * 3
    logps = (old + (torch.rand(6, 9, dtype=torch.float64, generator=gen) * 3 - 1.5)).requires_grad_()
    adv = torch.randn(6, 9, dtype=torch.float64, generator=gen)
    mask = torch.rand(6, 9, generator=gen) > 0.2
    ours = policy_gradient_loss(PolicyGradientInputs(logps, mask, adv, old_logps=old),
                                PolicyGradientParams(eps_low=0.2, eps_high=0.28, delta=3.0)).losses
    (g_ours,) = torch.autograd.grad(ours.sum(), logps)
    theirs = _dual_clip(logps, old, adv, mask, 0.2, 0.28, 3.0)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), logps)
    assert ((torch.exp(logps - old) > 3) & (adv < 0) & mask).any()  # the dual clip binds somewhere
    assert torch.allclose(ours, theirs, atol=1e-14, rtol=0)
    assert torch.allclose(g_ours, g_theirs, atol=1e-14, rtol=0)
