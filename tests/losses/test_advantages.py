"""Advantages, returns and KL estimators of online RL: numbers derived by hand, and properties.

The running example is two prompts with three samples each, rewards [[1, 2, 3], [0, 0, 6]]:
group means 2 and 2, centred rewards [−1, 0, 1] and [−2, −2, 4].
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from alignlab.losses.advantages import (
    discounted_returns,
    gae,
    group_advantages,
    kl_estimate,
    last_token_index,
    opo_advantages,
    passk_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    token_rewards,
    whiten,
)

TOL = 1e-12
F64 = torch.float64


def t(values, dtype=F64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


REWARDS = [[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]


# ------------------------------------------------------------------------------------- GRPO


def test_grpo_group_scale_by_hand():
    """scale="group", ε = 1e-4 added to the unbiased (n − 1) std.

    Group 1: deviations −1, 0, 1; Σd² = 2, var = 2/2 = 1, std = 1; A = [−1, 0, 1]/1.0001
        = [−0.99990001, 0, 0.99990001].
    Group 2: deviations −2, −2, 4; Σd² = 4 + 4 + 16 = 24, var = 24/2 = 12, std = 2√3 = 3.46410161514;
        A = [−2, −2, 4]/(2√3 + 1e-4) = [−2, −2, 4]/3.46420161514 = [−0.57733360, −0.57733360, 1.15466721].
    (With the biased n-divisor group 1 would give ±1/(√(2/3) + 1e-4) = ±1.2246: the test tells them apart.)
    """
    a = group_advantages(t(REWARDS), scale="group")
    s2 = 2 * math.sqrt(3) + 1e-4
    expected = [[-1 / 1.0001, 0.0, 1 / 1.0001], [-2 / s2, -2 / s2, 4 / s2]]
    assert a.shape == (2, 3) and a.dtype == F64
    assert torch.allclose(a, t(expected), rtol=0, atol=TOL)
    assert float(a[0, 0]) == pytest.approx(-0.9999000099990001, abs=TOL)
    assert float(a[1, 2]) == pytest.approx(1.1546672060, abs=1e-9)


def test_grpo_batch_scale_uses_group_mean_and_batch_std():
    """scale="batch": the group means (2, 2) are subtracted, but the std is of all six raw rewards.

    Rewards 1, 2, 3, 0, 0, 6: mean 2, deviations −1, 0, 1, −2, −2, 4; Σd² = 1 + 0 + 1 + 4 + 4 + 16 = 26;
    unbiased var = 26/5 = 5.2, std = √5.2 = 2.28035085. A = [−1, 0, 1, −2, −2, 4]/(√5.2 + 1e-4).
    """
    a = group_advantages(t(REWARDS), scale="batch")
    s = math.sqrt(5.2) + 1e-4
    assert torch.allclose(a, t([[-1 / s, 0.0, 1 / s], [-2 / s, -2 / s, 4 / s]]), rtol=0, atol=TOL)


def test_grpo_no_scale_is_centred_rewards():
    """scale="none" (Dr. GRPO): A = r − group mean = [[−1, 0, 1], [−2, −2, 4]]."""
    a = group_advantages(t(REWARDS), scale="none")
    assert a.tolist() == [[-1.0, 0.0, 1.0], [-2.0, -2.0, 4.0]]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_flat_rewards_with_group_ids_match_the_grid(scale):
    """The same six rewards as a flat (B,) tensor in shuffled order with arbitrary group ids (7 for
    prompt 1, −3 for prompt 2) give the same advantages, in the flat order."""
    order = [4, 0, 5, 2, 3, 1]
    flat = t(REWARDS).reshape(-1)[order]
    ids = torch.tensor([7, 7, 7, -3, -3, -3])[order]
    grid = group_advantages(t(REWARDS), scale=scale).reshape(-1)[order]
    assert torch.allclose(group_advantages(flat, ids, scale=scale), grid, rtol=0, atol=TOL)


def test_grpo_uneven_groups():
    """Groups of sizes 2 and 4: [3, 5] → mean 4, deviations ∓1, var = 2/1 = 2, A = ∓1/(√2 + 1e-4);
    [1, 1, 1, 5] → mean 2, deviations −1, −1, −1, 3, Σd² = 12, var = 12/3 = 4, std 2, A = [−1, −1, −1, 3]/2.0001."""
    r = t([3.0, 1.0, 5.0, 1.0, 1.0, 5.0])
    ids = torch.tensor([0, 1, 0, 1, 1, 1])
    s1, s2 = math.sqrt(2) + 1e-4, 2.0001
    expected = t([-1 / s1, -1 / s2, 1 / s1, -1 / s2, -1 / s2, 3 / s2])
    assert torch.allclose(group_advantages(r, ids), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_zero_variance_group_is_exactly_zero(scale):
    """A group of equal rewards (0.1 is not exact in binary; the group mean must still cancel) gets
    exactly 0, and so does a group of one sample."""
    r = t([0.1, 0.1, 0.1, 0.7, 0.3, 2.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 2])
    a = group_advantages(r, ids, scale=scale)
    assert a[:3].tolist() == [0.0, 0.0, 0.0]
    assert float(a[5]) == 0.0
    assert float(a[3]) > 0 > float(a[4])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_group_advantages_sum_to_zero(scale):
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(5, 8, generator=gen, dtype=F64) * 3 + 1
    a = group_advantages(r, scale=scale)
    assert torch.allclose(a.sum(dim=1), torch.zeros(5, dtype=F64), rtol=0, atol=1e-12)
    assert not a.requires_grad


def test_grpo_std_is_trl_nanstd():
    """TRL 1.16 scales by its ``nanstd`` helper (Bessel-corrected) plus 1e-4: checked against that helper.

    The agreement is to 1e-6, not to float64 rounding: ``nanstd`` computes the correction n/(n − 1) as
    an integer division, which gives a float32 tensor, so in float64 its std is off by a relative
    ~1e-8 (6/5 in float32 is 1.2000000477). alignlab's std is the exact unbiased one."""
    utils = pytest.importorskip("trl.trainer.utils")
    gen = torch.Generator().manual_seed(1)
    r = torch.rand(4, 6, generator=gen, dtype=F64)
    expected = (r - r.mean(dim=1, keepdim=True)) / (utils.nanstd(r, dim=1).unsqueeze(1) + 1e-4)
    assert torch.allclose(group_advantages(r), expected, rtol=0, atol=1e-6)
    expected_batch = (r - r.mean(dim=1, keepdim=True)) / (utils.nanstd(r) + 1e-4)
    assert torch.allclose(group_advantages(r, scale="batch"), expected_batch, rtol=0, atol=1e-6)
    exact = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-4)
    assert torch.allclose(group_advantages(r), exact, rtol=0, atol=TOL)


