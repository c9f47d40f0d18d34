"""Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for
Reasoning Language Models"; verl's ``clip_cov`` / ``kl_cov`` policy losses): the step's tokens of
high covariance between log-prob and advantage lose their gradient (Clip-Cov) or get a penalty
|log π − log π_old| (KL-Cov)."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab import train
from alignlab.losses.params import ParamError
from alignlab.losses.policy_gradient import PolicyGradientInputs, PolicyGradientParams, policy_gradient_loss
from alignlab.losses.registry import get_loss
from alignlab.training.distributed import Dist, StepReduce
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from tests.data.test_pack import _model
from tests.losses.test_policy_gradient import TOL, ratio_batch, t
from tests.training.helpers import max_abs_diff, weights
from tests.training.test_online import metrics, online
from tests.training.test_online_entropy_bonus import EXAMPLES
from tests.training.test_online_entropy_mask import _entropies


def test_the_losses_by_hand():
    """``ratio_batch``'s ratios 1.5, 0.5, 1.1, 0.7, A = +2, ε 0.2.
    Clip-Cov with token 3 selected: −min(c·A, clip(c)·A) per token = −2.4 (clipped: gradient 0),
    −1 (gradient −c·A = −1), 0 (selected), −1.4 (gradient −1.4): sum −4.8.
    KL-Cov with token 1 selected, κ = 0.1: −c·A = −3, −1, −2.2, −1.4 (no clip), plus
    0.1·|log 1.5| on token 1: sum −7.6 + 0.1·log 1.5; gradients −c·A, and +0.1 more on token 1."""
    for surrogate, sel, loss, grad in (
            ("clip_cov", [0, 0, 1, 0, 0], -4.8, [0.0, -1.0, 0.0, -1.4, 0.0]),
            ("kl_cov", [1, 0, 0, 0, 0], -7.6 + 0.1 * math.log(1.5), [-2.9, -1.0, -2.2, -1.4, 0.0])):
        logps, old, mask = ratio_batch([2.0])
        inputs = PolicyGradientInputs(logps, mask, t([2.0]), old_logps=old, cov_selected=torch.tensor([sel]).bool())
        out = policy_gradient_loss(inputs, PolicyGradientParams(surrogate=surrogate, kl_cov_coef=0.1))
        assert out.losses.tolist() == pytest.approx([loss], abs=TOL), surrogate
        out.losses.sum().backward()
        assert torch.allclose(logps.grad, t([grad]), rtol=0, atol=TOL), surrogate
        assert out.metrics["cov/selected"].tolist() == [0.25]


def test_bad_settings_are_refused():
    with pytest.raises(ParamError, match="cov_ratio"):
        PolicyGradientParams(surrogate="kl_cov", cov_ratio=0.0)
    with pytest.raises(ParamError, match="clip_cov_lb"):
        PolicyGradientParams(surrogate="clip_cov", clip_cov_lb=5.0, clip_cov_ub=1.0)
    with pytest.raises(ParamError, match="ratio_level"):
        PolicyGradientParams(surrogate="kl_cov", ratio_level="sequence")
    logps, old, mask = ratio_batch([2.0])
    with pytest.raises(ValueError, match="cov_selected"):
        policy_gradient_loss(PolicyGradientInputs(logps, mask, t([2.0]), old_logps=old),
                             PolicyGradientParams(surrogate="kl_cov"))


def _covariances(model) -> list[float]:
    """cov_t = (A_t − Ā)(ℓ_t − ℓ̄) over the 12 tokens of ``EXAMPLES`` in order, ℓ from each
    prompt + completion's own full logits."""
    with torch.no_grad():
        lps, advs = [], []
        for e in EXAMPLES:
            logp, _ = _entropies(model, e)
            lps += logp.gather(-1, torch.tensor(e.completion_ids)[:, None]).squeeze(-1).tolist()
            advs += list(e.advantages)
    ml, ma = sum(lps) / len(lps), sum(advs) / len(advs)
    return [(a - ma) * (x - ml) for a, x in zip(advs, lps, strict=True)]


def _selection(forward, model, parts, step=0) -> list[bool]:
    forward.before_step(model, [[EXAMPLES[i] for i in p] for p in parts], StepReduce(Dist(), step))
    return [bool(x) for e in EXAMPLES for x in forward._cov[id(e)]]


def test_kl_cov_selects_the_largest_covariances_for_any_split():
    """cov_ratio 0.25 of 12 tokens: the 3 tokens of largest covariance (computed here from the
    model's own logits), whether the step is one micro-batch or three."""
    model = _model()
    cov = _covariances(model)
    want = [False] * 12
    for i in sorted(range(12), key=lambda i: -cov[i])[:3]:
        want[i] = True
    spec = get_loss("grpo")
    forward = PolicyGradientForward(spec, spec.params(surrogate="kl_cov", cov_ratio=0.25), max_new_tokens=6)
    for parts in ([[0, 1, 2, 3]], [[0], [3], [1, 2]]):
        assert _selection(forward, model, parts) == want, parts


def test_clip_cov_draws_among_the_eligible_tokens_the_same_way_for_any_split():
    """lb, ub around the middle of the covariances: the selection is max(1, ⌊0.25·12⌋) = 3 of the
    tokens with lb < cov < ub (all unclipped: one update per round), the same for one micro-batch
    or three in another order (the draw follows each token's own key, not its place), and another
    step draws with other keys."""
    model = _model()
    cov = _covariances(model)
    lo, hi = sorted(cov)[2], sorted(cov)[11]
    eligible = [lo < c < hi for c in cov]
    assert sum(eligible) >= 6
    spec = get_loss("grpo")
    forward = PolicyGradientForward(spec, spec.params(surrogate="clip_cov", cov_ratio=0.25, clip_cov_lb=lo,
                                                      clip_cov_ub=hi), max_new_tokens=6, seed=3)
    picks = {}
    for step in range(6):
        picks[step] = _selection(forward, model, [[0, 1, 2, 3]], step)
        assert sum(picks[step]) == 3 and all(e for p, e in zip(picks[step], eligible, strict=True) if p)
        assert _selection(forward, model, [[0], [3], [1, 2]], step) == picks[step]
    assert len({tuple(p) for p in picks.values()}) > 1


