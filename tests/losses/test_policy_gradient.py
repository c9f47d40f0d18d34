"""The clipped policy-gradient surrogate: hand-derived numbers, properties, split invariance, TRL parity.

Notation: c = exp(ℓ − ℓold) the ratio, A the advantage, per-token loss L = −min(c·A, clip(c)·A)
(+ β·k3). For a token that is not clipped, dL/dℓ = −c·A (dc/dℓ = c); for a clipped one it is 0.
Per-example losses are summed and divided by the step's ``units`` as the training loop does.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from alignlab.losses import ParamError
from alignlab.losses.advantages import group_advantages
from alignlab.losses.policy_gradient import (
    PolicyGradientInputs,
    PolicyGradientParams,
    PPOParams,
    aggregate,
    importance_weights,
    policy_gradient_loss,
    ppo_loss,
    units,
    value_loss,
)

F64 = torch.float64
TOL = 1e-12


def t(values, dtype=F64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def step_loss(out, u: torch.Tensor) -> torch.Tensor:
    """What the loop does with one batch that is the whole step: Σ losses / Σ units."""
    return out.losses.sum() / u.sum()


# ----------------------------------------------------------------------------- hand-derived

RATIOS = [1.5, 0.5, 1.1, 0.7]
OLD = [-1.0, -2.0, -0.5, -3.0]


def ratio_batch(advantages: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row per advantage, each with the token ratios 1.5, 0.5, 1.1, 0.7 over 4 tokens, then a
    padding column whose log-prob is NaN (it must not leak into values or gradients)."""
    n = len(advantages)
    old = t([OLD + [0.0]] * n)
    logps = old + t([[math.log(c) for c in RATIOS] + [0.0]] * n)
    logps[:, 4] = float("nan")
    mask = torch.tensor([[1, 1, 1, 1, 0]] * n)
    return logps.requires_grad_(), old, mask


def test_token_surrogate_by_hand():
    """ε_low = 0.2, ε_high = 0.28 (clip to [0.8, 1.28]); ratios 1.5, 0.5, 1.1, 0.7.

    A = +2:  c = 1.5: −min(3.0, 1.28·2 = 2.56) = −2.56, clipped high (gradient 0);
             c = 0.5: −min(1.0, 0.8·2 = 1.6) = −1.0, not clipped (A > 0 is only clipped above): grad −1.0;
             c = 1.1: −2.2, grad −2.2;  c = 0.7: −min(1.4, 1.6) = −1.4, grad −1.4.
             Sum −7.16 over 4 tokens; token mean −1.79; sum/L_max (8) = −0.895.
    A = −1:  c = 1.5: −min(−1.5, −1.28) = 1.5, not clipped (A < 0 is only clipped below): grad +1.5;
             c = 0.5: −min(−0.5, −0.8) = 0.8, clipped low: grad 0;  c = 1.1: 1.1, grad 1.1;
             c = 0.7: −min(−0.7, −0.8) = 0.8, clipped low: grad 0.
             Sum 4.2; token mean 1.05; sum/8 = 0.525.
    Metrics: clip/high = 1/4 and 0, clip/low = 0 and 2/4, ratio/mean = (1.5+0.5+1.1+0.7)/4 = 0.95.
    """
    expected = {"token_mean": [-7.16, 4.2], "seq_mean_token_mean": [-1.79, 1.05], "constant": [-0.895, 0.525]}
    for mode, losses in expected.items():
        logps, old, mask = ratio_batch([2.0, -1.0])
        params = PolicyGradientParams(eps_low=0.2, eps_high=0.28, aggregation=mode, max_completion_length=8)
        out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t([2.0, -1.0]), old_logps=old), params)
        assert out.losses.shape == (2,)
        assert torch.allclose(out.losses, t(losses), rtol=0, atol=TOL), mode
        if mode == "token_mean":
            out.losses.sum().backward()
            assert torch.allclose(logps.grad, t([[0.0, -1.0, -2.2, -1.4, 0.0], [1.5, 0.0, 1.1, 0.0, 0.0]]),
                                  rtol=0, atol=TOL)
            m = out.metrics
            assert m["clip/high"].tolist() == [0.25, 0.0]
            assert m["clip/low"].tolist() == [0.0, 0.5]
            assert m["ratio/mean"].tolist() == pytest.approx([0.95, 0.95], abs=TOL)
            assert m["advantages"].tolist() == [2.0, -1.0]
            assert not any(v.requires_grad for v in m.values())


def test_cispo_and_sapo_by_hand():
    """The token ratios 1.5, 0.5, 1.1, 0.7 of ``ratio_batch`` (ℓ_t = ℓold_t + log c_t, ℓold = −1, −2,
    −0.5, −3), A = +2 on the first row and −1 on the second, token_mean (the per-example sum).

    CISPO, cap C = 1.3: weights w = min(c, 1.3) = 1.3, 0.5, 1.1, 0.7 on both rows, constants;
      L_t = −w·A·ℓ_t, so ∂L_t/∂ℓ_t = −w·A: row 1 −2.6, −1.0, −2.2, −1.4; row 2 1.3, 0.5, 1.1, 0.7
      (the capped token keeps its gradient, where the clip would give it none).
      clip/high: tokens with c > 1.3 and A > 0 (as TRL's cispo_clip_ratio): 1/4 and 0; clip/low 0.
    SAPO, τ = 1 where A > 0, 1.05 where A < 0: L_t = −(4/τ)·σ(τ(c_t − 1))·A, and since
      ∂c/∂ℓ = c, ∂L_t/∂ℓ_t = −4·σ·(1 − σ)·c_t·A with σ = σ(τ(c_t − 1)). No clip metrics.
    The expected numbers below are these formulas evaluated with ``math``."""
    def sig(z):
        return 1 / (1 + math.exp(-z))

    ells = [o + math.log(c) for o, c in zip(OLD, RATIOS, strict=True)]
    advs = [2.0, -1.0]
    w = [min(c, 1.3) for c in RATIOS]
    cispo_loss = [sum(-wt * a * ell for wt, ell in zip(w, ells, strict=True)) for a in advs]
    cispo_grad = [[-wt * a for wt in w] + [0.0] for a in advs]
    taus = [1.0, 1.05]
    sapo_loss = [sum(-(4 / tau) * sig(tau * (c - 1)) * a for c in RATIOS) for a, tau in zip(advs, taus, strict=True)]
    sapo_grad = [[-4 * sig(tau * (c - 1)) * (1 - sig(tau * (c - 1))) * c * a for c in RATIOS] + [0.0]
                 for a, tau in zip(advs, taus, strict=True)]
    for surrogate, losses, grads in (("cispo", cispo_loss, cispo_grad), ("sapo", sapo_loss, sapo_grad)):
        logps, old, mask = ratio_batch(advs)
        params = PolicyGradientParams(surrogate=surrogate, cispo_max=1.3, sapo_tau_pos=1.0, sapo_tau_neg=1.05)
        out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t(advs), old_logps=old), params)
        assert torch.allclose(out.losses, t(losses), rtol=0, atol=TOL), surrogate
        out.losses.sum().backward()
        assert torch.allclose(logps.grad, t(grads), rtol=0, atol=TOL), surrogate
        assert out.metrics["clip/high"].tolist() == ([0.25, 0.0] if surrogate == "cispo" else [0.0, 0.0])
        assert out.metrics["clip/low"].tolist() == [0.0, 0.0]
        assert out.metrics["ratio/mean"].tolist() == pytest.approx([0.95, 0.95], abs=TOL)


def test_cispo_with_a_floor_is_minimax_m1s_two_sided_weight_by_hand():
    """``cispo_min`` 0.8 and ``cispo_max`` 1.2 (verl's cispo with clip_ratio 0.2): the ratios 1.5, 0.5,
    1.1, 0.7 of ``ratio_batch`` weigh 1.2, 0.8, 1.1, 0.8; L_t = −w·A·ℓ_t, ∂L_t/∂ℓ_t = −w·A (A = +2,
    then −1). clip/high counts c > 1.2 where A > 0 (1/4 on row 1), clip/low c < 0.8 where A < 0
    (0.5 and 0.7: 2/4 on row 2). A floor at or above the cap is refused."""
    ells = [o + math.log(c) for o, c in zip(OLD, RATIOS, strict=True)]
    advs = [2.0, -1.0]
    w = [1.2, 0.8, 1.1, 0.8]
    logps, old, mask = ratio_batch(advs)
    params = PolicyGradientParams(surrogate="cispo", cispo_max=1.2, cispo_min=0.8)
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t(advs), old_logps=old), params)
    want = [sum(-wt * a * ell for wt, ell in zip(w, ells, strict=True)) for a in advs]
    assert torch.allclose(out.losses, t(want), rtol=0, atol=TOL)
    out.losses.sum().backward()
    assert torch.allclose(logps.grad, t([[-wt * a for wt in w] + [0.0] for a in advs]), rtol=0, atol=TOL)
    assert out.metrics["clip/high"].tolist() == [0.25, 0.0]
    assert out.metrics["clip/low"].tolist() == [0.0, 0.5]
    with pytest.raises(ParamError, match="cispo_min"):
        PolicyGradientParams(surrogate="cispo", cispo_max=1.2, cispo_min=1.2)


