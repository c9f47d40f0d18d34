"""The advantage rules of the online registry entries (``losses/online.py``) on numbers worked by hand."""

from __future__ import annotations

import pytest
import torch

from alignlab.losses.online import (
    OPOParams,
    PassKParams,
    PPOOnlineParams,
    ReinforcePPParams,
    ReMaxParams,
    RoundTokens,
    group_baseline,
    needs_reference,
    opo_group_advantages,
    passk_group_advantages,
    ppo_token_advantages,
    reinforce_pp_token_advantages,
    remax_group_advantages,
)
from alignlab.losses.params import ParamError
from alignlab.losses.registry import REGISTRY

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


# One prompt, two samples: sample 1 has 2 tokens, sample 2 has 1.
MASK = torch.tensor([[True, True], [True, False]])
OLD = t([[-1.0, -2.0], [-0.5, 0.0]])
REF = t([[-1.5, -1.0], [-0.5, 0.0]])


def test_reinforce_pp_with_group_baseline_and_kl_in_the_reward():
    """Scores (1, 0) centred on their mean: (0.5, −0.5). k1 = ℓold − ℓref = (0.5, −1.0 | 0.0).
    With β_KL = 0.5, r = −β·k1 plus the centred score on the last token: sample 1:
    (−0.25, 0.5 + 0.5) = (−0.25, 1.0); sample 2: (0 − 0.5) = (−0.5).
    Returns (γ = 1): sample 1 (0.75, 1.0), sample 2 (−0.5). Before whitening A = G."""
    params = ReinforcePPParams(kl_coef=0.5, baseline="group")
    adv, ret = reinforce_pp_token_advantages(RoundTokens(t([[1.0, 0.0]]), MASK, OLD, REF), params)
    expected = t([[0.75, 1.0], [-0.5, 0.0]])
    assert torch.allclose(ret, expected, rtol=0, atol=1e-15) and torch.allclose(adv, expected, rtol=0, atol=1e-15)


def test_reinforce_pp_without_baseline_discounts():
    """No baseline, no KL, γ = 0.5: sample 1's score 1 sits on its last token, so G = (0.5, 1);
    sample 2's score 0 gives (0)."""
    params = ReinforcePPParams(kl_coef=0.0, gamma=0.5)
    adv, _ = reinforce_pp_token_advantages(RoundTokens(t([[1.0, 0.0]]), MASK), params)
    assert torch.allclose(adv, t([[0.5, 1.0], [0.0, 0.0]]), rtol=0, atol=1e-15)


def test_reinforce_pp_kl_needs_both_log_probs():
    with pytest.raises(ValueError, match="kl_coef"):
        reinforce_pp_token_advantages(RoundTokens(t([[1.0, 0.0]]), MASK), ReinforcePPParams(kl_coef=0.1))


def test_ppo_gae_on_a_two_token_completion():
    """One completion of 2 tokens, score 1, values (0.2, 0.6), β_KL = 0, γ = 1, λ = 0.5:
    δ_1 = 1 + 0 − 0.6 = 0.4, A_1 = 0.4; δ_0 = 0 + 0.6 − 0.2 = 0.4, A_0 = 0.4 + 0.5·0.4 = 0.6;
    returns R = A + V = (0.8, 1.0)."""
    params = PPOOnlineParams(kl_coef=0.0, lam=0.5)
    r = RoundTokens(t([[1.0]]), torch.tensor([[True, True]]), values_BT=t([[0.2, 0.6]]))
    adv, ret = ppo_token_advantages(r, params)
    assert torch.allclose(adv, t([[0.6, 0.4]]), rtol=0, atol=1e-15)
    assert torch.allclose(ret, t([[0.8, 1.0]]), rtol=0, atol=1e-15)


def test_ppo_kl_shaping_enters_before_gae():
    """Same completion with β_KL = 0.5 and k1 = (0.5, −1.0): rewards (−0.25, 1 + 0.5) = (−0.25, 1.5);
    λ = 1, values 0: A = returns = (1.25, 1.5)."""
    params = PPOOnlineParams(kl_coef=0.5, lam=1.0)
    r = RoundTokens(t([[1.0]]), torch.tensor([[True, True]]), OLD[:1], REF[:1], t([[0.0, 0.0]]))
    adv, ret = ppo_token_advantages(r, params)
    assert torch.allclose(adv, t([[1.25, 1.5]]), rtol=0, atol=1e-15) and torch.allclose(ret, adv, rtol=0, atol=1e-15)