@pytest.mark.parametrize("surrogate", ["clip_cov", "kl_cov"])
def test_a_run_is_split_invariant_and_selects_tokens(tmp_path, tiny_model_dir, surrogate):
    """fp64, 4 steps of 2 updates per round (KL-Cov acts from a round's second update on), a
    ratio that selects a few tokens a step: 8 × 1 = 2 × 4, every step selects some tokens, and
    the run differs from plain GRPO."""
    kw = dict(surrogate=surrogate, cov_ratio=0.2, clip_cov_lb=-1e9, clip_cov_ub=1e9, updates_per_rollout=2,
              max_steps=4, packing=False)
    a = train(online(tiny_model_dir, tmp_path / "a", **kw))
    b = train(online(tiny_model_dir, tmp_path / "b", batch_size=2, grad_accum=4, **kw))
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) < 1e-9
    rows = [m for m in metrics(tmp_path / "a") if "loss" in m]
    assert all(m.get("cov/selected", 0) > 0 for m in rows)
    plain = train(online(tiny_model_dir, tmp_path / "plain", updates_per_rollout=2, max_steps=4, packing=False))
    assert max_abs_diff(weights(a.model_dir), weights(plain.model_dir)) > 1e-6


def test_a_prompt_drawn_twice_in_a_step_gets_one_selection_whatever_the_order():
    """A prompt can come twice in one step (a prompt set smaller than the round, or dynamic
    sampling drawing it again) and give the same completion in both groups, with other
    advantages: D1 (A = +1) and D2 (A = −1), one token each, the same row, prompt and completion,
    so the same key; E, another prompt's three tokens (A = 0.5). All 5 tokens are eligible
    (lb, ub = ∓1e9; unclipped: one update per round) and Clip-Cov takes max(1, ⌊0.2·5⌋) = 1: the
    token of least key. With a seed where that is D1's and D2's shared key, the two tokens are not
    the same term (their advantages differ), so the choice must not follow the order the step's
    completions come in (micro-batches put those with advantage 0 last, and split the step
    differently): ties of the key go to the lower advantage, D2, in either order."""
    from alignlab.training.forward.policy_gradient import _token_keys
    from tests.training.test_online_entropy_bonus import _example

    d1, d2, e = _example(5, (1, 5), (10,)), _example(5, (1, 5), (10,)), _example(6, (1, 7), (11, 12, 13))
    d1.advantages, d2.advantages, e.advantages = (1.0,), (-1.0,), (0.5,) * 3
    seed = next(s for s in range(100) if _token_keys(s, 0, d1)[0] < min(_token_keys(s, 0, e)))
    model = _model()
    spec = get_loss("grpo")
    forward = PolicyGradientForward(spec, spec.params(surrogate="clip_cov", cov_ratio=0.2, clip_cov_lb=-1e9,
                                                      clip_cov_ub=1e9), max_new_tokens=6, seed=seed)
    for parts in ([[d1, d2, e]], [[d2, d1, e]], [[e], [d1], [d2]], [[d2], [e, d1]]):
        forward.before_step(model, parts, StepReduce(Dist(), 0))
        got = [forward._cov[id(x)].tolist() for x in (d1, d2, e)]
        assert got == [[False], [True], [False, False, False]], parts


def test_token_keys_are_the_documented_blake2b_and_splitmix64_keys():
    """``_token_keys`` as its docstring defines it, written out here in Python integers: the
    completion's key k = BLAKE2b-64 (little-endian) of repr((seed, step, row, prompt, completion)),
    and token t's key the SplitMix64 finaliser of (k + (t + 1)·0x9E3779B97F4A7C15) mod 2⁶⁴
    (z ^= z >> 30, z *= 0xBF58476D1CE4E5B9; z ^= z >> 27, z *= 0x94D049BB133111EB; z ^= z >> 31,
    each product mod 2⁶⁴). The keys order the Clip-Cov draw, so they must be unsigned 64-bit
    (uint64): as int64, a key with its top bit set would sort first. Over 8 seeds of a 40-token
    completion, k + (t + 1)·G wraps past 2⁶⁴ (G > 2⁶³), and some completion key has its top bit set."""
    import hashlib

    import numpy as np

    from alignlab.training.forward.policy_gradient import _token_keys
    from tests.training.test_online_entropy_bonus import _example

    mask = (1 << 64) - 1
    example = _example(7, (1, 9, 4), tuple(3 + i % 50 for i in range(40)))
    top_bit = False
    for seed in range(8):
        digest = hashlib.blake2b(repr((seed, 3, 7, (1, 9, 4), example.completion_ids)).encode(),
                                 digest_size=8).digest()
        base = int.from_bytes(digest, "little")
        top_bit |= base >> 63 == 1
        want = []
        for pos in range(40):
            z = (base + (pos + 1) * 0x9E3779B97F4A7C15) & mask
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
            want.append(z ^ (z >> 31))
        got = _token_keys(seed, 3, example)
        assert got.dtype == np.uint64
        assert [int(x) for x in got] == want
    assert top_bit