def test_sapo_and_cispo_with_per_token_advantages_by_hand():
    """Per-token advantages (REINFORCE++, PPO) of mixed sign within one row, A_t = +2, −1, 0, +0.5 on
    the ratios 1.5, 0.5, 1.1, 0.7 of ``ratio_batch``, token_mean (the per-example sum).

    SAPO picks τ per token by the sign of A_t, not per sequence: τ_t = τ_pos = 1 where A_t > 0 (tokens
      1 and 4), τ_neg = 2 where A_t <= 0 (tokens 2 and 3; A_3 = 0 gives that token loss and gradient 0).
      L_t = −(4/τ_t)·σ(τ_t(c_t − 1))·A_t and ∂L_t/∂ℓ_t = −4·σ·(1 − σ)·c_t·A_t, σ = σ(τ_t(c_t − 1)).
      A τ chosen for the whole row would give token 2 τ = 1 and a different value.
    CISPO, cap 1.3: ∂L_t/∂ℓ_t = −min(c_t, 1.3)·A_t = −2.6, 0.5, 0, −0.35; clip/high counts the tokens
      with c_t > 1.3 and A_t > 0: token 1 only, 1/4."""
    def sig(z):
        return 1 / (1 + math.exp(-z))

    advs = [2.0, -1.0, 0.0, 0.5]
    taus = [1.0 if a > 0 else 2.0 for a in advs]
    sapo_loss = sum(-(4 / tau) * sig(tau * (c - 1)) * a for c, a, tau in zip(RATIOS, advs, taus, strict=True))
    sapo_grad = [-4 * sig(tau * (c - 1)) * (1 - sig(tau * (c - 1))) * c * a
                 for c, a, tau in zip(RATIOS, advs, taus, strict=True)] + [0.0]
    ells = [o + math.log(c) for o, c in zip(OLD, RATIOS, strict=True)]
    cispo_loss = sum(-min(c, 1.3) * a * ell for c, a, ell in zip(RATIOS, advs, ells, strict=True))
    cispo_grad = [-2.6, 0.5, 0.0, -0.35, 0.0]
    for surrogate, loss, grad, high in (("sapo", sapo_loss, sapo_grad, 0.0), ("cispo", cispo_loss, cispo_grad, 0.25)):
        logps, old, mask = ratio_batch([0.0])
        params = PolicyGradientParams(surrogate=surrogate, cispo_max=1.3, sapo_tau_pos=1.0, sapo_tau_neg=2.0)
        out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t([advs + [0.0]]), old_logps=old), params)
        assert out.losses.item() == pytest.approx(loss, rel=0, abs=TOL), surrogate
        out.losses.sum().backward()
        assert torch.allclose(logps.grad, t([grad]), rtol=0, atol=TOL), surrogate
        assert out.metrics["clip/high"].tolist() == [high]


def test_vespo_by_hand():
    """``ratio_batch``'s rows (token ratios 1.5, 0.5, 1.1, 0.7; ℓold = −1, −2, −0.5, −3), A = +2 and
    −1, token_mean. The sequence ratio is w = 1.5·0.5·1.1·0.7 = 0.5775 on both rows;
    φ(w) = e^λ·w^k·e^{−λw}: row 1 (A ≥ 0: k = 2, λ = 3) e^{3 − 1.7325}·0.5775² = 1.18460,
    row 2 (k = 3, λ = 2) e^{2 − 1.155}·0.5775³ = 0.44837. φ is a constant, so
    L_i = −φ_i·A_i·Σ_t ℓ_t and ∂L_i/∂ℓ_t = −φ_i·A_i on each of its 4 tokens, 0 on padding. With a
    sampler 0.1 below ℓold on every token and token_truncate at C = 3, the token weights
    e^{0.1} join w: w = 0.5775·e^{0.4}. The numbers are these formulas evaluated with ``math``."""
    ells = [o + math.log(c) for o, c in zip(OLD, RATIOS, strict=True)]
    advs = [2.0, -1.0]
    for shift in (0.0, 0.1):
        w = math.prod(RATIOS) * math.exp(4 * shift)
        phis = [math.exp(lam + k * math.log(w) - lam * w) for k, lam in ((2.0, 3.0), (3.0, 2.0))]
        logps, old, mask = ratio_batch(advs)
        extra = {} if shift == 0 else {"is_mode": "token_truncate", "is_clip_max": 3.0}
        sampler = None if shift == 0 else old - shift
        out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t(advs), old_logps=old, sampler_logps=sampler),
                                   PolicyGradientParams(surrogate="vespo", **extra))
        assert torch.allclose(out.losses, t([-p * a * sum(ells) for p, a in zip(phis, advs, strict=True)]),
                              rtol=0, atol=TOL), shift
        out.losses.sum().backward()
        assert torch.allclose(logps.grad, t([[-p * a] * 4 + [0.0] for p, a in zip(phis, advs, strict=True)]),
                              rtol=0, atol=TOL), shift
        assert out.metrics["vespo/phi"].tolist() == pytest.approx(phis, abs=TOL)


def test_vespo_refuses_a_sequence_ratio_or_sequence_weights():
    with pytest.raises(ParamError, match="ratio_level"):
        PolicyGradientParams(surrogate="vespo", ratio_level="sequence")
    with pytest.raises(ParamError, match="is_mode"):
        PolicyGradientParams(surrogate="vespo", is_mode="sequence_truncate")


def test_gmpo_by_hand():
    """``ratio_batch``'s rows (log-ratios d = log 1.5, log 0.5, log 1.1, log 0.7 = 0.405, −0.693,
    0.095, −0.357), A = +2 and −1, ε = 0.4 both sides, seq_mean_token_mean (ℓ_i itself).
    A > 0: g = min(d, clamp(d, ±0.4)) = 0.4 (clipped: d > 0.4), −0.693, 0.095, −0.357;
    A < 0: g = max(d, clamp(d)) = 0.405, −0.4 (clipped: d < −0.4), 0.095, −0.357.
    ℓ_i = −A_i·r_i, r_i = exp(Σ_t g_t / 4); ∂ℓ_i/∂ℓ_t = −A_i·r_i/4 on the unclipped tokens, 0 on the
    clipped one and on the (NaN) padding. ``clip/high`` is 1/4 on the first row, ``clip/low`` 1/4 on
    the second. With a sampler 0.1 below ℓold on every token (token_truncate, C = 3: w_t = e^0.1),
    each loss and gradient is multiplied by the weights' geometric mean e^0.1. The numbers are
    these formulas evaluated with ``math``."""
    d = [math.log(c) for c in RATIOS]
    advs = [2.0, -1.0]
    g_pos = [min(x, max(-0.4, min(0.4, x))) for x in d]
    g_neg = [max(x, max(-0.4, min(0.4, x))) for x in d]
    assert g_pos[0] == 0.4 and g_neg[1] == -0.4
    r = [math.exp(sum(g) / 4) for g in (g_pos, g_neg)]
    kept = [[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]]
    for shift in (0.0, 0.1):
        logps, old, mask = ratio_batch(advs)
        extra = {} if shift == 0 else {"is_mode": "token_truncate", "is_clip_max": 3.0}
        sampler = None if shift == 0 else old - shift
        params = PolicyGradientParams(surrogate="gmpo", eps_low=0.4, eps_high=0.4, aggregation="seq_mean_token_mean",
                                      **extra)
        out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t(advs), old_logps=old, sampler_logps=sampler),
                                   params)
        scale = math.exp(shift)
        assert torch.allclose(out.losses, t([-a * ri * scale for a, ri in zip(advs, r, strict=True)]),
                              rtol=0, atol=TOL), shift
        out.losses.sum().backward()
        want = [[-a * ri * scale / 4 * k for k in row] + [0.0] for a, ri, row in zip(advs, r, kept, strict=True)]
        assert torch.allclose(logps.grad, t(want), rtol=0, atol=TOL), shift
        assert out.metrics["clip/high"].tolist() == [0.25, 0.0] and out.metrics["clip/low"].tolist() == [0.0, 0.25]


def test_gmpo_refuses_a_sequence_ratio_or_sequence_weights():
    with pytest.raises(ParamError, match="ratio_level"):
        PolicyGradientParams(surrogate="gmpo", ratio_level="sequence")
    with pytest.raises(ParamError, match="is_mode"):
        PolicyGradientParams(surrogate="gmpo", is_mode="sequence_mask")


def _gmpo_reference(logps, old, adv, mask, eps_low, eps_high, weights=None) -> torch.Tensor:
    """GMPO's sequence losses written out token by token from verl's ``compute_policy_loss_geo_mean``
    (without its 1e-8 and 1e-10 guards): for each row i with tokens S_i (mask 1), d_t = ℓ_t − ℓold_t,
    g_t = min(d_t, clamp(d_t, −ε_low, ε_high)) where A_t > 0, max(…) where A_t < 0, 0 where A_t = 0
    (verl: sign(A)·min(sign(A)·d, sign(A)·clamp(d)) with sign(0) = 0); ℓ_i = −mean_{S_i}(A_t) ·
    exp(mean_{S_i} g_t) · exp(mean_{S_i} log w_t) (w: the sampler's token weights, the last factor 0
    when a weight is 0); a row without tokens has loss 0."""
    rows = []
    for i in range(logps.shape[0]):
        tokens = [j for j in range(logps.shape[1]) if mask[i, j]]
        if not tokens:
            rows.append(logps[i, 0] * 0.0)
            continue
        gs = []
        for j in tokens:
            d, a = logps[i, j] - old[i, j], float(adv[i, j])
            bounded = d.clamp(-eps_low, eps_high)
            gs.append(torch.minimum(d, bounded) if a > 0 else torch.maximum(d, bounded) if a < 0 else d * 0.0)
        loss = -sum(float(adv[i, j]) for j in tokens) / len(tokens) * torch.exp(sum(gs) / len(tokens))
        if weights is not None:
            ws = [float(weights[i, j]) for j in tokens]
            loss = loss * (math.exp(sum(math.log(w) for w in ws) / len(ws)) if min(ws) > 0 else 0.0)
        rows.append(loss)
    return torch.stack(rows)


