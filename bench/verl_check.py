"""alignlab's advantage estimators and GMPO's, DPPO's, SAPO's and CISPO's losses against verl's own
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
- GMPO's loss and its gradient with respect to every token log-prob (``policy_gradient_loss`` with
  ``GMPOParams`` against ``compute_policy_loss_geo_mean``): 6 completions of 1-7 tokens, random
  log-probs, old log-probs 0.5 off, normal sequence advantages (some 0). verl adds 1e-8 to each
  sequence's token count where it divides by it, so the two agree to about 1e-8.
- DPPO's losses and gradients (``policy_gradient_loss`` with surrogate ``dppo_tv`` and ``dppo_kl``,
  token-mean aggregation, against ``compute_policy_loss_dppo_tv`` / ``_kl``): the same rounds with
  the old log-probs 0.3 off, so that some tokens leave the trust region (TV 0.15, KL 0.05).
- SAPO's and CISPO's losses and gradients (surrogates ``sapo``, and ``cispo`` with ``cispo_min`` 0.8
  and ``cispo_max`` 1.2, against ``compute_policy_loss_sapo`` / ``_cispo`` with verl's
  ``ActorConfig`` and its default clip_ratio 0.2: verl's CISPO clamps the ratio weight on both
  sides, MiniMax-M1's form; alignlab's default is TRL's one-sided cap 5), the same rounds. verl's
  SAPO averages each sequence's tokens over its count + 1e-8, so SAPO agrees to about 1e-8.

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
from alignlab.losses.policy_gradient import PolicyGradientInputs, policy_gradient_loss, units
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


def gmpo(trials: int = 300) -> dict[str, float]:
    from types import SimpleNamespace

    from verl.trainer.ppo.core_algos import compute_policy_loss_geo_mean

    torch.manual_seed(2)
    B, T = 6, 7
    params = GMPOParams()
    config = SimpleNamespace(clip_ratio=params.eps_low, clip_ratio_low=params.eps_low, clip_ratio_high=params.eps_high)
    worst = {"gmpo loss": 0.0, "gmpo gradient": 0.0}
    for trial in range(trials):
        lengths = torch.randint(1, T + 1, (B,))
        mask = (torch.arange(T)[None] < lengths[:, None]).double()
        logps = -torch.rand(B, T, dtype=torch.float64) * 3
        old = logps + 0.5 * torch.randn(B, T, dtype=torch.float64)
        advantages = torch.randn(B, dtype=torch.float64)
        if trial % 4 == 0:
            advantages[0] = 0.0
        ours_in, theirs_in = logps.clone().requires_grad_(), logps.clone().requires_grad_()
        out = policy_gradient_loss(PolicyGradientInputs(ours_in, mask, advantages, old_logps=old), params)
        ours = out.losses.sum() / units(params.aggregation, mask).sum()
        theirs, _ = compute_policy_loss_geo_mean(old, theirs_in, advantages[:, None] * mask, mask, config=config)
        (ours + theirs).backward()
        worst["gmpo loss"] = max(worst["gmpo loss"], abs(float((ours - theirs).detach())))
        worst["gmpo gradient"] = max(worst["gmpo gradient"], float((ours_in.grad - theirs_in.grad).abs().max()))
    return worst


class _ActorConfig(dict):
    """What verl's policy losses read of their ``ActorConfig``: attributes, ``get`` and the batch info."""

    def __getattr__(self, name):
        return self[name]


def dppo(trials: int = 300) -> dict[str, float]:
    import verl.trainer.ppo.core_algos as verl

    torch.manual_seed(3)
    B, T = 6, 7
    worst: dict[str, float] = {}
    for divergence, bound in (("tv", 0.15), ("kl", 0.05)):
        params = DPPOParams(surrogate=f"dppo_{divergence}", eps_low=bound, eps_high=bound, aggregation="token_mean")
        config = _ActorConfig(clip_ratio=bound, clip_ratio_low=bound, clip_ratio_high=bound,
                              clip_ratio_c=params.dppo_ratio_cap, global_batch_info={})
        verl_loss = getattr(verl, f"compute_policy_loss_dppo_{divergence}")
        for _ in range(trials):
            lengths = torch.randint(1, T + 1, (B,))
            mask = (torch.arange(T)[None] < lengths[:, None]).double()
            logps = -torch.rand(B, T, dtype=torch.float64) * 2
            old = (logps + 0.3 * torch.randn(B, T, dtype=torch.float64)).clamp(max=-1e-3)
            advantages = torch.randn(B, dtype=torch.float64)
            ours_in, theirs_in = logps.clone().requires_grad_(), logps.clone().requires_grad_()
            out = policy_gradient_loss(PolicyGradientInputs(ours_in, mask, advantages, old_logps=old), params)
            ours = out.losses.sum() / units(params.aggregation, mask).sum()
            theirs, _ = verl_loss(old, theirs_in, advantages[:, None] * mask, mask, config=config)
            (ours + theirs).backward()
            for what, diff in (("loss", (ours - theirs).detach().abs()), ("gradient", (ours_in.grad - theirs_in.grad).abs())):
                key = f"dppo_{divergence} {what}"
                worst[key] = max(worst.get(key, 0.0), float(diff.max()))
    return worst


def sapo_and_cispo(trials: int = 300) -> dict[str, float]:
    import verl.trainer.ppo.core_algos as verl
    from verl.workers.config import ActorConfig

    torch.manual_seed(4)
    B, T = 6, 7
    config = ActorConfig(strategy="fsdp", clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2,
                         ppo_micro_batch_size_per_gpu=1, rollout_n=4)
    cases = {"sapo": (SAPOParams(sapo_tau_pos=config.tau_pos, sapo_tau_neg=config.tau_neg), verl.compute_policy_loss_sapo),
             "cispo": (CISPOParams(cispo_min=0.8, cispo_max=1.2), verl.compute_policy_loss_cispo)}
    worst: dict[str, float] = {}
    for name, (params, verl_loss) in cases.items():
        for _ in range(trials):
            lengths = torch.randint(1, T + 1, (B,))
            mask = (torch.arange(T)[None] < lengths[:, None]).double()
            logps = -torch.rand(B, T, dtype=torch.float64) * 2
            old = logps + 0.3 * torch.randn(B, T, dtype=torch.float64)
            advantages = torch.randn(B, dtype=torch.float64)
            ours_in, theirs_in = logps.clone().requires_grad_(), logps.clone().requires_grad_()
            out = policy_gradient_loss(PolicyGradientInputs(ours_in, mask, advantages, old_logps=old), params)
            ours = out.losses.sum() / units(params.aggregation, mask).sum()
            theirs, _ = verl_loss(old, theirs_in, advantages[:, None] * mask, mask, config=config)
            (ours + theirs).backward()
            for what, diff in (("loss", (ours - theirs).detach().abs()),
                               ("gradient", (ours_in.grad - theirs_in.grad).abs())):
                key = f"{name} {what}"
                worst[key] = max(worst.get(key, 0.0), float(diff.max()))
    return worst


def main() -> int:
    results = {"otb (1,200 rounds)": otb(), **sequence_estimators(), **gmpo(), **dppo(), **sapo_and_cispo()}
    failed = False
    for name, worst in results.items():
        tolerance = 1e-6 if name == "gpg" else 1e-7 if name.startswith(("gmpo", "sapo")) else 1e-12
        failed |= worst > tolerance
        print(f"{name:28s} largest difference from verl {worst:.3g} (tolerance {tolerance:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