def test_remax_subtracts_the_greedy_reward():
    adv = remax_group_advantages(t([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), ReMaxParams(), t([0.5, 1.0]))
    assert torch.equal(adv, t([[0.5, -0.5, 0.5], [-1.0, -1.0, 0.0]]))
    with pytest.raises(ValueError, match="greedy"):
        remax_group_advantages(t([[1.0]]), ReMaxParams(), None)


def test_opo_weighs_the_baseline_by_the_completions_lengths():
    """Rewards (1, 0, 1), lengths (1, 2, 3): b = (1 + 0 + 3)/6 = 2/3, A = (1/3, −2/3, 1/3);
    rewards (0, 0, 3), lengths (2, 2, 2): b = 1, A = (−1, −1, 2)."""
    adv = opo_group_advantages(t([[1.0, 0.0, 1.0], [0.0, 0.0, 3.0]]), OPOParams(), None,
                               t([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]))
    assert torch.allclose(adv, t([[1 / 3, -2 / 3, 1 / 3], [-1.0, -1.0, 2.0]]), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="length"):
        opo_group_advantages(t([[1.0, 0.0]]), OPOParams(), None, None)


def test_passk_gives_the_best_sample_its_margin():
    """(1, 0, 3): best 3, second 1, margin 2; mean 4/3, squared deviations 1/9 + 16/9 + 25/9 = 42/9,
    std √(7/3). (2, 2, 0): the best is tied, 0."""
    rewards = t([[1.0, 0.0, 3.0], [2.0, 2.0, 0.0]])
    assert torch.equal(passk_group_advantages(rewards, PassKParams(scale_rewards="none")),
                       t([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    adv = passk_group_advantages(rewards, PassKParams())
    assert torch.allclose(adv, t([[0.0, 0.0, 2 / ((7 / 3) ** 0.5 + 1e-6)], [0.0, 0.0, 0.0]]), rtol=0, atol=1e-15)
    with pytest.raises(ParamError, match=r"scale_rewards.*got 'batch'"):
        PassKParams(scale_rewards="batch")


def test_opo_and_passk_compare_a_prompts_samples():
    """With one sample per prompt OPO's baseline is the sample's own reward and pass@k has no
    second best: both advantages are 0, so ``group_baseline`` names why (a run refuses G = 1)."""
    for name, why in (("opo", "length-weighted mean"), ("grpo_passk", "second best")):
        spec = REGISTRY[name]
        assert why in group_baseline(spec, spec.params())
        assert spec.advantages is not None and not spec.needs_reference and spec.token_advantages is None
    assert REGISTRY["opo"].lengths and not REGISTRY["grpo_passk"].lengths and not REGISTRY["rloo"].lengths
    # verl's actor defaults: the clip at 0.2 both sides, token-mean aggregation, no KL term
    for params in (OPOParams(), PassKParams()):
        assert (params.eps_low, params.eps_high, params.aggregation, params.beta) == (0.2, 0.2, "token_mean", 0.0)


def test_which_params_need_the_reference():
    assert not needs_reference(REGISTRY["grpo"].params())
    assert needs_reference(REGISTRY["grpo"].params(beta=0.1))
    assert needs_reference(REGISTRY["ppo"].params())  # β_KL = 0.05 by default
    assert not needs_reference(REGISTRY["ppo"].params(kl_coef=0.0))
    assert needs_reference(REGISTRY["reinforce++"].params())


def test_the_registry_entries_and_their_bad_values():
    assert REGISTRY["remax"].greedy_baseline and REGISTRY["ppo"].value_model
    assert REGISTRY["reinforce++"].token_advantages is not None and REGISTRY["reinforce++"].advantages is None
    for bad in (dict(kl_estimator="k4"), dict(gamma=1.5), dict(kl_coef=-1.0), dict(lam=2.0)):
        with pytest.raises(ParamError):
            PPOOnlineParams(**bad)
    with pytest.raises(ParamError, match="baseline"):
        ReinforcePPParams(baseline="mean")


def _tied_round_advantages(spec, params, scores_PG: torch.Tensor) -> torch.Tensor:
    """The advantages of a round whose every prompt's G samples are one completion of 2 tokens
    (same tokens, log-probs and, for PPO, values), as the method's rule computes them before the
    step source whitens them; ReMax's greedy answer is that completion too."""
    P, G = scores_PG.shape
    if spec.advantages is not None:
        lengths = torch.full((P, G), 2.0, dtype=F64)
        return spec.advantages(scores_PG, params, scores_PG[:, 0], *([lengths] if spec.lengths else []))
    mask = torch.ones(P * G, 2, dtype=torch.bool)
    logps = t([[-0.5, -0.2]] * (P * G))
    r = RoundTokens(scores_PG, mask, old_logps_BT=logps, ref_logps_BT=logps - 0.3,
                    values_BT=t([[0.1, 0.4]] * (P * G)), sum_pi_sq_BT=t([[0.5, 0.7]] * (P * G)))
    return spec.token_advantages(r, params)[0]


TIED_CASES = [(name, {}, spec.num_generations or 3) for name, spec in REGISTRY.items() if spec.shape == "online"] + [
    ("reinforce++", {"baseline": "group"}, 3), ("reinforce++", {"baseline": "group", "kl_coef": 0.0}, 3),
    ("reinforce++", {"kl_coef": 0.0}, 3), ("ppo", {"kl_coef": 0.0}, 3), ("grpo", {"scale_rewards": "batch"}, 3),
    ("grpo_passk", {"scale_rewards": "none"}, 3), ("otb", {"zero_tail": False}, 3), ("otb", {}, 1), ("remax", {}, 1),
    ("reinforce++", {}, 1)]


@pytest.mark.parametrize("name,extra,G", TIED_CASES)
def test_a_method_is_said_to_learn_nothing_from_tied_samples_exactly_where_the_reward_moves_no_advantage(name, extra,
                                                                                                         G):
    """Every prompt's samples one completion (top_k 1): the reward changes no advantage (the round's
    advantages with rewards 1 and 0 for its two prompts are those with every reward 0) for exactly
    the methods ``learns_nothing_from_tied_samples`` names, which a run with top_k 1 refuses. OTB's
    advantage is then the ε guard's share of the return, G·ε/(G·W + ε), below 1e-7 here.
    With one sample per prompt OTB has no baseline; REINFORCE++ without a group baseline still
    tells the prompts apart; PPO's critic is no reward's mean."""
    from alignlab.losses.online import learns_nothing_from_tied_samples

    spec = REGISTRY[name]
    params = spec.params(**extra)
    scores = t([[1.0] * G, [0.0] * G])
    moved = (_tied_round_advantages(spec, params, scores) - _tied_round_advantages(spec, params, 0 * scores)).abs()
    why = learns_nothing_from_tied_samples(spec, params, G)
    assert (why is not None) == bool(moved.max() < 1e-7), (why, moved)
    assert why is not None or moved.max() > 0.1