def test_grpo_rejects_bad_arguments():
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(t([1.0, 2.0]))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(t(REWARDS), scale="std")
    with pytest.raises(ValueError, match="already grouped"):
        group_advantages(t(REWARDS), torch.zeros(6, dtype=torch.long))


# ------------------------------------------------------------------------------ RLOO, ReMax


def test_rloo_by_hand():
    """A_i = r_i − mean of the other two.
    Group 1: 1 − (2+3)/2 = −1.5, 2 − (1+3)/2 = 0, 3 − (1+2)/2 = 1.5.
    Group 2: 0 − (0+6)/2 = −3, −3, 6 − (0+0)/2 = 6. Each group sums to 0."""
    a = rloo_advantages(t(REWARDS))
    assert a.tolist() == [[-1.5, 0.0, 1.5], [-3.0, -3.0, 6.0]]
    flat = rloo_advantages(t(REWARDS).reshape(-1), torch.tensor([0, 0, 0, 1, 1, 1]))
    assert flat.tolist() == [-1.5, 0.0, 1.5, -3.0, -3.0, 6.0]


def test_rloo_properties():
    """Groups sum to 0; equal rewards and singleton groups give exactly 0; G = 2 gives ±(r1 − r2)."""
    gen = torch.Generator().manual_seed(2)
    r = torch.randn(6, 4, generator=gen, dtype=F64)
    assert torch.allclose(rloo_advantages(r).sum(dim=1), torch.zeros(6, dtype=F64), rtol=0, atol=1e-12)
    a = rloo_advantages(t([0.3, 0.3, 0.3, 4.0]), torch.tensor([0, 0, 0, 1]))
    assert a.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert rloo_advantages(t([[2.0, 5.0]])).tolist() == [[-3.0, 3.0]]