@pytest.mark.parametrize("is_mode", ["off", "token_truncate", "token_mask"])
def test_gmpo_equals_verls_formula_with_per_token_advantages_and_empty_rows(is_mode):
    """Random fp64 inputs: 6 rows of 7 tokens, per-token advantages of both signs (one exactly 0), a
    row with no tokens, log-ratios of spread 0.5 around ε_low = 0.4, ε_high = 0.3 (so both bounds
    clip), the sampler's token weights e^[0, 0.3] but one of e^1.1 in the first row (truncated at
    2, or under token_mask 0, which makes that row's loss 0). The losses and the gradients with respect to ℓ equal ``_gmpo_reference`` (1e-14), and
    "seq_mean_token_mean" gives each row's ℓ_i as verl's mean over sequences does."""
    gen = torch.Generator().manual_seed(1)
    logps = (torch.randn(6, 7, dtype=F64, generator=gen) * 0.5 - 1).requires_grad_()
    old = logps.detach() + torch.randn(6, 7, dtype=F64, generator=gen) * 0.5
    adv = torch.randn(6, 7, dtype=F64, generator=gen)
    adv[1, 2] = 0.0
    mask = torch.rand(6, 7, generator=gen) > 0.3
    mask[2] = False
    sampler = old - torch.rand(6, 7, dtype=F64, generator=gen) * 0.3  # weights e^[0, 0.3]
    first = int(mask[0].nonzero()[0])
    sampler[0, first] = old[0, first] - 1.1  # a weight e^1.1 above 2: truncated, or 0 under token_mask
    params = PolicyGradientParams(surrogate="gmpo", eps_low=0.4, eps_high=0.3, aggregation="seq_mean_token_mean",
                                  is_mode=is_mode, is_clip_max=2.0)
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, adv, old_logps=old, sampler_logps=sampler), params)
    w = None if is_mode == "off" else importance_weights(old, sampler, mask, is_mode, 2.0, None)
    if is_mode == "token_mask":
        assert w[0, first] == 0 and (w[1:][mask[1:]] > 1).all()
    want = _gmpo_reference(logps, old, adv, mask, 0.4, 0.3, w)
    d = (logps - old).detach()
    assert ((d < -0.4) & (adv < 0) & mask).any() and ((d > 0.3) & (adv > 0) & mask).any()
    assert torch.allclose(out.losses, want, rtol=0, atol=1e-14)
    (got,) = torch.autograd.grad(out.losses.sum(), logps)
    (ref,) = torch.autograd.grad(want.sum(), logps)
    assert torch.allclose(got, ref, rtol=0, atol=1e-14) and got.abs().max() > 0.05
    assert (out.losses[0] == 0) == (is_mode == "token_mask")


def test_gmpo_bounds_are_log_ratios_and_may_pass_one():
    """GMPO's ε_low bounds the log-ratio (the ratio ≥ e^−ε_low > 0 for any ε_low), so ε_low = 1.5
    is allowed (the clip surrogate's bound 1 − ε_low would be negative, and stays refused). One row,
    A = −1, log-ratios −1.386 (ratio 0.25: inside −1.5, unclipped) and −1.609 (ratio 0.2: below,
    clipped): g = (−1.386, −1.5), r = exp(−2.886/2), loss = −(−1)·r = r, ∂/∂ℓ = (r/2, 0)."""
    logps = t([[math.log(0.25), math.log(0.2)]]).requires_grad_()
    out = policy_gradient_loss(PolicyGradientInputs(logps, torch.ones(1, 2), t([-1.0]), old_logps=t([[0.0, 0.0]])),
                               PolicyGradientParams(surrogate="gmpo", eps_low=1.5, aggregation="seq_mean_token_mean"))
    r = math.exp((math.log(0.25) - 1.5) / 2)
    assert out.losses.tolist() == pytest.approx([r], abs=TOL)
    out.losses.sum().backward()
    assert logps.grad[0].tolist() == pytest.approx([r / 2, 0.0], abs=TOL)
    with pytest.raises(ParamError, match="eps_low"):
        PolicyGradientParams(eps_low=1.5)


def test_gmpo_is_refused_with_per_token_advantages():
    """REINFORCE++'s and PPO's advantages differ token by token (KL-shaped returns, GAE); GMPO
    averages them into one per sequence (verl: "we only support sequence level advantage"), which
    drops their credit assignment, and clips each token on the side of its own sign, not the
    mean's: refused, naming the field."""
    from alignlab.losses.online import PPOOnlineParams, ReinforcePPParams

    for cls in (ReinforcePPParams, PPOOnlineParams):
        with pytest.raises(ParamError, match="surrogate"):
            cls(surrogate="gmpo")
        cls(surrogate="sapo")  # a per-token surrogate stays allowed


@pytest.mark.parametrize("surrogate", ["cispo", "sapo", "vespo", "gmpo"])
def test_other_surrogates_give_the_plain_policy_gradient_on_policy(surrogate):
    """At c = 1 (no old log-probs) each is the policy gradient: CISPO's −min(1, C)·A = −A, SAPO's
    −4·σ(0)·(1 − σ(0))·1·A = −4·¼·A = −A (either τ), VESPO's −φ(1)·A = −e^λ·1·e^{−λ}·A = −A,
    GMPO's sequence loss −A·exp(mean_t g_t), counted once per token by token_mean: |y|·A·r/|y| = A
    at r = 1; token_mean weight 1, 0 on padding. A zero
    advantage gives loss 0 and gradient 0 (``zero_advantage_is_free``)."""
    logps, _, _, mask, adv = random_batch(0)
    adv[0] = 0.0
    logps.requires_grad_()
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, adv), PolicyGradientParams(surrogate=surrogate))
    out.losses.sum().backward()
    assert torch.allclose(logps.grad, -adv.unsqueeze(1) * mask, rtol=0, atol=TOL)
    assert out.losses[0].item() == 0.0


def test_two_sided_clipping_by_hand():
    """δ = 1.3 with ε_low = 0.2, ε_high = 0.28 and A = −1 on ``ratio_batch``'s ratios 1.5, 0.5, 1.1, 0.7:
    c = 1.5: −min(min(1.5, 1.3)·(−1), 1.28·(−1)) = −min(−1.3, −1.28) = 1.3, constant in c: gradient 0
             (without δ it is 1.5 with gradient +1.5);
    c = 0.5 and 0.7: clipped low as before, 0.8 each, gradient 0;  c = 1.1: 1.1, gradient 1.1.
    Sum 4.0 (without δ 4.2). For A = +2 nothing changes (δ only enters the A < 0 side's minimum)."""
    for delta, loss, grads in ((1.3, 4.0, [0.0, 0.0, 1.1, 0.0, 0.0]), (None, 4.2, [1.5, 0.0, 1.1, 0.0, 0.0])):
        logps, old, mask = ratio_batch([-1.0])
        out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t([-1.0]), old_logps=old),
                                   PolicyGradientParams(eps_low=0.2, eps_high=0.28, delta=delta))
        assert out.losses.tolist() == pytest.approx([loss], abs=TOL)
        out.losses.sum().backward()
        assert torch.allclose(logps.grad, t([grads]), rtol=0, atol=TOL)
    logps, old, mask = ratio_batch([2.0])
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t([2.0]), old_logps=old),
                               PolicyGradientParams(eps_low=0.2, eps_high=0.28, delta=1.3))
    assert out.losses.tolist() == pytest.approx([-7.16], abs=TOL)  # test_token_surrogate_by_hand's A = +2 row
    # δ = 0.5 would make an on-policy token with A = +1 lose −min(0.5, 1) = −0.5, constant in c: refused
    for bad in (0.5, 1.0, float("inf"), float("nan")):
        with pytest.raises(ParamError, match="delta: must be > 1"):
            PolicyGradientParams(delta=bad)


def test_off_policy_sequence_mask_by_hand():
    """``ratio_batch`` rows with A = +2 and −1, the sampler equal to the old policy: each row's mean
    token log-ratio of sampler to policy is −(log 1.5 + log 0.5 + log 1.1 + log 0.7)/4
    = −log(0.5775)/4 = 0.137262. Threshold 0.1: the A < 0 row is left out (loss 0, gradient 0,
    ``off_policy_masked`` 1), the A > 0 row never is (−7.16 at ε 0.2/0.28). Threshold 0.2: both kept
    (the A < 0 row's 4.2 of ``test_token_surrogate_by_hand``). The KL term is not masked."""
    mean_kl = -math.log(math.prod(RATIOS)) / 4
    assert mean_kl == pytest.approx(0.137262, abs=1e-6)
    for threshold, losses, masked in ((0.1, [-7.16, 0.0], [0.0, 1.0]), (0.2, [-7.16, 4.2], [0.0, 0.0])):
        logps, old, mask = ratio_batch([2.0, -1.0])
        out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t([2.0, -1.0]), old_logps=old, sampler_logps=old),
                                   PolicyGradientParams(eps_low=0.2, eps_high=0.28, off_policy_mask=threshold))
        assert out.losses.tolist() == pytest.approx(losses, abs=TOL)
        assert out.metrics["off_policy_masked"].tolist() == masked
        out.losses.sum().backward()
        if masked[1]:
            assert logps.grad[1].abs().max() == 0
    logps, old, mask = ratio_batch([-1.0])
    ref = old.clone()
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t([-1.0]), old_logps=old, sampler_logps=old,
                                                    ref_logps=ref),
                               PolicyGradientParams(off_policy_mask=0.1, beta=0.5))
    kl = sum(math.exp(-math.log(c)) + math.log(c) - 1 for c in RATIOS)  # k3 with u = ℓref − ℓ = −log c
    assert out.losses.tolist() == pytest.approx([0.5 * kl], abs=TOL)


