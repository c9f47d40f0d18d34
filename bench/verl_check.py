"""alignlab's advantage estimators and GMPO's, DPPO's, DRO's, SAPO's and CISPO's losses against verl's own
functions, where verl imports.

    pip install --no-deps --target /tmp/verlpkg verl tensordict pyvers orjson codetiming hydra-core \
        omegaconf antlr4-python3-runtime
    PYTHONPATH=/tmp/verlpkg python bench/verl_check.py

verl is not a dependency of alignlab (it pins its own stack), so this check is not among the tests.
On random rounds it compares, estimator by estimator, what alignlab computes with what verl's
``core_algos`` computes from the same outcome rewards (each on its completion's last token) and
the same prompt index, and prints the largest difference of each:

- OTB (``otb_token_advantages`` against ``compute_optimal_token_baseline_advantage``): 3 prompts ×
  4 completions of 1-7 tokens, a third of the rounds with the longest tied, integer scores, random
  log-probs, Σπ² and sampler log-probs; with and without ``handle_zero_tail``, and without
  importance sampling, with token-level and with sequence-level truncated weights (verl takes the
  weights as given: alignlab's ``importance_weights``, broadcast to tokens); advantages and returns.
- pass@k (both scalings), RLOO, OPO, GPG and ReMax (``advantages.py`` against verl's
  ``compute_*_outcome_advantage``): 4 prompts × 4 completions, integer or normal scores, some
  groups flat. verl computes GPG's α = B / #non-zero as a float32 tensor, so GPG agrees to float32
  rounding (about 1e-7); the others to float64 rounding.
- Policy losses and their gradients with respect to every token log-prob (``policy_gradient_loss``
  against verl's ``compute_policy_loss_*``), on rounds of 6 completions of 1-7 tokens, log-probs in
  (−2, 0), old log-probs 0.3 off (so that ratios leave the clip and tokens the trust region),
  normal sequence advantages (some 0):
  - GMPO (``GMPOParams`` against ``geo_mean``) and SAPO (``SAPOParams`` against ``sapo``): verl
    divides by each sequence's token count + 1e-8, so these agree to about 1e-8;
  - DPPO (surrogates ``dppo_tv`` and ``dppo_kl``, token-mean aggregation, TV 0.15 and KL 0.05);
  - DRO (surrogate ``dro``, ``dro_beta`` 0.1, token-mean aggregation) against verl's ``dro``;
  - CISPO with ``cispo_min`` 0.8 and ``cispo_max`` 1.2, against verl's ``cispo`` at its default
    clip_ratio 0.2 (verl clamps the ratio weight on both sides, MiniMax-M1's form; alignlab's
    default is TRL's one-sided cap 5).

Exits 1 if any difference is above its tolerance (1e-12; GPG 1e-6; GMPO and SAPO 1e-7).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from alignlab.losses.advantages import (
    gpg_advantages,
    opo_advantages,
    passk_advantages,
    remax_advantages,
    rloo_advantages,
    token_rewards,
)
from alignlab.losses.online import (
    CISPOParams,
    DPPOParams,
    GMPOParams,
    OTBParams,
    RoundTokens,
    SAPOParams,
    otb_token_advantages,
)
from alignlab.losses.policy_gradient import (
    PolicyGradientInputs,
    PolicyGradientParams,
    policy_gradient_loss,
    units,
)
from alignlab.losses.surrogates import importance_weights


def otb(trials: int = 200) -> float:
    from verl.trainer.ppo.core_algos import compute_optimal_token_baseline_advantage as verl_otb

    torch.manual_seed(0)
    P, G, T = 3, 4, 7
    worst = 0.0
    for trial in range(trials):
        lengths = torch.randint(1, T + 1, (P * G,))
        if trial % 3 == 0:
            lengths[:G] = T  # the first prompt's completions tie at the top: no zero tail there
        mask = (torch.arange(T)[None] < lengths[:, None]).double()
        scores = torch.randint(0, 3, (P, G)).double()
        old = -torch.rand(P * G, T, dtype=torch.float64) * 3 * mask
        sum_pi_sq = torch.rand(P * G, T, dtype=torch.float64) * 0.9 + 0.05
        sampler = old - 0.3 * torch.randn(P * G, T, dtype=torch.float64) * mask
        for zero_tail in (True, False):
            for is_mode in ("off", "token_truncate", "sequence_truncate"):
                params = OTBParams(zero_tail=zero_tail, is_mode=is_mode)
                ours, returns = otb_token_advantages(
                    RoundTokens(scores, mask.bool(), old_logps_BT=old, sum_pi_sq_BT=sum_pi_sq,
                                sampler_logps_BT=sampler), params)
                weights = None if is_mode == "off" else importance_weights(
                    old, sampler, mask, is_mode, params.is_clip_max, params.is_clip_min).expand(P * G, T)
                theirs, their_returns = verl_otb(token_rewards(scores.reshape(-1), mask), mask,
                                                 np.repeat(np.arange(P), G), old, sum_pi_sq,
                                                 rollout_is_weights=weights, handle_zero_tail=zero_tail)
                worst = max(worst, float((ours - theirs).abs().max()), float((returns - their_returns).abs().max()))
    return worst


def sequence_estimators(trials: int = 300) -> dict[str, float]:
    import verl.trainer.ppo.core_algos as verl

    torch.manual_seed(1)
    P, G, T = 4, 4, 6
    worst: dict[str, float] = {}
    for trial in range(trials):
        lengths = torch.randint(1, T + 1, (P * G,))
        mask = (torch.arange(T)[None] < lengths[:, None]).double()
        scores = torch.randint(0, 3, (P, G)).double() if trial % 2 else torch.randn(P, G, dtype=torch.float64)
        if trial % 5 == 0:
            scores[0] = 1.0  # a flat group
        rewards, index = token_rewards(scores.reshape(-1), mask), np.repeat(np.arange(P), G)
        greedy = scores[:, 0]  # a stand-in for each prompt's greedy answer's reward
        pairs = {
            "grpo_passk": (passk_advantages(scores), verl.compute_grpo_passk_outcome_advantage(
                rewards, mask, index, config={"norm_adv_by_std_in_grpo": True})),
            "grpo_passk, scale none": (passk_advantages(scores, scale="none"), verl.compute_grpo_passk_outcome_advantage(
                rewards, mask, index, config={"norm_adv_by_std_in_grpo": False})),
            "rloo": (rloo_advantages(scores), verl.compute_rloo_outcome_advantage(rewards, mask, index)),
            "opo": (opo_advantages(scores, lengths.view(P, G).double()),
                    verl.compute_opo_outcome_advantage(rewards, mask, index)),
            "gpg": (gpg_advantages(scores), verl.compute_gpg_outcome_advantage(rewards, mask, index)),
            "remax": (remax_advantages(scores, greedy), verl.compute_remax_outcome_advantage(
                rewards, greedy.repeat_interleave(G), mask)),
        }
        for name, (ours, (theirs, _)) in pairs.items():
            worst[name] = max(worst.get(name, 0.0), float((ours.reshape(-1, 1) * mask - theirs).abs().max()))
    return worst


def _loss_against_verl(name: str, params, verl_loss, config, trials: int = 300) -> dict[str, float]:
    """alignlab's whole-step loss with ``params`` and verl's ``verl_loss`` (with ``config``), and
    their gradients with respect to every token log-prob, on random rounds: 6 completions of 1-7
    tokens, log-probs in (−2, 0), old log-probs 0.3 off (below 0), normal sequence advantages with
    one 0 in every fourth round."""
    B, T = 6, 7
    worst = {f"{name} loss": 0.0, f"{name} gradient": 0.0}
    for trial in range(trials):
        lengths = torch.randint(1, T + 1, (B,))
        mask = (torch.arange(T)[None] < lengths[:, None]).double()
        logps = -torch.rand(B, T, dtype=torch.float64) * 2
        old = (logps + 0.3 * torch.randn(B, T, dtype=torch.float64)).clamp(max=-1e-3)
        advantages = torch.randn(B, dtype=torch.float64)
        if trial % 4 == 0:
            advantages[0] = 0.0
        ours_in, theirs_in = logps.clone().requires_grad_(), logps.clone().requires_grad_()
        out = policy_gradient_loss(PolicyGradientInputs(ours_in, mask, advantages, old_logps=old), params)
        ours = out.losses.sum() / units(params.aggregation, mask).sum()
        theirs, _ = verl_loss(old, theirs_in, advantages[:, None] * mask, mask, config=config)
        (ours + theirs).backward()
        worst[f"{name} loss"] = max(worst[f"{name} loss"], abs(float((ours - theirs).detach())))
        worst[f"{name} gradient"] = max(worst[f"{name} gradient"], float((ours_in.grad - theirs_in.grad).abs().max()))
    return worst


class _Config(dict):
    """What verl's GMPO and DPPO losses read of their ``ActorConfig``: attributes, ``get`` and the
    batch info (its real ``ActorConfig``, which SAPO and CISPO require, needs more to build)."""

    def __getattr__(self, name):
        return self[name]


def policy_losses() -> dict[str, float]:
    import verl.trainer.ppo.core_algos as verl
    from verl.workers.config import ActorConfig

    torch.manual_seed(2)
    worst: dict[str, float] = {}
    gmpo = GMPOParams()
    worst.update(_loss_against_verl("gmpo", gmpo, verl.compute_policy_loss_geo_mean,
                                    _Config(clip_ratio=gmpo.eps_low, clip_ratio_low=gmpo.eps_low,
                                            clip_ratio_high=gmpo.eps_high)))
    for divergence, bound in (("tv", 0.15), ("kl", 0.05)):
        params = DPPOParams(surrogate=f"dppo_{divergence}", eps_low=bound, eps_high=bound, aggregation="token_mean")
        config = _Config(clip_ratio=bound, clip_ratio_low=bound, clip_ratio_high=bound,
                         clip_ratio_c=params.dppo_ratio_cap, global_batch_info={})
        worst.update(_loss_against_verl(f"dppo_{divergence}", params,
                                        getattr(verl, f"compute_policy_loss_dppo_{divergence}"), config))
    worst.update(_loss_against_verl("dro", PolicyGradientParams(surrogate="dro", dro_beta=0.1),
                                    verl.compute_policy_loss_dro,
                                    _Config(policy_loss=_Config(dro_beta=0.1), global_batch_info={})))
    actor = ActorConfig(strategy="fsdp", clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2,
                        ppo_micro_batch_size_per_gpu=1, rollout_n=4)
    worst.update(_loss_against_verl("sapo", SAPOParams(sapo_tau_pos=actor.tau_pos, sapo_tau_neg=actor.tau_neg),
                                    verl.compute_policy_loss_sapo, actor))
    worst.update(_loss_against_verl("cispo", CISPOParams(cispo_min=0.8, cispo_max=1.2),
                                    verl.compute_policy_loss_cispo, actor))
    return worst


def main() -> int:
    results = {"otb (1,200 rounds)": otb(), **sequence_estimators(), **policy_losses()}
    failed = False
    for name, worst in results.items():
        tolerance = 1e-6 if name == "gpg" else 1e-7 if name.startswith(("gmpo", "sapo")) else 1e-12
        failed |= worst > tolerance
        print(f"{name:28s} largest difference from verl {worst:.3g} (tolerance {tolerance:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