def test_remax_by_hand():
    """Greedy rewards 2.5 and 1: [[1 − 2.5, 2 − 2.5, 3 − 2.5], [0 − 1, 0 − 1, 6 − 1]]."""
    a = remax_advantages(t(REWARDS), t([2.5, 1.0]))
    assert a.tolist() == [[-1.5, -0.5, 0.5], [-1.0, -1.0, 5.0]]
    assert remax_advantages(t([1.0, 4.0]), t([2.0, 2.0])).tolist() == [-1.0, 2.0]
    with pytest.raises(ValueError, match="greedy_rewards"):
        remax_advantages(t([1.0, 4.0]), t([2.0, 2.0, 2.0]))


# ------------------------------------------------------------------------------- OPO, pass@k


def test_opo_by_hand_with_unequal_lengths():
    """b = Σ|y|·r / Σ|y|. Group 1, lengths (1, 2, 3): b = (1 + 4 + 9)/6 = 7/3, so
    A = (1 − 7/3, 2 − 7/3, 3 − 7/3) = (−4/3, −1/3, 2/3). Group 2, lengths (4, 1, 1):
    b = (0 + 0 + 6)/6 = 1, so A = (−1, −1, 5). (The plain mean would give (−1, 0, 1), (−2, −2, 4).)"""
    lengths = [[1, 2, 3], [4, 1, 1]]
    expected = [[-4 / 3, -1 / 3, 2 / 3], [-1.0, -1.0, 5.0]]
    a = opo_advantages(t(REWARDS), torch.tensor(lengths))
    assert a.shape == (2, 3) and a.dtype == F64
    assert torch.allclose(a, t(expected), rtol=0, atol=TOL)
    # the same samples flat, the two groups interleaved and named by arbitrary ids
    order = [3, 0, 4, 1, 5, 2]
    flat_r = t(REWARDS).reshape(-1)[order]
    flat_len = torch.tensor(lengths).reshape(-1)[order]
    flat = opo_advantages(flat_r, flat_len, torch.tensor([9, -2, 9, -2, 9, -2]))
    assert flat.tolist() == pytest.approx([expected[k // 3][k % 3] for k in order], abs=TOL)


def test_opo_with_equal_lengths_is_the_group_mean_baseline():
    """Equal lengths weigh every sample alike: b is the group's mean, A = Dr. GRPO's r − mean, for
    any common length; and scaling every length of a group by c leaves b unchanged."""
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(5, 4, generator=gen, dtype=F64)
    plain = group_advantages(r, scale="none")
    for n in (1, 7):
        assert torch.allclose(opo_advantages(r, torch.full((5, 4), n)), plain, rtol=0, atol=TOL)
    lengths = torch.randint(1, 20, (5, 4), generator=gen)
    assert torch.allclose(opo_advantages(r, 3 * lengths), opo_advantages(r, lengths), rtol=0, atol=TOL)


def test_opo_properties():
    """The length-weighted advantages of a group sum to 0 (Σ|y|(r − b) = 0: every token's advantage,
    summed over the group's tokens, is 0); equal rewards give exactly 0 whatever the lengths; a
    group of one has b = r (0); a group whose lengths are all 0 weighs its samples equally."""
    gen = torch.Generator().manual_seed(4)
    r = torch.randn(6, 5, generator=gen, dtype=F64)
    lengths = torch.randint(0, 30, (6, 5), generator=gen)
    lengths[:, 0] = 1  # no group with all lengths 0
    a = opo_advantages(r, lengths)
    assert torch.allclose((a * lengths).sum(dim=1), torch.zeros(6, dtype=F64), rtol=0, atol=1e-12)
    assert opo_advantages(t([[0.1, 0.1, 0.1]]), torch.tensor([[3, 7, 5]])).tolist() == [[0.0, 0.0, 0.0]]
    assert opo_advantages(t([0.7, 1.0, 3.0]), torch.tensor([5, 2, 4]), torch.tensor([0, 1, 1])).tolist() == \
        pytest.approx([0.0, -2 * 4 / 6, 2 * 2 / 6], abs=TOL)  # group 1: b = (2 + 12)/6 = 7/3
    assert opo_advantages(t([[1.0, 3.0]]), torch.tensor([[0, 0]])).tolist() == [[-1.0, 1.0]]


def test_opo_rejects_bad_lengths():
    with pytest.raises(ValueError, match=r"^lengths \(3,\) must have the shape of rewards \(2, 3\)$"):
        opo_advantages(t(REWARDS), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"^lengths must be >= 0"):
        opo_advantages(t([[1.0, 2.0]]), torch.tensor([[1, -1]]))


def leave_one_out_passk(rewards: list[float]) -> list[float]:
    """Tang et al. 2025's leave-one-out advantage of max_i r_i, written out: max(r) − max_{j≠i} r_j."""
    return [max(rewards) - max(rewards[:i] + rewards[i + 1:]) for i in range(len(rewards))]


def test_passk_by_hand():
    """Only the unique best sample has an advantage, r_max − r_second_max, over std + 1e-6.
    (1, 0, 3, 2): best 3, second 2, margin 1; mean 1.5, squared deviations 0.25 + 2.25 + 2.25 + 0.25
    = 5, unbiased std √(5/3). (0, 4, 1, 1): best 4, second 1 (tied), margin 3; mean 1.5, squared
    deviations 2.25 + 6.25 + 0.25 + 0.25 = 9, std √3. (2, 2, 1, 0) and (0, 5, 5, 1): the best is tied,
    every advantage 0. (1, 1, 1, 1): all equal, 0. (−1, −3): margin 2, std 2/√2 = √2."""
    rewards = [[1.0, 0.0, 3.0, 2.0], [0.0, 4.0, 1.0, 1.0], [2.0, 2.0, 1.0, 0.0], [0.0, 5.0, 5.0, 1.0],
               [1.0, 1.0, 1.0, 1.0]]
    none = passk_advantages(t(rewards), scale="none")
    assert none.tolist() == [[0, 0, 1, 0], [0, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    group = passk_advantages(t(rewards))
    expected = torch.zeros(5, 4, dtype=F64)
    expected[0, 2] = 1 / (math.sqrt(5 / 3) + 1e-6)
    expected[1, 1] = 3 / (math.sqrt(3) + 1e-6)
    assert torch.allclose(group, expected, rtol=0, atol=TOL)
    assert passk_advantages(t([-1.0, -3.0]), torch.tensor([0, 0])).tolist() == pytest.approx(
        [2 / (math.sqrt(2) + 1e-6), 0.0], abs=TOL)
    # flat, groups interleaved in any order, of different sizes, under arbitrary ids
    flat = passk_advantages(t([3.0, -1.0, 0.0, 2.0, -3.0, 1.0]), torch.tensor([7, 4, 7, 7, 4, 7]), scale="none")
    assert flat.tolist() == [1.0, 2.0, 0.0, 0.0, 0.0, 0.0]


def test_passk_is_the_leave_one_out_of_the_best_reward():
    """Integer rewards in 0..3 (many ties) in groups of 5: with scale 'none' the advantages equal
    max(r) − max_{j≠i} r_j computed sample by sample, and at most one sample per group is non-zero."""
    gen = torch.Generator().manual_seed(5)
    r = torch.randint(0, 4, (40, 5), generator=gen).to(F64)
    a = passk_advantages(r, scale="none")
    assert a.tolist() == [leave_one_out_passk(row) for row in r.tolist()]
    assert ((a != 0).sum(dim=1) <= 1).all() and (a != 0).any() and (a == 0).all(dim=1).any()
    scaled = passk_advantages(r)
    assert torch.allclose(scaled, a / (r.std(dim=1, keepdim=True) + 1e-6), rtol=0, atol=TOL)


def test_passk_group_of_one_and_bad_scale():
    assert passk_advantages(t([4.0, 1.0, 2.0]), torch.tensor([0, 1, 1])).tolist() == \
        pytest.approx([0.0, 0.0, 1 / (math.sqrt(0.5) + 1e-6)], abs=TOL)
    with pytest.raises(ValueError, match="scale must be 'group' or 'none', got 'batch'"):
        passk_advantages(t(REWARDS), scale="batch")


def verl_style_opo(scores: list[float], lengths: list[float], index: list[int]) -> list[float]:
    """OPO as verl's ``compute_opo_outcome_advantage`` goes about it, written here sample by sample:
    gather each group's scores and lengths, baseline Σ len·score / Σ len (0 for a group of one),
    subtract it from each score."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(index):
        groups.setdefault(g, []).append(i)
    baseline = {}
    for g, members in groups.items():
        if len(members) == 1:
            baseline[g] = 0.0
        else:
            baseline[g] = sum(lengths[i] * scores[i] for i in members) / sum(lengths[i] for i in members)
    return [scores[i] - baseline[index[i]] for i in range(len(scores))]


def verl_style_passk(scores: list[float], index: list[int], norm: bool, eps: float = 1e-6) -> list[float]:
    """pass@k as verl's ``compute_grpo_passk_outcome_advantage`` goes about it: per group, the top
    two scores (a tie at the top gives a margin of 0), the margin to the first of the best, divided
    by the group's unbiased std + eps when ``norm``; every other sample 0."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(index):
        groups.setdefault(g, []).append(i)
    out = [0.0] * len(scores)
    for members in groups.values():
        ranked = sorted(members, key=lambda i: (-scores[i], i))
        margin = scores[ranked[0]] - scores[ranked[1]]
        if norm:
            mean = sum(scores[i] for i in members) / len(members)
            std = math.sqrt(sum((scores[i] - mean) ** 2 for i in members) / (len(members) - 1))
            margin = margin / (std + eps)
        out[ranked[0]] = margin
    return out


@pytest.mark.parametrize("seed", range(6))
def test_opo_and_passk_equal_verls_rules_on_random_groups_with_ties(seed):
    """Groups of 2 to 7 samples, interleaved under arbitrary ids, rewards drawn from a few values
    (so ties, tied maxima and all-equal groups occur) or from a normal distribution, lengths 0 to 40
    (no group all 0, which verl would divide by 0): fp64 agreement with the rules written as verl
    writes them (above), to 1e-12."""
    rng = random.Random(seed)
    scores, lengths, index = [], [], []
    for g in range(12):
        size = rng.randrange(2, 8)
        pool = [rng.choice([0.0, 0.5, 1.0]) for _ in range(size)] if g % 2 else \
            [rng.gauss(0.0, 2.0) for _ in range(size)]
        if g % 5 == 0:
            pool = [pool[0]] * size  # all equal
        n = [rng.randrange(0, 41) for _ in range(size)]
        n[rng.randrange(size)] = rng.randrange(1, 41)
        scores += pool
        lengths += n
        index += [100 - 7 * g] * size
    order = list(range(len(scores)))
    rng.shuffle(order)
    scores, lengths, index = ([x[i] for i in order] for x in (scores, lengths, index))
    r, ids = torch.tensor(scores, dtype=F64), torch.tensor(index)
    opo = opo_advantages(r, torch.tensor(lengths), ids)
    assert opo.tolist() == pytest.approx(verl_style_opo(scores, lengths, index), rel=0, abs=1e-12)
    for scale, norm in (("group", True), ("none", False)):
        got = passk_advantages(r, ids, scale=scale)
        assert got.tolist() == pytest.approx(verl_style_passk(scores, index, norm), rel=0, abs=1e-12)


# ------------------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    """u = ref − logp.
    logp −1, ref −2: u = −1 → k1 = 1, k2 = 1/2, k3 = e^−1 + 1 − 1 = e^−1 = 0.36787944117.
    logp −2, ref −1: u = 1 → k1 = −1, k2 = 1/2, k3 = e − 1 − 1 = 0.71828182846.
    logp = ref: all three are 0."""
    logp, ref = t([-1.0, -2.0, -0.5]), t([-2.0, -1.0, -0.5])
    assert kl_estimate(logp, ref, "k1").tolist() == [1.0, -1.0, 0.0]
    assert kl_estimate(logp, ref, "k2").tolist() == [0.5, 0.5, 0.0]
    k3 = kl_estimate(logp, ref, "k3")
    assert k3.tolist() == pytest.approx([math.exp(-1), math.e - 2, 0.0], abs=1e-15)
    with pytest.raises(ValueError, match="estimator"):
        kl_estimate(logp, ref, "k4")


def test_kl_k3_is_nonnegative_and_masked():
    gen = torch.Generator().manual_seed(3)
    logp, ref = -torch.rand(3, 5, generator=gen, dtype=F64) * 4, -torch.rand(3, 5, generator=gen, dtype=F64) * 4
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    mask = torch.tensor([[1, 1, 0, 0, 0]] * 3)
    masked = kl_estimate(logp, ref, "k3", mask)
    assert (masked[:, 2:] == 0).all() and (masked[:, :2] == kl_estimate(logp, ref, "k3")[:, :2]).all()


def test_k3_gradient_is_one_minus_exp_u():
    """d k3 / d logp = d(e^u − u − 1)/d logp with du/d logp = −1: −e^u + 1. At logp −1, ref −2 (u = −1): 1 − e^−1."""
    logp = t([-1.0]).requires_grad_()
    kl_estimate(logp, t([-2.0]), "k3").sum().backward()
    assert float(logp.grad[0]) == pytest.approx(1 - math.exp(-1), abs=1e-15)


# -------------------------------------------------------------------- token rewards, returns

MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
KL = t([[0.5, -0.25, 1.0], [0.25, 0.5, 9.0]])  # 9.0 sits on padding and must be ignored


def test_last_token_index():
    assert last_token_index(torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]])).tolist() == [2, 1, -1, 0]


def test_token_rewards_by_hand():
    """β = 0.1, scores [1, −1]: −β·KL = [[−0.05, 0.025, −0.1], [−0.025, −0.05, (pad) 0]], and the score
    goes on the last valid token: [[−0.05, 0.025, 0.9], [−0.025, −1.05, 0]]. A row with no tokens: zeros."""
    r = token_rewards(t([1.0, -1.0]), MASK, KL, beta=0.1)
    assert torch.allclose(r, t([[-0.05, 0.025, 0.9], [-0.025, -1.05, 0.0]]), rtol=0, atol=TOL)
    assert token_rewards(t([1.0, 2.0]), torch.tensor([[1, 1], [0, 0]])).tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_discounted_returns_by_hand():
    """Rewards [[−0.05, 0.025, 0.9], [−0.025, −1.05, pad]].
    γ = 1: row 1 G = [0.875, 0.925, 0.9]; row 2 G = [−1.075, −1.05, 0].
    γ = 0.5: row 1 G3 = 0.9, G2 = 0.025 + 0.45 = 0.475, G1 = −0.05 + 0.2375 = 0.1875;
             row 2 G2 = −1.05, G1 = −0.025 − 0.525 = −0.55."""
    rewards = t([[-0.05, 0.025, 0.9], [-0.025, -1.05, 123.0]])
    g1 = discounted_returns(rewards, MASK)
    assert torch.allclose(g1, t([[0.875, 0.925, 0.9], [-1.075, -1.05, 0.0]]), rtol=0, atol=TOL)
    g_half = discounted_returns(rewards, MASK, gamma=0.5)
    assert torch.allclose(g_half, t([[0.1875, 0.475, 0.9], [-0.55, -1.05, 0.0]]), rtol=0, atol=TOL)


def test_whiten_by_hand():
    """Valid values 7/8, 37/40, 9/10, −43/40, −21/20 (five tokens).
    mean = (7/8 + 37/40 + 9/10 − 43/40 − 21/20)/5 = (23/40)/5 = 23/200 = 0.115.
    deviations 19/25, 81/100, 157/200, −119/100, −233/200;
    Σd² = (0.5776 + 0.6561 + 0.616225 + 1.4161 + 1.357225) = 4.62325, biased var = 4.62325/5 = 0.92465.
    whitened = d/√0.92465; padding 0. With center=False: x/√0.92465; with scale=False: d."""
    x = t([[0.875, 0.925, 0.9], [-1.075, -1.05, 50.0]])
    std = math.sqrt(0.92465)
    dev = [[0.76, 0.81, 0.785], [-1.19, -1.165, 0.0]]
    assert torch.allclose(whiten(x, MASK), t(dev) / std, rtol=0, atol=TOL)
    assert torch.allclose(whiten(x, MASK, scale=False), t(dev), rtol=0, atol=TOL)
    assert torch.allclose(whiten(x, MASK, center=False), t([[0.875, 0.925, 0.9], [-1.075, -1.05, 0.0]]) / std,
                          rtol=0, atol=TOL)


def test_whiten_properties():
    """Valid tokens end with mean 0 and population variance 1; a constant batch stays finite (var floor)."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 7, generator=gen, dtype=F64) * 5 + 2
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6])
    w = whiten(x, mask)
    valid = w[mask.bool()]
    assert float(valid.mean()) == pytest.approx(0.0, abs=1e-12)
    assert float((valid ** 2).mean()) == pytest.approx(1.0, abs=1e-12)
    assert (w[~mask.bool()] == 0).all()
    assert whiten(torch.full((2, 3), 4.0, dtype=F64), torch.ones(2, 3)).abs().max() == 0
    assert whiten(x, torch.zeros(4, 7)).abs().max() == 0


def test_reinforce_pp_by_hand():
    """REINFORCE++ with β = 0.1, γ = 1, k1 KL from log-probs: logp − ref =
    [[0.5, −0.25, 1.0], [0.25, 0.5, pad]] (the KL above), scores [1, −1].
    Token rewards and returns as in the two tests above: G = [[0.875, 0.925, 0.9], [−1.075, −1.05, 0]];
    advantages = whitened G = d/√0.92465 (test_whiten_by_hand)."""
    logp = t([[-1.0, -2.0, -0.5], [-1.5, -0.75, -3.0]])
    ref = logp - KL
    kl = kl_estimate(logp, ref, "k1", MASK)
    adv, ret = reinforce_pp_advantages(t([1.0, -1.0]), MASK, kl, beta=0.1)
    assert torch.allclose(ret, t([[0.875, 0.925, 0.9], [-1.075, -1.05, 0.0]]), rtol=0, atol=TOL)
    dev = t([[0.76, 0.81, 0.785], [-1.19, -1.165, 0.0]])
    assert torch.allclose(adv, dev / math.sqrt(0.92465), rtol=0, atol=1e-12)
    raw, _ = reinforce_pp_advantages(t([1.0, -1.0]), MASK, kl, beta=0.1, normalize=False)
    assert torch.allclose(raw, ret, rtol=0, atol=0)


def test_reinforce_pp_without_kl_is_whitened_score():
    """β = 0: every valid token's return is its sequence's score; scores [3, 1] over 2 and 1 tokens give
    values 3, 3, 1: mean 7/3, deviations 2/3, 2/3, −4/3, var = (4/9 + 4/9 + 16/9)/3 = 8/9,
    advantages = [1/√2, 1/√2, −√2]."""
    adv, _ = reinforce_pp_advantages(t([3.0, 1.0]), torch.tensor([[1, 1], [1, 0]]))
    s = 1 / math.sqrt(2)
    assert torch.allclose(adv, t([[s, s], [-math.sqrt(2), 0.0]]), rtol=0, atol=TOL)


# -------------------------------------------------------------------------------------- GAE


def test_gae_by_hand():
    """γ = 1, λ = 0.5. Row 1 (3 tokens): r = [0, 0, 1], V = [0.5, 0.25, 0.75].
      δ3 = 1 + 0 − 0.75 = 0.25; δ2 = 0 + 0.75 − 0.25 = 0.5; δ1 = 0 + 0.25 − 0.5 = −0.25.
      A3 = 0.25; A2 = 0.5 + 0.5·0.25 = 0.625; A1 = −0.25 + 0.5·0.625 = 0.0625.
      R = A + V = [0.5625, 0.875, 1.0].
    Row 2 (2 tokens, padding holds r = 5 and V = 7, ignored): r = [0, 0.5], V = [0.1, 0.2].
      δ2 = 0.5 + 0 − 0.2 = 0.3; δ1 = 0 + 0.2 − 0.1 = 0.1; A2 = 0.3; A1 = 0.1 + 0.5·0.3 = 0.25.
      R = [0.35, 0.5, 0]."""
    rewards = t([[0.0, 0.0, 1.0], [0.0, 0.5, 5.0]])
    values = t([[0.5, 0.25, 0.75], [0.1, 0.2, 7.0]])
    adv, ret = gae(rewards, values, MASK, gamma=1.0, lam=0.5)
    assert torch.allclose(adv, t([[0.0625, 0.625, 0.25], [0.25, 0.3, 0.0]]), rtol=0, atol=TOL)
    assert torch.allclose(ret, t([[0.5625, 0.875, 1.0], [0.35, 0.5, 0.0]]), rtol=0, atol=TOL)


def test_gae_discount_by_hand():
    """γ = 0.5, λ = 1 on row 1: δ3 = 1 − 0.75 = 0.25; δ2 = 0.5·0.75 − 0.25 = 0.125;
    δ1 = 0.5·0.25 − 0.5 = −0.375. A3 = 0.25; A2 = 0.125 + 0.5·0.25 = 0.25; A1 = −0.375 + 0.5·0.25 = −0.25.
    (λ = 1 makes A_t = discounted return − V_t: G = [0.25, 0.5, 1], minus V = [−0.25, 0.25, 0.25].)"""
    adv, _ = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.25, 0.75]]), torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert torch.allclose(adv, t([[-0.25, 0.25, 0.25]]), rtol=0, atol=TOL)


def test_gae_lambda_one_is_returns_minus_values():
    """λ = 1: A_t = Σ_{s≥t} γ^{s−t} r_s − V_t (the value terms telescope), for any rewards and values."""
    gen = torch.Generator().manual_seed(5)
    rewards, values = torch.randn(3, 6, generator=gen, dtype=F64), torch.randn(3, 6, generator=gen, dtype=F64)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    expected = discounted_returns(rewards, mask, gamma=0.9) - values * mask
    assert torch.allclose(adv, expected, rtol=0, atol=1e-12)
    assert torch.allclose(ret, discounted_returns(rewards, mask, gamma=0.9), rtol=0, atol=1e-12)