def test_units_by_hand():
    """Rows with 3, 1 and 0 valid tokens: token_mean units [3, 1, 0]; the other modes 1 per example.
    With the second row flagged truncated, token_mean gives it 0 units; the others still count it."""
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert units("token_mean", mask).tolist() == [3.0, 1.0, 0.0]
    assert units("seq_mean_token_mean", mask).tolist() == [1.0, 1.0, 1.0]
    assert units("constant", mask).tolist() == [1.0, 1.0, 1.0]
    assert units("seq_mean_token_sum", mask).tolist() == [1.0, 1.0, 1.0]
    flags = torch.tensor([False, True, False])
    assert units("token_mean", mask, flags).tolist() == [3.0, 0.0, 0.0]
    assert units("seq_mean_token_mean", mask, flags).tolist() == [1.0, 1.0, 1.0]
    assert units("token_mean", mask).dtype == F64
    with pytest.raises(ValueError, match="bnpo"):
        units("bnpo", mask)


def test_aggregate_by_hand():
    """Per-token [[1, 2, 3], [4, 5, inf on padding]] with lengths 3 and 2: sums 6 and 9 (token_mean and
    seq_mean_token_sum, whose units differ), token means 2 and 4.5, sum/L_max(10) 0.6 and 0.9; a (B, 1) input counts once per valid token: [[2], [3]] → sums 6, 6."""
    x = t([[1.0, 2.0, 3.0], [4.0, 5.0, math.inf]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert aggregate(x, mask, "token_mean").tolist() == [6.0, 9.0]
    assert aggregate(x, mask, "seq_mean_token_mean").tolist() == [2.0, 4.5]
    assert aggregate(x, mask, "constant", 10).tolist() == pytest.approx([0.6, 0.9], abs=TOL)
    assert aggregate(x, mask, "seq_mean_token_sum").tolist() == [6.0, 9.0]
    assert aggregate(t([[2.0], [3.0]]), mask, "token_mean").tolist() == [6.0, 6.0]
    assert aggregate(x, torch.zeros(2, 3), "seq_mean_token_mean").tolist() == [0.0, 0.0]


def test_gspo_sequence_ratio_by_hand():
    """ratio_level="sequence", ε_low = 0.2, ε_high = 0.28, seq_mean_token_mean.

    Row 1 (A = 1): token log-ratios 0.1, 0.3 (third column padding): s = e^{(0.1+0.3)/2} = e^0.2 = 1.22140276
        < 1.28, not clipped: loss −s·A = −1.22140276; ∂/∂ℓ_t = −A·s·(1/2) = −0.61070138 for both tokens.
    Row 2 (A = 1): log-ratios 0.5, 0.5: s = e^0.5 = 1.64872127 > 1.28: loss −1.28, gradient 0, clip/high 1.
    Row 3 (A = −1): log-ratios −0.5, −0.1: s = e^−0.3 = 0.74081822 < 0.8: loss −min(−0.7408, −0.8) = 0.8,
        gradient 0, clip/low 1.
    With token_mean the row losses are counted once per token: −2e^0.2, −2.56, 1.6.
    """
    diffs = t([[0.1, 0.3, 0.0], [0.5, 0.5, 0.0], [-0.5, -0.1, 0.0]])
    old = t([[-1.0, -2.0, -1.0]] * 3)
    mask = torch.tensor([[1, 1, 0]] * 3)
    adv = t([1.0, 1.0, -1.0])
    logps = (old + diffs).requires_grad_()
    params = PolicyGradientParams(eps_low=0.2, eps_high=0.28, ratio_level="sequence", aggregation="seq_mean_token_mean")
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, adv, old_logps=old), params)
    s = math.exp(0.2)
    assert torch.allclose(out.losses, t([-s, -1.28, 0.8]), rtol=0, atol=TOL)
    out.losses.sum().backward()
    assert torch.allclose(logps.grad, t([[-s / 2, -s / 2, 0.0], [0.0] * 3, [0.0] * 3]), rtol=0, atol=TOL)
    assert float(logps.grad[0, 0]) == pytest.approx(-0.6107013790800849, abs=TOL)
    assert out.metrics["clip/high"].tolist() == [0.0, 1.0, 0.0]
    assert out.metrics["clip/low"].tolist() == [0.0, 0.0, 1.0]
    assert out.metrics["ratio/mean"].tolist() == pytest.approx([s, math.exp(0.5), math.exp(-0.3)], abs=TOL)

    tm = policy_gradient_loss(PolicyGradientInputs(logps, mask, adv, old_logps=old),
                              PolicyGradientParams(eps_low=0.2, eps_high=0.28, ratio_level="sequence"))
    assert torch.allclose(tm.losses, t([-2 * s, -2.56, 1.6]), rtol=0, atol=TOL)


def test_kl_penalty_by_hand():
    """On-policy (c = 1), A = 0 so the surrogate is 0; β = 0.1; logp [−1, −2], ref [−2, −1].
    u = ref − logp = [−1, 1]; k3 = e^u − u − 1 = [e^−1, e − 2] = [0.36787944, 0.71828183].
    token_mean loss = 0.1·(e^−1 + e − 2) = 0.10861613; ∂/∂ℓ = β(1 − e^u) = [0.1(1 − e^−1), 0.1(1 − e)].
    kl_ratio_weight (k3·c, c = e^{ℓ − sg(ℓ)} = 1): same value, gradient β·(k3' + k3) = β(1 − e^u + e^u − u − 1)
    = −β·u = [0.1, −0.1] (the k1 gradient). kl metric: (e^−1 + e − 2)/2."""
    for weighted, grads in ((False, [0.1 * (1 - math.exp(-1)), 0.1 * (1 - math.e)]), (True, [0.1, -0.1])):
        logps = t([[-1.0, -2.0]]).requires_grad_()
        out = policy_gradient_loss(
            PolicyGradientInputs(logps, torch.ones(1, 2), t([0.0]), ref_logps=t([[-2.0, -1.0]])),
            PolicyGradientParams(beta=0.1, kl_ratio_weight=weighted))
        assert out.losses[0].item() == pytest.approx(0.1 * (math.exp(-1) + math.e - 2), abs=TOL)
        out.losses.sum().backward()
        assert logps.grad[0].tolist() == pytest.approx(grads, abs=TOL)
        assert float(out.metrics["kl"][0]) == pytest.approx((math.exp(-1) + math.e - 2) / 2, abs=TOL)


def test_importance_weights_by_hand():
    """ℓold − ℓsampler = [log 2, log 4, log 0.5] on three valid tokens (a fourth, padding, holds +50).
    C_max = 3: token_truncate [2, 3, 0.5]; token_mask [2, 0, 0.5];
    the sequence ratio is the product 2·4·0.5 = 4: sequence_truncate 3, sequence_mask 0.
    C_min = 0.6 too: token_truncate [2, 3, 0.6], token_mask [2, 0, 0]. C_max = 5, C_min = 0.6:
    sequence_truncate 4, sequence_mask 4. No bounds at all: token_truncate leaves [2, 4, 0.5]."""
    old = t([[-1.0, -1.0, -1.0, 0.0]])
    sampler = old - t([[math.log(2), math.log(4), math.log(0.5), 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])

    def w(mode, **kw):
        return importance_weights(old, sampler, mask, mode, **kw)[0].tolist()

    assert w("token_truncate") == pytest.approx([2, 3, 0.5, 1], abs=TOL)
    assert w("token_mask") == pytest.approx([2, 0, 0.5, 1], abs=TOL)
    assert w("sequence_truncate") == pytest.approx([3], abs=TOL)
    assert w("sequence_mask") == [0.0]
    assert w("token_truncate", clip_min=0.6) == pytest.approx([2, 3, 0.6, 1], abs=TOL)
    assert w("token_mask", clip_min=0.6) == pytest.approx([2, 0, 0, 1], abs=TOL)
    assert w("sequence_truncate", clip_max=5.0, clip_min=0.6) == pytest.approx([4], abs=TOL)
    assert w("sequence_mask", clip_max=5.0, clip_min=0.6) == pytest.approx([4], abs=TOL)
    assert w("token_truncate", clip_max=None) == pytest.approx([2, 4, 0.5, 1], abs=TOL)
    # A NaN sampler log-prob on a valid token counts as no mismatch (weight 1), as in TRL.
    nan_sampler = sampler.clone()
    nan_sampler[0, 1] = float("nan")
    assert importance_weights(old, nan_sampler, mask, "token_truncate")[0, :3].tolist() == pytest.approx([2, 1, 0.5])


def test_importance_weights_scale_the_surrogate_only():
    """On-policy, A = 1, token_truncate with C_max 3 on the weights above: per-token loss −1·w = [−2, −3, −0.5],
    token_mean sum −5.5, gradient −w. Adding β = 0.1 with ref = logp (k3 = 0, ∂k3/∂ℓ = 0) changes nothing;
    with ref = logp + 1 (u = 1, k3 = e − 2 per token) the KL adds 0.1·3·(e − 2) unweighted."""
    old = t([[-1.0, -1.0, -1.0]])
    sampler = old - t([[math.log(2), math.log(4), math.log(0.5)]])
    for ref_shift, extra in ((0.0, 0.0), (1.0, 0.3 * (math.e - 2))):
        logps = old.clone().requires_grad_()
        params = PolicyGradientParams(is_mode="token_truncate", beta=0.1)
        out = policy_gradient_loss(PolicyGradientInputs(logps, torch.ones(1, 3), t([1.0]), old_logps=old,
                                                        ref_logps=old + ref_shift, sampler_logps=sampler), params)
        assert out.losses[0].item() == pytest.approx(-5.5 + extra, abs=TOL)
        out.losses.sum().backward()
        kl_grad = 0.1 * (1 - math.exp(ref_shift))
        assert logps.grad[0].tolist() == pytest.approx([-2 + kl_grad, -3 + kl_grad, -0.5 + kl_grad], abs=TOL)
        assert float(out.metrics["is_weight/mean"][0]) == pytest.approx(5.5 / 3, abs=TOL)
    with pytest.raises(ValueError, match="sampler_logps"):
        policy_gradient_loss(PolicyGradientInputs(old, torch.ones(1, 3), t([1.0])), params)


def test_truncated_completions_are_masked():
    """Row 2 is flagged truncated. With mask_truncated it adds 0 loss and 0 gradient (and no token_mean units);
    without it the flag is ignored. Row 1 on-policy with A = 1 over 2 tokens: loss −2, gradient −1 per token."""
    mask = torch.tensor([[1, 1], [1, 1]])
    flags = torch.tensor([False, True])
    for on, expected in ((True, [-2.0, 0.0]), (False, [-2.0, 2.0])):
        logps = t([[-1.0, -2.0], [-0.5, -0.25]]).requires_grad_()
        out = policy_gradient_loss(PolicyGradientInputs(logps, mask, t([1.0, -1.0]), truncated=flags),
                                   PolicyGradientParams(mask_truncated=on))
        assert out.losses.tolist() == expected
        out.losses.sum().backward()
        assert logps.grad[1].tolist() == ([0.0, 0.0] if on else [1.0, 1.0])
        # the masked row is in no token-mean metric: its count is 0, so it does not log a ratio of 0
        counts = [1.0, 0.0] if on else [1.0, 1.0]
        for name in ("ratio/mean", "clip/low", "clip/high", "advantages"):
            assert out.metrics[f"_count/{name}"].tolist() == counts
    assert units("token_mean", mask, flags).tolist() == [2.0, 0.0]


def test_value_loss_and_ppo_by_hand():
    """ε_v = 0.2, 0.5·max((V − R)², (V_clip − R)²), V_clip = Vold + clamp(V − Vold, ±0.2).

    Row 1, Vold = 0.5, R = 2: V = 1.0 → V_clip = 0.7: max(1, 1.69) = 1.69 → 0.845, gradient 0 (clipped wins);
        V = 0.6 → V_clip = 0.6: 1.96 → 0.98, gradient V − R = −1.4.  Sum 1.825.
    Row 2, Vold = 0.5: V = 0.0, R = 0.1 → V_clip = 0.3: max(0.01, 0.04) → 0.02, gradient 0;
        V = 1.0, R = 0.6 → V_clip = 0.7: max(0.16, 0.01) → 0.08, gradient V − R = 0.4.  Sum 0.1.
    PPO with vf_coef 0.1, on-policy, A = [1, 0]: policy token sums [−2, 0], total [−2 + 0.1825, 0.01];
    value/clip (clipped error strictly larger) = [1/2, 1/2]."""
    values = t([[1.0, 0.6], [0.0, 1.0]]).requires_grad_()
    old_values = t([[0.5, 0.5], [0.5, 0.5]])
    returns = t([[2.0, 2.0], [0.1, 0.6]])
    per_token = value_loss(values, old_values, returns, 0.2)
    assert torch.allclose(per_token, t([[0.845, 0.98], [0.02, 0.08]]), rtol=0, atol=TOL)
    per_token.sum().backward()
    assert torch.allclose(values.grad, t([[0.0, -1.4], [0.0, 0.4]]), rtol=0, atol=TOL)
    assert torch.allclose(value_loss(values, old_values, returns, None), 0.5 * (values - returns) ** 2)

    values.grad = None
    logps = t([[-1.0, -2.0], [-0.5, -0.25]]).requires_grad_()
    out = ppo_loss(PolicyGradientInputs(logps, torch.ones(2, 2), t([1.0, 0.0]), values=values,
                                        old_values=old_values, returns=returns), PPOParams(vf_coef=0.1))
    assert torch.allclose(out.losses, t([-2 + 0.1825, 0.01]), rtol=0, atol=TOL)
    assert out.metrics["value_loss"].tolist() == pytest.approx([1.825, 0.1], abs=TOL)
    assert out.metrics["policy_loss"].tolist() == [-2.0, 0.0]
    assert out.metrics["value/clip"].tolist() == [0.5, 0.5]
    out.losses.sum().backward()
    assert torch.allclose(values.grad, t([[0.0, -0.14], [0.0, 0.04]]), rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="values"):
        ppo_loss(PolicyGradientInputs(logps, torch.ones(2, 2), t([1.0, 0.0])), PPOParams())


# -------------------------------------------------------------------------------- properties


def random_batch(seed: int, B: int = 6, T: int = 7, noise: float = 0.4):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    logps = -torch.rand(B, T, generator=gen, dtype=F64) * 3
    old = logps + noise * torch.randn(B, T, generator=gen, dtype=F64)
    ref = logps + 0.3 * torch.randn(B, T, generator=gen, dtype=F64)
    adv = torch.randn(B, generator=gen, dtype=F64)
    return logps, old, ref, mask, adv


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "constant"])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_ratio_one_gives_the_plain_policy_gradient(mode, per_token_adv):
    """On-policy (c = 1 everywhere, no clipping can bind): ∂ℓ_i/∂ℓ_t = −A_t·(the aggregation's weight):
    1 for token_mean, 1/|y_i| for seq_mean_token_mean, 1/L_max for constant; 0 on padding."""
    logps, _, _, mask, adv = random_batch(0)
    if per_token_adv:
        adv = torch.randn(mask.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    logps.requires_grad_()
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, adv),
                               PolicyGradientParams(aggregation=mode, max_completion_length=10))
    out.losses.sum().backward()
    a = adv if per_token_adv else adv.unsqueeze(1).expand(mask.shape)
    weight = {"token_mean": torch.ones(mask.shape[0], 1, dtype=F64),
              "seq_mean_token_mean": 1 / mask.sum(1, keepdim=True).to(F64),
              "constant": torch.full((mask.shape[0], 1), 0.1, dtype=F64)}[mode]
    assert torch.allclose(logps.grad, -a * mask * weight, rtol=0, atol=TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipped_tokens_get_no_gradient(seed):
    """Token-level ratios off-policy: a token whose ratio is clipped on the side its advantage pushes
    (A > 0 and c > 1 + ε_high, or A < 0 and c < 1 − ε_low) has zero gradient; every other valid token
    has −c·A. The data holds both kinds (asserted)."""
    logps, old, _, mask, adv = random_batch(seed, B=8, T=9, noise=0.5)
    logps.requires_grad_()
    params = PolicyGradientParams(eps_low=0.2, eps_high=0.28)
    out = policy_gradient_loss(PolicyGradientInputs(logps, mask, adv, old_logps=old), params)
    out.losses.sum().backward()
    c = torch.exp(logps.detach() - old)
    a = adv.unsqueeze(1).expand(mask.shape)
    clipped = ((a > 0) & (c > 1.28)) | ((a < 0) & (c < 0.8))
    valid = mask.bool()
    assert (clipped & valid).any() and (~clipped & valid).any()
    assert (logps.grad[clipped | ~valid] == 0).all()
    expected = torch.where(clipped | ~valid, torch.zeros_like(c), -c * a)
    assert torch.allclose(logps.grad, expected, rtol=0, atol=TOL)


def test_params_reject_nonsense():
    with pytest.raises(ParamError, match="aggregation"):
        PolicyGradientParams(aggregation="bnpo")
    with pytest.raises(ParamError, match="max_completion_length"):
        PolicyGradientParams(aggregation="constant", max_completion_length=0)
    with pytest.raises(ParamError, match="eps_low"):
        PolicyGradientParams(eps_low=1.0)
    with pytest.raises(ParamError, match="ratio_level"):
        PolicyGradientParams(ratio_level="seq")
    with pytest.raises(ParamError, match="is_mode"):
        PolicyGradientParams(is_mode="tis")
    with pytest.raises(ParamError, match="beta"):
        PolicyGradientParams(beta=-0.1)
    with pytest.raises(ParamError, match="vf_coef"):
        PPOParams(vf_coef=-1.0)


# ------------------------------------------------------------- the step's split does not matter

N, T_INV, D = 8, 8, 3


class Toy:
    """A 'model' with parameters θ (D,) whose per-token log-probs for example i are
    log σ(features_i · θ): the micro-batches of a step share θ, as a real model's would."""

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.features = torch.randn(N, T_INV, D, generator=gen, dtype=F64)
        self.theta0 = torch.randn(D, generator=gen, dtype=F64)
        lengths = torch.tensor([5, 8, 1, 6, 2, 7, 4, 3])
        self.mask = (torch.arange(T_INV).unsqueeze(0) < lengths.unsqueeze(1)).long()
        with torch.no_grad():
            logps = self.logps(self.theta0, list(range(N)))
        self.old = logps + 0.3 * torch.randn(N, T_INV, generator=gen, dtype=F64)
        self.ref = logps + 0.2 * torch.randn(N, T_INV, generator=gen, dtype=F64)
        self.sampler = self.old + 0.1 * torch.randn(N, T_INV, generator=gen, dtype=F64)
        rewards = torch.rand(N, generator=gen, dtype=F64)
        self.adv = group_advantages(rewards.view(2, 4)).reshape(-1)  # computed once for the whole step
        self.truncated = torch.zeros(N, dtype=torch.bool)
        self.truncated[5] = True

    def logps(self, theta: torch.Tensor, idx: list[int]) -> torch.Tensor:
        return F.logsigmoid(self.features[idx] @ theta)

    def inputs(self, theta: torch.Tensor, idx: list[int]) -> PolicyGradientInputs:
        return PolicyGradientInputs(self.logps(theta, idx), self.mask[idx], self.adv[idx], old_logps=self.old[idx],
                                    ref_logps=self.ref[idx], sampler_logps=self.sampler[idx],
                                    truncated=self.truncated[idx])


def step_units(params: PolicyGradientParams, mask: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Per-example units as the loop counts them: truncated rows lose theirs only when they are masked."""
    return units(params.aggregation, mask, flags if params.mask_truncated else None)


def right_normaliser(toy: Toy, params: PolicyGradientParams, parts: list[list[int]]) -> list[torch.Tensor]:
    """The loop's rule: every part divides by the units of the whole step."""
    total = step_units(params, toy.mask, toy.truncated).sum()
    return [total] * len(parts)


def local_token_mean(toy: Toy, params: PolicyGradientParams, parts: list[list[int]]) -> list[torch.Tensor]:
    """A deliberately wrong rule (TRL's "bnpo"): each micro-batch divides by its own units (at least 1),
    and the micro-batch results are averaged (× number of parts)."""
    return [step_units(params, toy.mask[p], toy.truncated[p]).sum().clamp(min=1) * len(parts) for p in parts]


def step_gradient(toy: Toy, params: PolicyGradientParams, processes: list[list[list[int]]], normaliser) -> torch.Tensor:
    """Gradient of one optimizer step: each process runs its micro-batches (backward on each, gradients
    accumulate), scales its loss by the world size W, and the processes' gradients are averaged (DDP)."""
    W = len(processes)
    grads = []
    for micro_batches in processes:
        theta = toy.theta0.clone().requires_grad_()
        denominators = normaliser(toy, params, micro_batches)
        for idx, denominator in zip(micro_batches, denominators, strict=True):
            out = policy_gradient_loss(toy.inputs(theta, idx), params)
            (W * out.losses.sum() / denominator).backward()
        grads.append(theta.grad)
    return torch.stack(grads).mean(dim=0)


SPLITS = {
    "8x1": [[list(range(8))]],
    "1x8": [[[i] for i in range(8)]],
    "4+4": [[[0, 1, 2, 3], [4, 5, 6, 7]]],
    "3+5 shuffled": [[[6, 1, 2], [0, 7, 3, 4, 5]]],
    "two processes": [[[0, 2], [4, 6]], [[1], [3, 5, 7]]],
}

INVARIANCE_PARAMS = [
    PolicyGradientParams(aggregation="token_mean", eps_high=0.28, beta=0.05, mask_truncated=True),
    PolicyGradientParams(aggregation="seq_mean_token_mean", beta=0.05, kl_ratio_weight=True, is_mode="token_truncate",
                         mask_truncated=True),
    PolicyGradientParams(aggregation="constant", max_completion_length=8, is_mode="sequence_mask", is_clip_max=1.5),
    PolicyGradientParams(aggregation="seq_mean_token_mean", ratio_level="sequence", eps_low=0.03, eps_high=0.04),
    PolicyGradientParams(aggregation="token_mean", ratio_level="sequence", eps_low=0.03, eps_high=0.04, beta=0.05),
    PolicyGradientParams(aggregation="token_mean", surrogate="cispo", cispo_max=1.2, is_mode="token_truncate",
                         mask_truncated=True),
    PolicyGradientParams(aggregation="seq_mean_token_mean", surrogate="sapo", beta=0.05),
    PolicyGradientParams(aggregation="seq_mean_token_sum", ratio_level="sequence", eps_low=0.03, eps_high=0.04),
    PolicyGradientParams(aggregation="token_mean", surrogate="vespo", is_mode="token_mask", is_clip_max=2.0),
    PolicyGradientParams(aggregation="seq_mean_token_mean", delta=1.3, off_policy_mask=0.05, beta=0.05),
]


@pytest.mark.parametrize("params", INVARIANCE_PARAMS,
                         ids=lambda p: f"{p.aggregation}-{p.ratio_level}-{p.is_mode}-{p.surrogate}")
def test_every_split_of_the_step_gives_the_same_gradient(params):
    """8 sequences of lengths 5, 8, 1, 6, 2, 7, 4, 3 (one truncated), split 8×1, 1×8, 4+4, 3+5 and over two
    processes with uneven micro-batches: the step's gradient agrees to 1e-6 (it does to rounding) in float64.
    With the local micro-batch normaliser instead, the same splits disagree (the check can fail)."""
    toy = Toy()
    grads = {name: step_gradient(toy, params, split, right_normaliser) for name, split in SPLITS.items()}
    reference = grads["8x1"]
    assert reference.abs().max() > 1e-3
    for name, g in grads.items():
        assert torch.allclose(g, reference, rtol=0, atol=1e-6), name

    if params.aggregation == "token_mean":
        wrong = {name: step_gradient(toy, params, split, local_token_mean) for name, split in SPLITS.items()}
        assert torch.allclose(wrong["8x1"], reference, rtol=0, atol=1e-12)  # one micro-batch: the same number
        for name in ("1x8", "4+4", "3+5 shuffled", "two processes"):
            assert (wrong[name] - reference).abs().max() > 1e-3, name


def test_split_invariance_of_the_loss_value():
    """The step's loss (Σ per-example losses / Σ units) is the same number summed over any split."""
    toy = Toy()
    for params in INVARIANCE_PARAMS:
        total = step_units(params, toy.mask, toy.truncated).sum()
        values = []
        for split in SPLITS.values():
            s = sum(float(policy_gradient_loss(toy.inputs(toy.theta0, idx), params).losses.sum())
                    for micro_batches in split for idx in micro_batches)
            values.append(s / float(total))
        assert max(values) - min(values) < 1e-12


# ------------------------------------------------------------------------ parity with TRL 1.16
#
# TRL 1.16's GRPOTrainer._compute_loss is run on per-token log-probs chosen here: the trainer is made
# with object.__new__ and given only the attributes that method reads; its model call
# (_get_per_token_logps_and_entropies) is replaced by a function returning the test's log-probs
# (with gradient) and entropies. Loss types map to aggregations as:
#
#   TRL loss_type  alignlab aggregation     TRL normaliser (one process, accumulation GA)
#   "grpo"         seq_mean_token_mean      mean over the micro-batch of token means, / GA
#   "dapo"         token_mean               num_items_in_batch (tokens of the generation batch) · GA / spg
#   "dr_grpo"      constant                 micro-batch size · max_completion_length, / GA
#   "bnpo"         (not offered)            the micro-batch's own token count, / GA: depends on the split
#
#   "cispo"        token_mean, surrogate cispo (TRL's epsilon_high is the cap, cispo_max)
#   "sapo"         seq_mean_token_mean, surrogate sapo
#   "luspo"        seq_mean_token_sum, sequence-level ratio (TRL requires it)
#   "vespo"        token_mean, surrogate vespo (token importance-sampling modes only, as TRL)
#
# TRL's truncated IS
# ratio is computed outside _compute_loss (in _generate_and_score_completions) and passed in as
# inputs["importance_sampling_ratio"]; trl_is_ratio below writes down those lines of TRL as they are.

LOSS_TYPES = {"grpo": "seq_mean_token_mean", "dapo": "token_mean", "dr_grpo": "constant"}
MAX_LEN = 9
# SAPO's τ where A > 0 and A <= 0. TRL builds its τ tensor with torch.where from Python floats, which
# makes a float32 tensor: its default 1.05 becomes 1.0499999523 even in a float64 loss (a 3e-8 relative
# difference); alignlab keeps τ in the loss's dtype. The parity uses values exact in float32.
SAPO_TAUS = (1.0, 1.0625)
VESPO = (2.0, 3.0, 3.0, 2.0)  # k, λ where A >= 0, then where A < 0: TRL 1.16's defaults (exact in float32)
# loss type: (alignlab params beyond the parity's shared ones, TRL's level, TRL's ε_low, ε_high)
OTHER_TYPES = {
    "cispo": (dict(surrogate="cispo", cispo_max=1.3, aggregation="token_mean"), "token", 0.2, 1.3),
    "sapo": (dict(surrogate="sapo", sapo_tau_pos=SAPO_TAUS[0], sapo_tau_neg=SAPO_TAUS[1],
                  aggregation="seq_mean_token_mean"), "token", 0.2, 0.28),
    "luspo": (dict(aggregation="seq_mean_token_sum", ratio_level="sequence", eps_low=0.03, eps_high=0.04),
              "sequence", 0.03, 0.04),
    "vespo": (dict(surrogate="vespo", vespo_k_pos=VESPO[0], vespo_lambda_pos=VESPO[1], vespo_k_neg=VESPO[2],
                   vespo_lambda_neg=VESPO[3], aggregation="token_mean"), "token", 0.2, 0.28),
}


def trl_is_ratio(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, mode: str, clip_max, clip_min):
    """TRL 1.16 grpo_trainer.py, _generate_and_score_completions (the vllm_importance_sampling_correction block)."""
    diff = torch.nan_to_num((old - sampler) * mask, nan=0.0)
    if mode in ("sequence_mask", "sequence_truncate"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode in ("sequence_truncate", "token_truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    low = clip_min if clip_min is not None else -math.inf
    high = clip_max if clip_max is not None else math.inf
    return ratio.masked_fill((ratio < low) | (ratio > high), value=0.0)


def trl_grpo(logps: torch.Tensor, entropies: torch.Tensor, batch: dict, *, loss_type: str, level: str,
             eps_low: float, eps_high: float, beta: float, bias_correction_kl: bool, is_mode: str,
             grad_accum: int = 1, steps_per_generation: int = 1, delta: float | None = None,
             off_policy_threshold: float | None = None):
    """TRL's loss (differentiable in ``logps``) and its logged metrics for one micro-batch."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    from tests.losses.trl_harness import fake_accelerator

    accelerator = fake_accelerator()
    accelerator.num_processes = 1
    accelerator.reduce = lambda x, reduction="sum": x
    trainer = object.__new__(GRPOTrainer)
    trainer.__dict__.update(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logps, entropies, None),
        accelerator=accelerator, model=SimpleNamespace(training=True), _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(use_bias_correction_kl=bias_correction_kl, delta=delta,
                             steps_per_generation=steps_per_generation, sapo_temperature_pos=SAPO_TAUS[0],
                             sapo_temperature_neg=SAPO_TAUS[1], vespo_k_pos=VESPO[0], vespo_lambda_pos=VESPO[1],
                             vespo_k_neg=VESPO[2], vespo_lambda_neg=VESPO[3]),
        loss_type=loss_type, importance_sampling_level=level, epsilon_low=eps_low, epsilon_high=eps_high, beta=beta,
        use_vllm=is_mode != "off", vllm_importance_sampling_correction=is_mode != "off", top_entropy_quantile=1.0,
        off_policy_mask_threshold=off_policy_threshold, aux_loss_enabled=False, _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=grad_accum, max_completion_length=MAX_LEN,
    )
    loss = trainer._compute_loss(None, batch)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items() if v}


class Rollout:
    """Two prompts × three samples, completions of random lengths 1..MAX_LEN, off-policy log-probs."""

    def __init__(self, seed: int, truncated: bool = False):
        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        B = 6
        lengths = [rng.randint(1, MAX_LEN) for _ in range(B)]
        lengths[0] = MAX_LEN
        self.mask = torch.tensor([[1] * n + [0] * (MAX_LEN - n) for n in lengths])
        self.flags = torch.tensor([n == MAX_LEN for n in lengths]) if truncated else torch.zeros(B, dtype=torch.bool)
        self.logps = -torch.rand(B, MAX_LEN, generator=gen, dtype=F64) * 3
        self.old = self.logps + 0.4 * torch.randn(B, MAX_LEN, generator=gen, dtype=F64)
        self.ref = self.logps + 0.3 * torch.randn(B, MAX_LEN, generator=gen, dtype=F64)
        self.sampler = self.old + 0.6 * torch.randn(B, MAX_LEN, generator=gen, dtype=F64)
        self.entropy = torch.rand(B, MAX_LEN, generator=gen, dtype=F64) * 2
        self.adv = group_advantages(torch.rand(2, 3, generator=gen, dtype=F64)).reshape(-1)

    def trl_batch(self, rows: list[int], is_mode: str, clip_max, clip_min, num_items: torch.Tensor) -> dict:
        mask = (self.mask * (~self.flags).long().unsqueeze(1))[rows]  # TRL zeros truncated rows' mask upstream
        batch = {"prompt_ids": torch.zeros(len(rows), 1, dtype=torch.long),
                 "prompt_mask": torch.ones(len(rows), 1, dtype=torch.long),
                 "completion_ids": torch.ones(len(rows), MAX_LEN, dtype=torch.long), "completion_mask": mask,
                 "advantages": self.adv[rows], "old_per_token_logps": self.old[rows],
                 "ref_per_token_logps": self.ref[rows], "num_items_in_batch": num_items}
        if is_mode != "off":
            batch["importance_sampling_ratio"] = trl_is_ratio(self.old[rows], self.sampler[rows], mask, is_mode,
                                                              clip_max, clip_min)
        return batch

    def inputs(self, logps: torch.Tensor, rows: list[int]) -> PolicyGradientInputs:
        return PolicyGradientInputs(logps, self.mask[rows], self.adv[rows], old_logps=self.old[rows],
                                    ref_logps=self.ref[rows], sampler_logps=self.sampler[rows],
                                    truncated=self.flags[rows], entropy=self.entropy[rows])


def against_trl(r: Rollout, batch: dict, params: PolicyGradientParams, **trl_kwargs):
    """TRL's loss on the whole rollout (one micro-batch, ``trl_grpo`` with ``trl_kwargs``) and
    alignlab's whole-step loss with ``params``; asserts that the two and their gradients w.r.t.
    every per-token log-prob agree at 1e-9 (float64), and that the gradient is not 0. Returns
    alignlab's ``LossOutput`` and TRL's logged metrics."""
    rows = list(range(len(r.mask)))
    trl_logps = r.logps.clone().requires_grad_()
    trl_loss, trl_metrics = trl_grpo(trl_logps, r.entropy, batch, **trl_kwargs)
    trl_loss.backward()
    logps = r.logps.clone().requires_grad_()
    out = policy_gradient_loss(r.inputs(logps, rows), params)
    ours = step_loss(out, units(params.aggregation, r.mask))
    ours.backward()
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-9, abs=1e-9)
    assert torch.allclose(logps.grad, trl_logps.grad, rtol=1e-9, atol=1e-9)
    assert logps.grad.abs().max() > 1e-3
    return out, trl_metrics


def _eps(level: str) -> tuple[float, float]:
    return (0.2, 0.28) if level == "token" else (0.03, 0.04)  # GSPO clips the sequence ratio tightly


KL_SETTINGS = {"no-kl": (0.0, False), "k3": (0.04, False), "k3*ratio": (0.04, True)}
IS_SETTINGS = {"off": ("off", 3.0, None), "token_truncate": ("token_truncate", 1.5, None),
               "token_mask": ("token_mask", 1.5, 0.7), "sequence_truncate": ("sequence_truncate", 2.0, 0.5),
               "sequence_mask": ("sequence_mask", 4.0, 0.25)}


def test_trl_is_the_version_the_parity_was_written_for():
    trl = pytest.importorskip("trl")
    assert trl.__version__ == "1.16.0"


@pytest.mark.parametrize("is_name", list(IS_SETTINGS))
@pytest.mark.parametrize("kl_name", list(KL_SETTINGS))
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
def test_trl_grpo_parity(loss_type, level, kl_name, is_name):
    """Loss and gradient w.r.t. every per-token log-prob agree with TRL's at 1e-9 (float64). The logged KL,
    entropy and clip fractions agree at 1e-6: TRL logs global token means whose token count it casts to
    float32; ours are per-example means, weighted here by each example's token count (at sequence level
    TRL's clip fractions count sequences)."""
    pytest.importorskip("trl")
    beta, weighted = KL_SETTINGS[kl_name]
    is_mode, clip_max, clip_min = IS_SETTINGS[is_name]
    eps_low, eps_high = _eps(level)
    for seed in (0, 1):
        r = Rollout(seed)
        params = PolicyGradientParams(eps_low=eps_low, eps_high=eps_high, ratio_level=level, beta=beta,
                                      kl_ratio_weight=weighted, aggregation=LOSS_TYPES[loss_type],
                                      max_completion_length=MAX_LEN, is_mode=is_mode, is_clip_max=clip_max,
                                      is_clip_min=clip_min)
        out, trl_metrics = against_trl(
            r, r.trl_batch(list(range(6)), is_mode, clip_max, clip_min, r.mask.sum()), params, loss_type=loss_type,
            level=level, eps_low=eps_low, eps_high=eps_high, beta=beta, bias_correction_kl=weighted, is_mode=is_mode)
        n = r.mask.sum(1).to(F64)
        token_weighted = {k: float((v * n).sum() / n.sum()) for k, v in out.metrics.items()}
        seq_mean = {k: float(v.mean()) for k, v in out.metrics.items()}
        clip = token_weighted if level == "token" else seq_mean
        assert clip["clip/low"] == pytest.approx(trl_metrics["clip_ratio/low_mean"], rel=1e-6, abs=1e-6)
        assert clip["clip/high"] == pytest.approx(trl_metrics["clip_ratio/high_mean"], rel=1e-6, abs=1e-6)
        assert token_weighted["entropy"] == pytest.approx(trl_metrics["entropy"], rel=1e-6, abs=1e-6)
        if beta:
            assert token_weighted["kl"] == pytest.approx(trl_metrics["kl"], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("is_name", list(IS_SETTINGS))
@pytest.mark.parametrize("kl_name", list(KL_SETTINGS))
@pytest.mark.parametrize("loss_type", list(OTHER_TYPES))
def test_trl_other_loss_types_parity(loss_type, kl_name, is_name):
    """CISPO, SAPO, LUSPO and VESPO: loss and gradient w.r.t. every per-token log-prob agree with TRL
    1.16's at 1e-9 (float64), with and without the KL term and each importance-sampling correction
    (VESPO: the token ones; both refuse the sequence ones); CISPO's clip fraction agrees with TRL's
    ``cispo_clip_ratio`` (and the data does cap some tokens), VESPO's mean weight over sequences with
    its ``vespo/phi_seq_mean``."""
    pytest.importorskip("trl")
    beta, weighted = KL_SETTINGS[kl_name]
    is_mode, clip_max, clip_min = IS_SETTINGS[is_name]
    extra, level, eps_low, eps_high = OTHER_TYPES[loss_type]
    if loss_type == "vespo" and is_mode.startswith("sequence"):  # TRL refuses it too
        with pytest.raises(ParamError, match="is_mode"):
            PolicyGradientParams(**extra, is_mode=is_mode)
        return
    if loss_type == "vespo" and is_mode == "token_mask":
        # a masked token puts log 1e-8 into its sequence's weight, so [0.7, 1.5] leaves every φ ≈ 0
        # and nothing to compare; a wider range masks fewer
        clip_max, clip_min = 8.0, 0.1
    for seed in (0, 1):
        r = Rollout(seed)
        params = PolicyGradientParams(**{"eps_low": eps_low, "eps_high": eps_high, **extra}, beta=beta,
                                      kl_ratio_weight=weighted, is_mode=is_mode, is_clip_max=clip_max,
                                      is_clip_min=clip_min)
        out, trl_metrics = against_trl(
            r, r.trl_batch(list(range(6)), is_mode, clip_max, clip_min, r.mask.sum()), params, loss_type=loss_type,
            level=level, eps_low=eps_low, eps_high=eps_high, beta=beta, bias_correction_kl=weighted, is_mode=is_mode)
        n = r.mask.sum(1).to(F64)
        if loss_type == "cispo":
            capped = float((out.metrics["clip/high"] * n).sum() / n.sum())
            assert capped == pytest.approx(trl_metrics["cispo_clip_ratio"], rel=1e-6, abs=1e-6)
            assert capped > 0
        if loss_type == "vespo":  # one weight per sequence: TRL averages it over sequences
            phi = float(out.metrics["vespo/phi"].mean())
            assert phi == pytest.approx(trl_metrics["vespo/phi_seq_mean"], rel=1e-6, abs=1e-6)


def test_trl_other_loss_types_accumulate_as_the_global_step():
    """TRL with two micro-batches of three (gradient_accumulation_steps = steps_per_generation = 2) for
    cispo, sapo, luspo and vespo: its summed micro-batch losses and accumulated gradients equal alignlab's
    whole-step loss and gradient."""
    pytest.importorskip("trl")
    r = Rollout(4)
    for loss_type, (extra, level, eps_low, eps_high) in OTHER_TYPES.items():
        trl_grad = torch.zeros_like(r.logps)
        trl_total = 0.0
        for rows in ([0, 1, 2], [3, 4, 5]):
            trl_logps = r.logps[rows].clone().requires_grad_()
            loss, _ = trl_grpo(trl_logps, r.entropy[rows], r.trl_batch(rows, "off", 3.0, None, r.mask.sum()),
                               loss_type=loss_type, level=level, eps_low=eps_low, eps_high=eps_high, beta=0.04,
                               bias_correction_kl=False, is_mode="off", grad_accum=2, steps_per_generation=2)
            loss.backward()
            trl_grad[rows] = trl_logps.grad
            trl_total += loss.item()
        params = PolicyGradientParams(**{"eps_low": eps_low, "eps_high": eps_high, **extra}, beta=0.04)
        logps = r.logps.clone().requires_grad_()
        ours = step_loss(policy_gradient_loss(r.inputs(logps, list(range(6))), params), units(params.aggregation, r.mask))
        ours.backward()
        assert ours.item() == pytest.approx(trl_total, rel=1e-9, abs=1e-9), loss_type
        assert torch.allclose(logps.grad, trl_grad, rtol=1e-9, atol=1e-9), loss_type


@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
@pytest.mark.parametrize("guard", ["delta", "off_policy_mask", "both"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_trl_parity_of_two_sided_clipping_and_off_policy_masking(loss_type, guard, level):
    """TRL's ``delta`` and ``off_policy_mask_threshold`` against alignlab's ``delta`` and
    ``off_policy_mask`` (the sampler's log-probs given to both), with β > 0 and token truncation,
    token and sequence (GSPO) ratios: loss and gradient at 1e-9 (float64). The data masks some
    sequences and caps some ratios (at sequence level δ = 1.02, which some sequence ratios of
    negative advantage pass)."""
    pytest.importorskip("trl")
    if level == "sequence":
        delta = 1.02 if guard in ("delta", "both") else None
    else:
        delta = 1.35 if guard in ("delta", "both") else None
    threshold = 0.05 if guard in ("off_policy_mask", "both") else None
    masked = capped = 0.0
    for seed in (0, 1):
        r = Rollout(seed)
        batch = r.trl_batch(list(range(6)), "token_truncate", 1.5, None, r.mask.sum())
        batch["sampling_per_token_logps"] = r.sampler
        params = PolicyGradientParams(eps_low=0.2, eps_high=0.28, beta=0.04, aggregation=LOSS_TYPES[loss_type],
                                      max_completion_length=MAX_LEN, is_mode="token_truncate", is_clip_max=1.5,
                                      delta=delta, off_policy_mask=threshold, ratio_level=level)
        out, _ = against_trl(r, batch, params, loss_type=loss_type, level=level, eps_low=0.2, eps_high=0.28,
                             beta=0.04, bias_correction_kl=False, is_mode="token_truncate", delta=delta,
                             off_policy_threshold=threshold)
        if threshold is not None:
            masked += float(out.metrics["off_policy_masked"].sum())
        if level == "token":
            ratio = torch.exp(r.logps - r.old)
            capped += float(((ratio > 1.35) & (r.adv.unsqueeze(1) < 0) & r.mask.bool()).sum())
        else:
            m = r.mask.double()
            ratio = torch.exp(((r.logps - r.old) * m).sum(-1) / m.sum(-1))
            capped += float(((ratio > 1.02) & (r.adv < 0)).sum())
    assert capped > 0
    assert threshold is None or masked > 0


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_trl_parity_exercises_clipping(level):
    """The parity data clips on both sides at both ratio levels (otherwise the parity would not test it)."""
    pytest.importorskip("trl")
    eps_low, eps_high = _eps(level)
    lows = highs = 0.0
    for seed in (0, 1):
        r = Rollout(seed)
        logps = r.logps.clone()
        out = policy_gradient_loss(r.inputs(logps, list(range(6))),
                                   PolicyGradientParams(eps_low=eps_low, eps_high=eps_high, ratio_level=level))
        lows += float(out.metrics["clip/low"].sum())
        highs += float(out.metrics["clip/high"].sum())
    assert lows > 0 and highs > 0


@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
def test_trl_parity_with_truncated_completions_masked(loss_type):
    """TRL's mask_truncated_completions zeros the mask of completions that reached the length limit before
    the loss (and before counting num_items_in_batch); alignlab's truncated flag with mask_truncated does
    the same inside the loss and in ``units``."""
    pytest.importorskip("trl")
    r = Rollout(3, truncated=True)
    assert r.flags.any() and not r.flags.all()
    rows = list(range(6))
    kept = (r.mask * (~r.flags).long().unsqueeze(1)).sum()
    trl_logps = r.logps.clone().requires_grad_()
    trl_loss, _ = trl_grpo(trl_logps, r.entropy, r.trl_batch(rows, "off", 3.0, None, kept), loss_type=loss_type,
                           level="token", eps_low=0.2, eps_high=0.28, beta=0.04, bias_correction_kl=True, is_mode="off")
    trl_loss.backward()
    params = PolicyGradientParams(eps_high=0.28, beta=0.04, kl_ratio_weight=True, aggregation=LOSS_TYPES[loss_type],
                                  max_completion_length=MAX_LEN, mask_truncated=True)
    logps = r.logps.clone().requires_grad_()
    ours = step_loss(policy_gradient_loss(r.inputs(logps, rows), params), units(params.aggregation, r.mask, r.flags))
    ours.backward()
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-9, abs=1e-9)
    assert torch.allclose(logps.grad, trl_logps.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("loss_type", list(LOSS_TYPES))
def test_trl_gradient_accumulation_matches_the_global_step(loss_type):
    """TRL with two micro-batches of three (gradient_accumulation_steps = steps_per_generation = 2; "dapo"
    gets num_items_in_batch of the whole generation batch): the sum of its micro-batch losses equals
    alignlab's whole-step loss, and so do the accumulated gradients. (TRL's "grpo" and "dr_grpo" need
    equal micro-batches for this; alignlab's units do not.)"""
    pytest.importorskip("trl")
    r = Rollout(4)
    total_tokens = r.mask.sum()
    trl_grad = torch.zeros_like(r.logps)
    trl_total = 0.0
    for rows in ([0, 1, 2], [3, 4, 5]):
        trl_logps = r.logps[rows].clone().requires_grad_()
        loss, _ = trl_grpo(trl_logps, r.entropy[rows], r.trl_batch(rows, "off", 3.0, None, total_tokens),
                           loss_type=loss_type, level="token", eps_low=0.2, eps_high=0.28, beta=0.04,
                           bias_correction_kl=False, is_mode="off", grad_accum=2, steps_per_generation=2)
        loss.backward()
        trl_grad[rows] = trl_logps.grad
        trl_total += loss.item()

    params = PolicyGradientParams(eps_high=0.28, beta=0.04, aggregation=LOSS_TYPES[loss_type],
                                  max_completion_length=MAX_LEN)
    logps = r.logps.clone().requires_grad_()
    ours = step_loss(policy_gradient_loss(r.inputs(logps, list(range(6))), params), units(params.aggregation, r.mask))
    ours.backward()
    assert ours.item() == pytest.approx(trl_total, rel=1e-9, abs=1e-9)
    assert torch.allclose(logps.grad, trl_grad, rtol=1e-9, atol=1e-9)
